// The register-tiled XOR + popcount loop shared by the xnor_gemm_*_avx2.cc microkernels.
// Include ONLY from *_avx2.cc files: it is compiled with AVX2 enabled, and its definitions are
// in an anonymous namespace so no AVX2 code can leak into a baseline translation unit through
// the linker's choice of an inline copy. See xnor_gemm_avx2.h for the layouts.
//
// The k step is written in inline assembly: it needs 15 of the 16 ymm registers (8 byte
// accumulators, LUT, nibble mask, 2 patch vectors, broadcast weight, 2 temporaries), and GCC's
// scheduler spilled accumulators to the stack when given the intrinsics.
#ifndef KERAS_XNOR_CORE_XNOR_GEMM_TILE_AVX2_H_
#define KERAS_XNOR_CORE_XNOR_GEMM_TILE_AVX2_H_

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace keras_xnor {
namespace internal {
namespace {

// acc += bytewise popcount(a XOR w).
#define KX_XOR_POP_ACC(a, acc)             \
  "vpxor " a ", %[w], %[t1]\n\t"           \
  "vpand %[low], %[t1], %[t2]\n\t"         \
  "vpsrlw $4, %[t1], %[t1]\n\t"            \
  "vpand %[low], %[t1], %[t1]\n\t"         \
  "vpshufb %[t2], %[lut], %[t2]\n\t"       \
  "vpshufb %[t1], %[lut], %[t1]\n\t"       \
  "vpaddb %[t1], %[t2], %[t2]\n\t"         \
  "vpaddb %[t2], " acc ", " acc "\n\t"

inline __m256i widen_bytes_to_int32(__m256i acc) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(acc, _mm256_set1_epi8(1)), _mm256_set1_epi16(1));
}

inline void store_or_add(std::int32_t* dst, __m256i v, bool first) {
  __m256i* p = reinterpret_cast<__m256i*>(dst);
  _mm256_store_si256(p, first ? v : _mm256_add_epi32(_mm256_load_si256(p), v));
}

// 16 pixels (2 vectors) x 4 channels.
inline void gemm_tile_16x4(const std::uint32_t* patches, int kw,
                           const std::uint32_t* const* weights, std::int32_t* pops) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                       2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const std::uint32_t *w0 = weights[0], *w1 = weights[1], *w2 = weights[2], *w3 = weights[3];
  for (int k0 = 0; k0 < kw; k0 += 31) {
    const int k1 = std::min(kw, k0 + 31);
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c02 = c00, c03 = c00;
    __m256i c10 = c00, c11 = c00, c12 = c00, c13 = c00;
    for (int k = k0; k < k1; ++k) {
      const std::uint32_t* p = patches + k * 16;
      __m256i a0, a1, wv, t1, t2;
      {
        __asm__(
            "vmovdqa (%[p]), %[a0]\n\t"
            "vmovdqa 32(%[p]), %[a1]\n\t"
            "vpbroadcastd (%[w0]), %[w]\n\t"
            KX_XOR_POP_ACC("%[a0]", "%[c00]") KX_XOR_POP_ACC("%[a1]", "%[c10]")
            "vpbroadcastd (%[w1]), %[w]\n\t"
            KX_XOR_POP_ACC("%[a0]", "%[c01]") KX_XOR_POP_ACC("%[a1]", "%[c11]")
            "vpbroadcastd (%[w2]), %[w]\n\t"
            KX_XOR_POP_ACC("%[a0]", "%[c02]") KX_XOR_POP_ACC("%[a1]", "%[c12]")
            "vpbroadcastd (%[w3]), %[w]\n\t"
            KX_XOR_POP_ACC("%[a0]", "%[c03]") KX_XOR_POP_ACC("%[a1]", "%[c13]")
            : [c00] "+x"(c00), [c01] "+x"(c01), [c02] "+x"(c02), [c03] "+x"(c03),
              [c10] "+x"(c10), [c11] "+x"(c11), [c12] "+x"(c12), [c13] "+x"(c13),
              [a0] "=&x"(a0), [a1] "=&x"(a1), [w] "=&x"(wv), [t1] "=&x"(t1), [t2] "=&x"(t2)
            : [p] "r"(p), [w0] "r"(w0 + k), [w1] "r"(w1 + k), [w2] "r"(w2 + k),
              [w3] "r"(w3 + k), [lut] "x"(lut), [low] "x"(low)
            : "memory");
      }
    }
    const bool first = k0 == 0;
    store_or_add(pops + 0 * 16, widen_bytes_to_int32(c00), first);
    store_or_add(pops + 0 * 16 + 8, widen_bytes_to_int32(c10), first);
    store_or_add(pops + 1 * 16, widen_bytes_to_int32(c01), first);
    store_or_add(pops + 1 * 16 + 8, widen_bytes_to_int32(c11), first);
    store_or_add(pops + 2 * 16, widen_bytes_to_int32(c02), first);
    store_or_add(pops + 2 * 16 + 8, widen_bytes_to_int32(c12), first);
    store_or_add(pops + 3 * 16, widen_bytes_to_int32(c03), first);
    store_or_add(pops + 3 * 16 + 8, widen_bytes_to_int32(c13), first);
  }
  if (kw <= 0) {
    for (int i = 0; i < 4 * 16; i += 8) store_or_add(pops + i, _mm256_setzero_si256(), true);
  }
}

// 8 pixels (1 vector) x 8 channels.
inline void gemm_tile_8x8(const std::uint32_t* patches, int kw,
                          const std::uint32_t* const* weights, std::int32_t* pops) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                       2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const std::uint32_t* w[8];
  for (int j = 0; j < 8; ++j) w[j] = weights[j];
  for (int k0 = 0; k0 < kw; k0 += 31) {
    const int k1 = std::min(kw, k0 + 31);
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0,
            c7 = c0;
    for (int k = k0; k < k1; ++k) {
      const std::uint32_t* p = patches + k * 16;
      __m256i a0, wv, t1, t2;
      // Two statements of four channels each (one asm may have at most 30 operands); the
      // second reloads the patch vector, which is cheaper than passing it through.
#define KX_8X8_HALF(A, B, C, D)                                                             \
  "vmovdqa (%[p]), %[a0]\n\t"                                                               \
  "vpbroadcastd (%[wa]), %[w]\n\t" KX_XOR_POP_ACC("%[a0]", "%[" A "]")                     \
  "vpbroadcastd (%[wb]), %[w]\n\t" KX_XOR_POP_ACC("%[a0]", "%[" B "]")                     \
  "vpbroadcastd (%[wc]), %[w]\n\t" KX_XOR_POP_ACC("%[a0]", "%[" C "]")                     \
  "vpbroadcastd (%[wd]), %[w]\n\t" KX_XOR_POP_ACC("%[a0]", "%[" D "]")      
#define KX_8X8_OPERANDS(A, B, C, D, J)                                                       \
  : [A] "+x"(A), [B] "+x"(B), [C] "+x"(C), [D] "+x"(D), [a0] "=&x"(a0), [w] "=&x"(wv),       \
    [t1] "=&x"(t1), [t2] "=&x"(t2)                                                           \
  : [p] "r"(p), [wa] "r"(w[J] + k), [wb] "r"(w[J + 1] + k),                      \
    [wc] "r"(w[J + 2] + k), [wd] "r"(w[J + 3] + k), [lut] "x"(lut), [low] "x"(low)           \
  : "memory"
      __asm__(KX_8X8_HALF("c0", "c1", "c2", "c3") KX_8X8_OPERANDS(c0, c1, c2, c3, 0));
      __asm__(KX_8X8_HALF("c4", "c5", "c6", "c7") KX_8X8_OPERANDS(c4, c5, c6, c7, 4));
#undef KX_8X8_HALF
#undef KX_8X8_OPERANDS
    }
    const bool first = k0 == 0;
    store_or_add(pops + 0 * 16, widen_bytes_to_int32(c0), first);
    store_or_add(pops + 1 * 16, widen_bytes_to_int32(c1), first);
    store_or_add(pops + 2 * 16, widen_bytes_to_int32(c2), first);
    store_or_add(pops + 3 * 16, widen_bytes_to_int32(c3), first);
    store_or_add(pops + 4 * 16, widen_bytes_to_int32(c4), first);
    store_or_add(pops + 5 * 16, widen_bytes_to_int32(c5), first);
    store_or_add(pops + 6 * 16, widen_bytes_to_int32(c6), first);
    store_or_add(pops + 7 * 16, widen_bytes_to_int32(c7), first);
  }
  if (kw <= 0) {
    for (int j = 0; j < 8; ++j) store_or_add(pops + j * 16, _mm256_setzero_si256(), true);
  }
}

// acc += bytewise popcount(a XOR w) for nibble-planar operands (every byte < 16, so the XOR
// is a valid vpshufb index as it is): 3 vector ops per 128 data bits, i.e. 6 per 256 instead
// of the 8 of KX_XOR_POP_ACC, with the same 2 vpshufb (the nibble split is paid once per
// operand when the planes are made, not once per pair).
#define KX_XOR_POP_ACC_PLANAR(a, acc)      \
  "vpxor " a ", %[w], %[t1]\n\t"           \
  "vpshufb %[t1], %[lut], %[t1]\n\t"       \
  "vpaddb %[t1], " acc ", " acc "\n\t"

// Channel-lane tile: NP <= 4 output pixels x 16 output channels, nibble-planar operands.
// The k sequence of a pixel is a list of runs (Run): `length` consecutive planar words starting
// `offset` words past the pixel's base pointer (its receptive field's corner in the padded
// planar input), so the tile reads the input image in place, no im2col. The weights are one
// 16-channel block, uint32 [k][16], 32-byte aligned, in the same k order as the runs.
// Every byte of both operands is < 16, so each step adds at most 4 to a byte accumulator: a
// run has widen_after set at least every 63 steps (63 * 4 = 252 < 256), where the byte
// accumulators are widened into the int32 sums.
struct Run {
  std::int64_t offset;  // planar words from the pixel base
  int length;           // steps (planar words), >= 1
  bool widen_after;
};

// -2 * popcount, int32, of NP pixels x 16 channels: pop[j][0] channels 0-7, pop[j][1] 8-15
// (the output stage needs n - 2 * popcount; the factor is free in the widening multiply).
template <int NP>
struct TilePops {
  __m256i pop[NP][2];
};

#define KX_TILE_PIXEL(J)                                                                     \
  "vpbroadcastd (%[p" #J "], %[off]), %[w]\n\t"                                              \
  KX_XOR_POP_ACC_PLANAR("%[b0]", "%[c" #J "0]") KX_XOR_POP_ACC_PLANAR("%[b1]", "%[c" #J "1]")
#define KX_TILE_HEAD        \
  "1:\n\t"                  \
  "vmovdqa (%[wk]), %[b0]\n\t" \
  "vmovdqa 32(%[wk]), %[b1]\n\t"
// A negative byte offset counts up to 0 and indexes the pixel rows from their run ends, so the
// loop overhead is two adds and a fused jnz.
#define KX_TILE_TAIL     \
  "add $64, %[wk]\n\t"   \
  "add $4, %[off]\n\t"   \
  "jnz 1b\n\t"
#define KX_TILE_COMMON_OUT                                                                   \
  [b0] "=&x"(b0), [b1] "=&x"(b1), [w] "=&x"(wv), [t1] "=&x"(t1), [wk] "+r"(wk), [off] "+r"(off)

template <int NP>
__attribute__((always_inline)) inline TilePops<NP> gemm_tile_runs_x16(
    const std::uint32_t* const* base, const Run* runs, int nruns, const std::uint32_t* weights) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                       2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  TilePops<NP> out;
  const std::uint32_t* wk = weights;
  int r = 0;
  for (bool first = true;; first = false) {
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00;
    __m256i c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    bool widen;
    do {
      const Run run = runs[r++];
      widen = run.widen_after;
      std::int64_t off = -4 * static_cast<std::int64_t>(run.length);
      const std::int64_t end = run.offset + run.length;
      __m256i b0, b1, wv, t1;
      if constexpr (NP == 4) {
        __asm__(KX_TILE_HEAD KX_TILE_PIXEL(0) KX_TILE_PIXEL(1) KX_TILE_PIXEL(2) KX_TILE_PIXEL(3)
                    KX_TILE_TAIL
                : [c00] "+x"(c00), [c01] "+x"(c01), [c10] "+x"(c10), [c11] "+x"(c11),
                  [c20] "+x"(c20), [c21] "+x"(c21), [c30] "+x"(c30), [c31] "+x"(c31),
                  KX_TILE_COMMON_OUT
                : [p0] "r"(base[0] + end), [p1] "r"(base[1] + end), [p2] "r"(base[2] + end),
                  [p3] "r"(base[3] + end), [lut] "x"(lut)
                : "cc", "memory");
      } else if constexpr (NP == 3) {
        __asm__(KX_TILE_HEAD KX_TILE_PIXEL(0) KX_TILE_PIXEL(1) KX_TILE_PIXEL(2) KX_TILE_TAIL
                : [c00] "+x"(c00), [c01] "+x"(c01), [c10] "+x"(c10), [c11] "+x"(c11),
                  [c20] "+x"(c20), [c21] "+x"(c21), KX_TILE_COMMON_OUT
                : [p0] "r"(base[0] + end), [p1] "r"(base[1] + end), [p2] "r"(base[2] + end),
                  [lut] "x"(lut)
                : "cc", "memory");
      } else if constexpr (NP == 2) {
        __asm__(KX_TILE_HEAD KX_TILE_PIXEL(0) KX_TILE_PIXEL(1) KX_TILE_TAIL
                : [c00] "+x"(c00), [c01] "+x"(c01), [c10] "+x"(c10), [c11] "+x"(c11),
                  KX_TILE_COMMON_OUT
                : [p0] "r"(base[0] + end), [p1] "r"(base[1] + end), [lut] "x"(lut)
                : "cc", "memory");
      } else {
        static_assert(NP == 1, "NP is 1..4");
        __asm__(KX_TILE_HEAD KX_TILE_PIXEL(0) KX_TILE_TAIL
                : [c00] "+x"(c00), [c01] "+x"(c01), KX_TILE_COMMON_OUT
                : [p0] "r"(base[0] + end), [lut] "x"(lut)
                : "cc", "memory");
      }
    } while (!widen);
    // Bytes -> int32 lanes (each 32-bit lane is one channel: -2 * the sum of its 4 byte counts).
    const __m256i ones8 = _mm256_set1_epi8(1), minus2 = _mm256_set1_epi16(-2);
    const auto w = [&](__m256i c) { return _mm256_madd_epi16(_mm256_maddubs_epi16(c, ones8), minus2); };
    if (first) {
      out.pop[0][0] = w(c00);
      out.pop[0][1] = w(c01);
      if constexpr (NP > 1) { out.pop[1][0] = w(c10); out.pop[1][1] = w(c11); }
      if constexpr (NP > 2) { out.pop[2][0] = w(c20); out.pop[2][1] = w(c21); }
      if constexpr (NP > 3) { out.pop[3][0] = w(c30); out.pop[3][1] = w(c31); }
    } else {
      out.pop[0][0] = _mm256_add_epi32(out.pop[0][0], w(c00));
      out.pop[0][1] = _mm256_add_epi32(out.pop[0][1], w(c01));
      if constexpr (NP > 1) {
        out.pop[1][0] = _mm256_add_epi32(out.pop[1][0], w(c10));
        out.pop[1][1] = _mm256_add_epi32(out.pop[1][1], w(c11));
      }
      if constexpr (NP > 2) {
        out.pop[2][0] = _mm256_add_epi32(out.pop[2][0], w(c20));
        out.pop[2][1] = _mm256_add_epi32(out.pop[2][1], w(c21));
      }
      if constexpr (NP > 3) {
        out.pop[3][0] = _mm256_add_epi32(out.pop[3][0], w(c30));
        out.pop[3][1] = _mm256_add_epi32(out.pop[3][1], w(c31));
      }
    }
    if (r == nruns) return out;
  }
}

// Channel-lane table tiles (gemm_tile_pair_x64 below; it replaced a one-pixel table tile,
// whose mix is still a roofline variant): the weights of a 64-channel block are bytes [k][64]
// (byte c = nibble k of channel c, < 16), the indices of a vpshufb whose table comes from
// the input, so each lookup is an XOR + popcount of 4 data bits for 32 channels at once.
//
// The k sequence is a list of TableRuns (byte offsets from every pixel's base: begin, end);
// flags bit 0: widen after this run (at least every 63 steps, as each step adds <= 4 to a
// pixel's byte count), bit 1: the last run. Widening moves byte counts into uint16 sums in
// `sums` (the first widening stores them, the later ones add; nothing is cleared before):
// [pixel][2 vectors][2 halves] __m256i, 32-byte aligned:
// sums[j][v][0] = bytes 0-7 and 16-23 of pixel j's counts for channels 32v .. 32v + 31 as
// uint16 (vpunpcklbw), sums[j][v][1] = bytes 8-15 and 24-31 (vpunpckhbw). So channel 32v + c
// of pixel j sits in sums[j][v][(c / 8) & 1], 16-bit lane 8 * (c / 16) + c % 8. The caller
// guarantees 4 * k_total < 65536. Short receptive fields (kBytes: at most 63 steps in all,
// so byte counts cannot overflow and the run list has no widening before its end) have no
// uint16 sums: the counts are stored as bytes [pixel][2 vectors] (channel 32v + c of pixel j
// at byte 64j + 32v + c; the tile clears nothing in memory).
struct TableRun {
  std::int64_t begin;  // bytes from the pixel base
  std::int64_t end;
  std::int64_t flags;  // 1: widen after, 2: last
};

// Byte counts in A added into the uint16 sums at OFF and OFF + 32 of %[S] (ymm15 zero, ymm14
// temporary); KX_TBL_WIDEN also zeroes A (the tile's sums at %[sums]).
#define KX_TBL_ADD(A, S, OFF)                                  \
  "vpunpcklbw %%ymm15, %%" A ", %%ymm14\n\t"                   \
  "vpaddw " OFF "(%[" S "]), %%ymm14, %%ymm14\n\t"             \
  "vmovdqa %%ymm14, " OFF "(%[" S "])\n\t"                     \
  "vpunpckhbw %%ymm15, %%" A ", %%ymm14\n\t"                   \
  "vpaddw " OFF "+32(%[" S "]), %%ymm14, %%ymm14\n\t"          \
  "vmovdqa %%ymm14, " OFF "+32(%[" S "])\n\t"
// The same, stored instead of added (a field's first widening: nothing to clear before it).
#define KX_TBL_PUT(A, S, OFF)                                  \
  "vpunpcklbw %%ymm15, %%" A ", %%ymm14\n\t"                   \
  "vmovdqa %%ymm14, " OFF "(%[" S "])\n\t"                     \
  "vpunpckhbw %%ymm15, %%" A ", %%ymm14\n\t"                   \
  "vmovdqa %%ymm14, " OFF "+32(%[" S "])\n\t"
#define KX_TBL_WIDEN(A, OFF) KX_TBL_ADD(A, "sums", OFF) "vpxor %%" A ", %%" A ", %%" A "\n\t"
#define KX_TBL_WIDEN_PUT(A, OFF) KX_TBL_PUT(A, "sums", OFF) "vpxor %%" A ", %%" A ", %%" A "\n\t"
#define KX_TBL_ZERO(A) "vpxor %%" A ", %%" A ", %%" A "\n\t"
#define KX_TBL_CLOBBERS                                                                     \
  "cc", "memory", "rax", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",     \
      "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"

// Channel-lane PAIR TABLE tile (gemm_tile_pair_x64): NS <= 3 slots x 64 output channels, a
// slot being two output pixels p, q of one output row (q = p + 1; or p alone, its partner's
// counts then unused). Both pixels of a slot share one vpshufb per 32 channels: the slot's
// input is uint16 [k] holding 32 * (16 * nibble_k(p) + nibble_k(q)), a byte offset into
// kPairTables, so one lookup (the weight bytes as indices) gives both pixels' counts in the
// two nibbles of each byte. Per slot, three steps are summed in a byte (each nibble <= 12, so
// nothing carries), then added to two byte counters: L += acc and H += acc >> 4 (a 16-bit
// shift, no mask). L then holds lo + 16 hi, and H holds hi plus, in even bytes, 16 * lo of
// the odd byte beside it (all mod 256). With lo, hi <= 252 (63 steps) both are recovered
// exactly:
//   lo = L - 16 H (bytewise; the odd neighbour's term is 256 lo' = 0 mod 256),
//   hi = H - 16 * (lo of the odd byte, in even bytes only) = H - ((lo16 >> 4) & 0xf0 bytewise)
//   (in an odd byte, lo16 >> 4 holds that byte's lo >> 4 < 16, which the mask clears).
// Per 3 steps x 2 pixels x 32 channels: 3 vpshufb + 5 adds/shifts, where a one-pixel table
// tile needs 6 vpshufb + 6 adds (measured on Zen 3, operands in L1: ~950 against ~645 G
// bit-MACs/s per core).
//
// Runs, flags and output layouts as described above TableRun (a run may have any length: 3
// steps per chunk, then a chunk of 1 or 2); pixel 2j is p and 2j + 1 is q of slot j (uint16
// sums [2 NS][2 vectors][2 halves], or bytes [2 NS][2 vectors] with kBytes).
//
// Registers: slot j's counters are ymm(4j) (L, channels 0-31), ymm(4j+1) (L, 32-63), ymm(4j+2)
// and ymm(4j+3) (H); table ymm12, chunk sums ymm13/ymm14, temporary ymm15. The weights are
// vpshufb's memory operand (no weight registers, so three slots fit).
//
// The pair tile's tables (pass kPairTables.v as `tables`): tables[16a + b][i] = popcount(i XOR a) +
// 16 * popcount(i XOR b), i < 16, repeated in both 128-bit lanes.
struct PairTables {
  alignas(64) std::uint8_t v[256 * 32];
};
constexpr PairTables make_pair_tables() {
  PairTables t{};
  for (int ab = 0; ab < 256; ++ab) {
    for (int i = 0; i < 32; ++i) {
      t.v[ab * 32 + i] = static_cast<std::uint8_t>(__builtin_popcount((i & 15) ^ (ab >> 4)) +
                                                    16 * __builtin_popcount((i & 15) ^ (ab & 15)));
    }
  }
  return t;
}
constexpr PairTables kPairTables = make_pair_tables();
alignas(32) inline constexpr std::uint8_t kPairRecoverMask[32] = {
    0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0,
    0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0, 0xf0};

// Step 0 of a chunk (sums start from it), then steps 1, 2 (byte offsets IO / weight offsets WO).
#define KX_PR_FIRST(P)                                         \
  "movzwl (%[" P "], %[off]), %%eax\n\t"                       \
  "vmovdqa (%[tb], %%rax), %%ymm12\n\t"                        \
  "vpshufb (%[wk]), %%ymm12, %%ymm13\n\t"                      \
  "vpshufb 32(%[wk]), %%ymm12, %%ymm14\n\t"
#define KX_PR_NEXT(P, IO, WO0, WO1)                            \
  "movzwl " IO "(%[" P "], %[off]), %%eax\n\t"                 \
  "vmovdqa (%[tb], %%rax), %%ymm12\n\t"                        \
  "vpshufb " WO0 "(%[wk]), %%ymm12, %%ymm15\n\t"               \
  "vpaddb %%ymm15, %%ymm13, %%ymm13\n\t"                       \
  "vpshufb " WO1 "(%[wk]), %%ymm12, %%ymm15\n\t"               \
  "vpaddb %%ymm15, %%ymm14, %%ymm14\n\t"
#define KX_PR_SPLIT(L0, L1, H0, H1)                            \
  "vpaddb %%ymm13, %%" L0 ", %%" L0 "\n\t"                     \
  "vpsrlw $4, %%ymm13, %%ymm13\n\t"                            \
  "vpaddb %%ymm13, %%" H0 ", %%" H0 "\n\t"                     \
  "vpaddb %%ymm14, %%" L1 ", %%" L1 "\n\t"                     \
  "vpsrlw $4, %%ymm14, %%ymm14\n\t"                            \
  "vpaddb %%ymm14, %%" H1 ", %%" H1 "\n\t"
#define KX_PR_C3(P, L0, L1, H0, H1) \
  KX_PR_FIRST(P) KX_PR_NEXT(P, "2", "64", "96") KX_PR_NEXT(P, "4", "128", "160") KX_PR_SPLIT(L0, L1, H0, H1)
#define KX_PR_C2(P, L0, L1, H0, H1) KX_PR_FIRST(P) KX_PR_NEXT(P, "2", "64", "96") KX_PR_SPLIT(L0, L1, H0, H1)
#define KX_PR_C1(P, L0, L1, H0, H1) KX_PR_FIRST(P) KX_PR_SPLIT(L0, L1, H0, H1)
#define KX_PR_S0(C) C("p0", "ymm0", "ymm1", "ymm2", "ymm3")
#define KX_PR_S1(C) C("p1", "ymm4", "ymm5", "ymm6", "ymm7")
#define KX_PR_S2(C) C("p2", "ymm8", "ymm9", "ymm10", "ymm11")

// One run (label 2: per run, 1: per 3-step chunk; 4-6: the last 1 or 2 steps), given the
// text of a 3-, 2- and 1-step chunk. KX_PR_RUN(CHUNKS): CHUNKS(C) expands C for every slot.
#define KX_PR_RUN(CHUNKS) KX_PR_RUN3(CHUNKS(KX_PR_C3), CHUNKS(KX_PR_C2), CHUNKS(KX_PR_C1))
#define KX_PR_RUN3(C3, C2, C1)                                 \
  "2:\n\t"                                                     \
  "mov (%[run]), %[off]\n\t"                                   \
  "mov 8(%[run]), %[end]\n\t"                                  \
  "lea -4(%[end]), %[lim]\n\t"                                 \
  "cmp %[lim], %[off]\n\t"                                     \
  "jge 4f\n\t"                                                 \
  ".p2align 5\n\t"                                             \
  "1:\n\t"                                                     \
  C3                                                           \
  "add $192, %[wk]\n\t"                                        \
  "add $6, %[off]\n\t"                                         \
  "cmp %[lim], %[off]\n\t"                                     \
  "jl 1b\n\t"                                                  \
  "4:\n\t"                                                     \
  "cmp %[end], %[off]\n\t"                                     \
  "je 5f\n\t"                                                  \
  "lea 2(%[off]), %[lim]\n\t"                                  \
  "cmp %[end], %[lim]\n\t"                                     \
  "je 6f\n\t"                                                  \
  C2                                                           \
  "add $128, %[wk]\n\t"                                        \
  "jmp 5f\n\t"                                                 \
  "6:\n\t"                                                     \
  C1                                                           \
  "add $64, %[wk]\n\t"                                         \
  "5:\n\t"

// Pair counters (A = L, B = H of one 32-channel half) -> exact lo in A, hi in B; T is a
// temporary register, %[msk] must name kPairRecoverMask. Kept defined after this header, as
// the channel-pair roofline mix (roofline_avx2.cc) recovers its counters the same way.
#define KX_PAIR_RECOVER(A, B, T)                               \
  "vpsllw $4, %%" B ", %%" T "\n\t"                            \
  "vpand (%[msk]), %%" T ", %%" T "\n\t"                       \
  "vpsubb %%" T ", %%" A ", %%" A "\n\t"                       \
  "vpsrlw $4, %%" A ", %%" T "\n\t"                            \
  "vpand (%[msk]), %%" T ", %%" T "\n\t"                       \
  "vpsubb %%" T ", %%" B ", %%" B "\n\t"
#define KX_PR_RECOVER(A, B) KX_PAIR_RECOVER(A, B, "ymm15")
#define KX_PR_REC(L0, L1, H0, H1) KX_PR_RECOVER(L0, H0) KX_PR_RECOVER(L1, H1)
// Slot j's recovered counters widened into the sums of pixels 2j, 2j + 1 (ymm15 zero): added
// (KX_PR_W*), or stored by the field's first widening (KX_PR_P*).
#define KX_PR_WIDEN_WITH(W, L0, L1, H0, H1, OP, OQ)                              \
  W(L0, OP "+0") W(L1, OP "+64") W(H0, OQ "+0") W(H1, OQ "+64")
#define KX_PR_WIDEN(...) KX_PR_WIDEN_WITH(KX_TBL_WIDEN, __VA_ARGS__)
#define KX_PR_PUT(...) KX_PR_WIDEN_WITH(KX_TBL_WIDEN_PUT, __VA_ARGS__)
#define KX_PR_W0 KX_PR_WIDEN("ymm0", "ymm1", "ymm2", "ymm3", "0", "128")
#define KX_PR_W1 KX_PR_WIDEN("ymm4", "ymm5", "ymm6", "ymm7", "256", "384")
#define KX_PR_W2 KX_PR_WIDEN("ymm8", "ymm9", "ymm10", "ymm11", "512", "640")
#define KX_PR_P0 KX_PR_PUT("ymm0", "ymm1", "ymm2", "ymm3", "0", "128")
#define KX_PR_P1 KX_PR_PUT("ymm4", "ymm5", "ymm6", "ymm7", "256", "384")
#define KX_PR_P2 KX_PR_PUT("ymm8", "ymm9", "ymm10", "ymm11", "512", "640")
// Bytes out: pixel 2j at 128j, 2j + 1 at 128j + 64.
#define KX_PR_STORE(L0, L1, H0, H1, OP, OQ)                                      \
  "vmovdqa %%" L0 ", " OP "+0(%[sums])\n\t" "vmovdqa %%" L1 ", " OP "+32(%[sums])\n\t"  \
  "vmovdqa %%" H0 ", " OQ "+0(%[sums])\n\t" "vmovdqa %%" H1 ", " OQ "+32(%[sums])\n\t"
#define KX_PR_B0 KX_PR_STORE("ymm0", "ymm1", "ymm2", "ymm3", "0", "64")
#define KX_PR_B1 KX_PR_STORE("ymm4", "ymm5", "ymm6", "ymm7", "128", "192")
#define KX_PR_B2 KX_PR_STORE("ymm8", "ymm9", "ymm10", "ymm11", "256", "320")
// Zero slot j's counters.
#define KX_PR_Z(L0, L1, H0, H1) KX_TBL_ZERO(L0) KX_TBL_ZERO(L1) KX_TBL_ZERO(H0) KX_TBL_ZERO(H1)

#define KX_PR_CH1(C) KX_PR_S0(C)
#define KX_PR_CH2(C) KX_PR_S0(C) KX_PR_S1(C)
#define KX_PR_CH3(C) KX_PR_S0(C) KX_PR_S1(C) KX_PR_S2(C)

// uint16 sums: zero the counters; runs up to the first flagged one, after which the counters
// are recovered (RECOVER) and widened into the sums by storing them (PUT: nothing is cleared in
// memory); done if that run was the last, else the same loop again with widenings that add
// (WIDEN), done after the last run. The two copies of the run loop each have their own local
// labels (2b finds the nearest).
#define KX_PR_LOOP(CHUNKS, ZERO, RECOVER, PUT, WIDEN)          \
  ZERO                                                         \
  KX_PR_RUN(CHUNKS)                                            \
  "testb $1, 16(%[run])\n\t"                                   \
  "lea 24(%[run]), %[run]\n\t"                                 \
  "jz 2b\n\t"                                                  \
  RECOVER KX_PR_ZW PUT                                         \
  "testb $2, -8(%[run])\n\t"                                   \
  "jnz 7f\n\t"                                                 \
  KX_PR_RUN(CHUNKS)                                            \
  "testb $1, 16(%[run])\n\t"                                   \
  "jz 3f\n\t"                                                  \
  RECOVER KX_PR_ZW WIDEN                                       \
  "3:\n\t"                                                     \
  "testb $2, 16(%[run])\n\t"                                   \
  "lea 24(%[run]), %[run]\n\t"                                 \
  "jz 2b\n\t"                                                  \
  "7:\n\t"
// Byte counters (at most 63 steps in all): recover and store once at the end.
#define KX_PR_LOOP_BYTES(CHUNKS, ZERO, STORE)                  \
  ZERO                                                         \
  KX_PR_RUN(CHUNKS)                                            \
  "testb $2, 16(%[run])\n\t"                                   \
  "lea 24(%[run]), %[run]\n\t"                                 \
  "jz 2b\n\t"                                                  \
  STORE

#define KX_PR_OUTS [run] "+r"(run), [wk] "+r"(wk), [off] "=&r"(off), [end] "=&r"(end), [lim] "=&r"(lim)
#define KX_PR_ASM(TEXT, ...) __asm__ volatile(TEXT : KX_PR_OUTS : __VA_ARGS__ : KX_TBL_CLOBBERS)

template <int NS, bool kBytes = false>
__attribute__((always_inline)) inline void gemm_tile_pair_x64(const std::uint16_t* const* base,
                                                              const TableRun* runs,
                                                              const std::uint8_t* weights,
                                                              const std::uint8_t* tables,
                                                              __m256i* sums) {
  const TableRun* run = runs;
  const std::uint8_t* wk = weights;
  std::int64_t off, end, lim;
#define KX_PR_Z1 KX_PR_Z("ymm0", "ymm1", "ymm2", "ymm3")
#define KX_PR_Z2 KX_PR_Z1 KX_PR_Z("ymm4", "ymm5", "ymm6", "ymm7")
#define KX_PR_Z3 KX_PR_Z2 KX_PR_Z("ymm8", "ymm9", "ymm10", "ymm11")
#define KX_PR_R0 KX_PR_REC("ymm0", "ymm1", "ymm2", "ymm3")
#define KX_PR_R1 KX_PR_REC("ymm4", "ymm5", "ymm6", "ymm7")
#define KX_PR_R2 KX_PR_REC("ymm8", "ymm9", "ymm10", "ymm11")
#define KX_PR_ZW "vpxor %%ymm15, %%ymm15, %%ymm15\n\t"
#define KX_PR_IN3 [p0] "r"(base[0]), [p1] "r"(base[1]), [p2] "r"(base[2]), [tb] "r"(tables), \
    [sums] "r"(sums), [msk] "r"(kPairRecoverMask)
#define KX_PR_IN2 [p0] "r"(base[0]), [p1] "r"(base[1]), [tb] "r"(tables), [sums] "r"(sums), \
    [msk] "r"(kPairRecoverMask)
#define KX_PR_IN1 [p0] "r"(base[0]), [tb] "r"(tables), [sums] "r"(sums), [msk] "r"(kPairRecoverMask)
  if constexpr (NS == 3) {
    if constexpr (kBytes) {
      KX_PR_ASM(KX_PR_LOOP_BYTES(KX_PR_CH3, KX_PR_Z3, KX_PR_R0 KX_PR_R1 KX_PR_R2 KX_PR_B0 KX_PR_B1 KX_PR_B2),
                KX_PR_IN3);
    } else {
      KX_PR_ASM(KX_PR_LOOP(KX_PR_CH3, KX_PR_Z3, KX_PR_R0 KX_PR_R1 KX_PR_R2, KX_PR_P0 KX_PR_P1 KX_PR_P2,
                           KX_PR_W0 KX_PR_W1 KX_PR_W2),
                KX_PR_IN3);
    }
  } else if constexpr (NS == 2) {
    if constexpr (kBytes) {
      KX_PR_ASM(KX_PR_LOOP_BYTES(KX_PR_CH2, KX_PR_Z2, KX_PR_R0 KX_PR_R1 KX_PR_B0 KX_PR_B1), KX_PR_IN2);
    } else {
      KX_PR_ASM(KX_PR_LOOP(KX_PR_CH2, KX_PR_Z2, KX_PR_R0 KX_PR_R1, KX_PR_P0 KX_PR_P1, KX_PR_W0 KX_PR_W1),
                KX_PR_IN2);
    }
  } else {
    static_assert(NS == 1, "NS is 1..3");
    if constexpr (kBytes) {
      KX_PR_ASM(KX_PR_LOOP_BYTES(KX_PR_CH1, KX_PR_Z1, KX_PR_R0 KX_PR_B0), KX_PR_IN1);
    } else {
      KX_PR_ASM(KX_PR_LOOP(KX_PR_CH1, KX_PR_Z1, KX_PR_R0, KX_PR_P0, KX_PR_W0), KX_PR_IN1);
    }
  }
#undef KX_PR_IN1
#undef KX_PR_IN2
#undef KX_PR_IN3
#undef KX_PR_ZW
#undef KX_PR_R0
#undef KX_PR_R1
#undef KX_PR_R2
#undef KX_PR_Z1
#undef KX_PR_Z2
#undef KX_PR_Z3
}

// PAIR TABLE tile over 128 channels: one slot (pixels p, q as in gemm_tile_pair_x64) and two
// 64-channel weight blocks, the second `bstride` bytes after the first, for ONE widening
// segment of the run list: the runs from `run` up to and including the next one flagged 1
// (widen after). Each table load then serves four vpshufb instead of two, so per 3 steps and
// 128 channels the loop issues 3 offset loads, 3 table loads and 12 vpshufb (the 3-slot x64
// tile: 6, 6 and 12 for the same 2 x 128 outputs). As the 128 channels' weights of a whole
// field (8 bytes per step) may not fit in L1, the caller runs every slot of a pixel block
// through one segment before the next segment (segment-major), so each 63-step segment's
// 8 KB of weights is read from L2 once per block.
// On return `run` is the run after the segment and `wk` the weights of its first step.
// kFirst: the first segment of the field stores the sums (uint16, layout above TableRun)
// instead of adding to them. Sums of block 0 at s0 (pixel p at +0, q at +128 bytes), block 1
// at s1.
// Registers: L counters ymm0-3 (block 0 channels 0-31, 32-63, block 1 the same), H ymm4-7,
// chunk sums ymm8-11, table ymm12, temporaries ymm13-14, ymm15 (recovery, then zero).
#define KX_P2_FIRST                                            \
  "movzwl (%[p0], %[off]), %%eax\n\t"                          \
  "vmovdqa (%[tb], %%rax), %%ymm12\n\t"                        \
  "vpshufb (%[wk]), %%ymm12, %%ymm8\n\t"                       \
  "vpshufb 32(%[wk]), %%ymm12, %%ymm9\n\t"                     \
  "vpshufb (%[wk], %[bs]), %%ymm12, %%ymm10\n\t"               \
  "vpshufb 32(%[wk], %[bs]), %%ymm12, %%ymm11\n\t"
#define KX_P2_NEXT(IO, WO0, WO1)                               \
  "movzwl " IO "(%[p0], %[off]), %%eax\n\t"                    \
  "vmovdqa (%[tb], %%rax), %%ymm12\n\t"                        \
  "vpshufb " WO0 "(%[wk]), %%ymm12, %%ymm13\n\t"               \
  "vpaddb %%ymm13, %%ymm8, %%ymm8\n\t"                         \
  "vpshufb " WO1 "(%[wk]), %%ymm12, %%ymm14\n\t"               \
  "vpaddb %%ymm14, %%ymm9, %%ymm9\n\t"                         \
  "vpshufb " WO0 "(%[wk], %[bs]), %%ymm12, %%ymm13\n\t"        \
  "vpaddb %%ymm13, %%ymm10, %%ymm10\n\t"                       \
  "vpshufb " WO1 "(%[wk], %[bs]), %%ymm12, %%ymm14\n\t"        \
  "vpaddb %%ymm14, %%ymm11, %%ymm11\n\t"
#define KX_P2_SPLIT1(S, L, H)                                  \
  "vpaddb %%" S ", %%" L ", %%" L "\n\t"                       \
  "vpsrlw $4, %%" S ", %%" S "\n\t"                            \
  "vpaddb %%" S ", %%" H ", %%" H "\n\t"
#define KX_P2_SPLIT                                                                    \
  KX_P2_SPLIT1("ymm8", "ymm0", "ymm4") KX_P2_SPLIT1("ymm9", "ymm1", "ymm5")            \
  KX_P2_SPLIT1("ymm10", "ymm2", "ymm6") KX_P2_SPLIT1("ymm11", "ymm3", "ymm7")
#define KX_P2_C3 KX_P2_FIRST KX_P2_NEXT("2", "64", "96") KX_P2_NEXT("4", "128", "160") KX_P2_SPLIT
#define KX_P2_C2 KX_P2_FIRST KX_P2_NEXT("2", "64", "96") KX_P2_SPLIT
#define KX_P2_C1 KX_P2_FIRST KX_P2_SPLIT
// Recovered counters into the uint16 sums (ymm15 zero): stored by the first segment
// (KX_TBL_PUT), added by the others (KX_TBL_ADD).
#define KX_P2_OUT(W)                                                                   \
  W("ymm0", "s0", "0") W("ymm1", "s0", "64") W("ymm4", "s0", "128") W("ymm5", "s0", "192") \
  W("ymm2", "s1", "0") W("ymm3", "s1", "64") W("ymm6", "s1", "128") W("ymm7", "s1", "192")
#define KX_P2_TEXT(W)                                                                  \
  "vpxor %%ymm0, %%ymm0, %%ymm0\n\t" "vpxor %%ymm1, %%ymm1, %%ymm1\n\t"                 \
  "vpxor %%ymm2, %%ymm2, %%ymm2\n\t" "vpxor %%ymm3, %%ymm3, %%ymm3\n\t"                 \
  "vpxor %%ymm4, %%ymm4, %%ymm4\n\t" "vpxor %%ymm5, %%ymm5, %%ymm5\n\t"                 \
  "vpxor %%ymm6, %%ymm6, %%ymm6\n\t" "vpxor %%ymm7, %%ymm7, %%ymm7\n\t"                 \
  KX_PR_RUN3(KX_P2_C3, KX_P2_C2, KX_P2_C1)                                                            \
  "testb $1, 16(%[run])\n\t"                                                           \
  "lea 24(%[run]), %[run]\n\t"                                                         \
  "jz 2b\n\t"                                                                          \
  KX_PAIR_RECOVER("ymm0", "ymm4", "ymm15") KX_PAIR_RECOVER("ymm1", "ymm5", "ymm15")    \
  KX_PAIR_RECOVER("ymm2", "ymm6", "ymm15") KX_PAIR_RECOVER("ymm3", "ymm7", "ymm15")    \
  "vpxor %%ymm15, %%ymm15, %%ymm15\n\t"                                                \
  KX_P2_OUT(W)

template <bool kFirst>
__attribute__((always_inline)) inline void gemm_seg_pair_x128(const std::uint16_t* base, const TableRun*& run,
                                                              const std::uint8_t*& wk, std::int64_t bstride,
                                                              const std::uint8_t* tables, __m256i* s0,
                                                              __m256i* s1) {
  std::int64_t off, end, lim;
  if constexpr (kFirst) {
    __asm__ volatile(KX_P2_TEXT(KX_TBL_PUT)
                     : KX_PR_OUTS
                     : [p0] "r"(base), [bs] "r"(bstride), [tb] "r"(tables), [s0] "r"(s0), [s1] "r"(s1),
                       [msk] "r"(kPairRecoverMask)
                     : KX_TBL_CLOBBERS);
  } else {
    __asm__ volatile(KX_P2_TEXT(KX_TBL_ADD)
                     : KX_PR_OUTS
                     : [p0] "r"(base), [bs] "r"(bstride), [tb] "r"(tables), [s0] "r"(s0), [s1] "r"(s1),
                       [msk] "r"(kPairRecoverMask)
                     : KX_TBL_CLOBBERS);
  }
}
#undef KX_P2_TEXT
#undef KX_P2_OUT
#undef KX_P2_C1
#undef KX_P2_C2
#undef KX_P2_C3
#undef KX_P2_SPLIT
#undef KX_P2_SPLIT1
#undef KX_P2_NEXT
#undef KX_P2_FIRST

#undef KX_PR_ASM
#undef KX_PR_OUTS
#undef KX_PR_LOOP
#undef KX_PR_LOOP_BYTES
#undef KX_PR_CH1
#undef KX_PR_CH2
#undef KX_PR_CH3
#undef KX_PR_Z
#undef KX_PR_B0
#undef KX_PR_B1
#undef KX_PR_B2
#undef KX_PR_STORE
#undef KX_PR_W0
#undef KX_PR_W1
#undef KX_PR_W2
#undef KX_PR_P0
#undef KX_PR_P1
#undef KX_PR_P2
#undef KX_PR_PUT
#undef KX_PR_WIDEN_WITH
#undef KX_PR_WIDEN
#undef KX_PR_REC
#undef KX_PR_RECOVER
#undef KX_PR_RUN
#undef KX_PR_RUN3
#undef KX_PR_S0
#undef KX_PR_S1
#undef KX_PR_S2
#undef KX_PR_C1
#undef KX_PR_C2
#undef KX_PR_C3
#undef KX_PR_SPLIT
#undef KX_PR_NEXT
#undef KX_PR_FIRST

#undef KX_TBL_WIDEN
#undef KX_TBL_WIDEN_PUT
#undef KX_TBL_PUT
#undef KX_TBL_ADD
#undef KX_TBL_ZERO
#undef KX_TBL_CLOBBERS

#undef KX_TILE_PIXEL
#undef KX_TILE_HEAD
#undef KX_TILE_TAIL
#undef KX_TILE_COMMON_OUT

#undef KX_XOR_POP_ACC_PLANAR
#undef KX_XOR_POP_ACC

}  // namespace
}  // namespace internal
}  // namespace keras_xnor

#endif  // KERAS_XNOR_CORE_XNOR_GEMM_TILE_AVX2_H_
