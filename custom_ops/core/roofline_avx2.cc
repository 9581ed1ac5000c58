// The AVX2 roofline loops: the XOR + vpshufb nibble popcount + byte accumulate step of the GEMM
// microkernels, in inline assembly so no accumulator is spilled (the same reason as in
// xnor_gemm_tile_avx2.h). Variants, the caller keeps the fastest:
//  * 2 x 3 tile with every operand in a register (no memory access at all);
//  * 2 x 4 tile with the four weights broadcast from an L1-resident line, exactly the
//    pixel-lane microkernels' instruction mix;
//  * the same 2 x 4 broadcast tile on nibble-planar operands (4 data bits per byte, so the
//    nibble split is not in the loop), the channel-lane microkernel's mix: 3 vector ops per
//    128 bit-MACs instead of 8 per 256. Counted in data bits, so it is comparable;
//  * that planar tile plus 2 scalar XOR + POPCNT chains per step on the idle integer ALUs;
//  * the table mixes (vpshufb on popcount tables, no XOR): the former one-pixel table tile,
//    the pair table tiles run as is (3 slots x 64 channels, and 1 slot x 128 channels), and
//    the channel-pair mix (tables from the weights).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "custom_ops/core/roofline.h"
#include "custom_ops/core/xnor_gemm_tile_avx2.h"

namespace keras_xnor {
namespace internal {
namespace {

#define KX_RL_STEP(a, w, acc)          \
  "vpxor " a ", " w ", %[t1]\n\t"      \
  "vpand %[low], %[t1], %[t2]\n\t"     \
  "vpsrlw $4, %[t1], %[t1]\n\t"        \
  "vpand %[low], %[t1], %[t1]\n\t"     \
  "vpshufb %[t2], %[lut], %[t2]\n\t"   \
  "vpshufb %[t1], %[lut], %[t1]\n\t"   \
  "vpaddb %[t1], %[t2], %[t2]\n\t"     \
  "vpaddb %[t2], " acc ", " acc "\n\t"

__m256i lut_vector() {
  return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3,
                          1, 2, 2, 3, 2, 3, 3, 4);
}

std::uint64_t lane_sum(__m256i v) {
  alignas(32) std::uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), v);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

}  // namespace

double roofline_loop_avx2_registers(long long iterations, unsigned long long* sink) {
  const __m256i lut = lut_vector(), low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
  const __m256i a0 = _mm256_set1_epi32(0x12345678), a1 = _mm256_set1_epi32(0x0f1e2d3c);
  const __m256i w0 = _mm256_set1_epi32(0x7a6b5c4d), w1 = _mm256_set1_epi32(0x01234567);
  const __m256i w2 = _mm256_set1_epi32(0x76543210);
  __m256i total = zero;
  long long done = 0;
  while (done < iterations) {
    __m256i c00 = zero, c01 = zero, c02 = zero, c10 = zero, c11 = zero, c12 = zero;
    for (int i = 0; i < 31; ++i) {  // each byte grows by <= 8 per step: 31 * 8 < 256
      __m256i t1, t2;
      __asm__(KX_RL_STEP("%[a0]", "%[w0]", "%[c00]") KX_RL_STEP("%[a0]", "%[w1]", "%[c01]")
              KX_RL_STEP("%[a0]", "%[w2]", "%[c02]") KX_RL_STEP("%[a1]", "%[w0]", "%[c10]")
              KX_RL_STEP("%[a1]", "%[w1]", "%[c11]") KX_RL_STEP("%[a1]", "%[w2]", "%[c12]")
              : [c00] "+x"(c00), [c01] "+x"(c01), [c02] "+x"(c02), [c10] "+x"(c10),
                [c11] "+x"(c11), [c12] "+x"(c12), [t1] "=&x"(t1), [t2] "=&x"(t2)
              : [a0] "x"(a0), [a1] "x"(a1), [w0] "x"(w0), [w1] "x"(w1), [w2] "x"(w2),
                [lut] "x"(lut), [low] "x"(low));
    }
    __m256i s = _mm256_sad_epu8(c00, zero);
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c01, zero));
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c02, zero));
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c10, zero));
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c11, zero));
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c12, zero));
    total = _mm256_add_epi64(total, s);
    done += 31;
  }
  *sink += lane_sum(total);
  return static_cast<double>(done) * 6.0 * 256.0;
}

double roofline_loop_avx2_broadcast(long long iterations, unsigned long long* sink) {
  const __m256i lut = lut_vector(), low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
  alignas(64) static const std::uint32_t weights[16] = {0x7a6b5c4d, 0x01234567, 0x76543210,
                                                        0x0f0f1234, 5, 6, 7, 8};
  alignas(64) static const std::uint32_t patches[16] = {0x12345678, 1, 2, 3, 4, 5, 6, 7,
                                                        0x0f1e2d3c, 9, 10, 11, 12, 13, 14, 15};
  __m256i total = zero;
  long long done = 0;
  while (done < iterations) {
    __m256i c00 = zero, c01 = zero, c02 = zero, c03 = zero;
    __m256i c10 = zero, c11 = zero, c12 = zero, c13 = zero;
    for (int i = 0; i < 31; ++i) {
      __m256i a0, a1, w, t1, t2;
      __asm__("vmovdqa (%[p]), %[a0]\n\t"
              "vmovdqa 32(%[p]), %[a1]\n\t"
              "vpbroadcastd (%[wp]), %[w]\n\t"
              KX_RL_STEP("%[a0]", "%[w]", "%[c00]") KX_RL_STEP("%[a1]", "%[w]", "%[c10]")
              "vpbroadcastd 4(%[wp]), %[w]\n\t"
              KX_RL_STEP("%[a0]", "%[w]", "%[c01]") KX_RL_STEP("%[a1]", "%[w]", "%[c11]")
              "vpbroadcastd 8(%[wp]), %[w]\n\t"
              KX_RL_STEP("%[a0]", "%[w]", "%[c02]") KX_RL_STEP("%[a1]", "%[w]", "%[c12]")
              "vpbroadcastd 12(%[wp]), %[w]\n\t"
              KX_RL_STEP("%[a0]", "%[w]", "%[c03]") KX_RL_STEP("%[a1]", "%[w]", "%[c13]")
              : [c00] "+x"(c00), [c01] "+x"(c01), [c02] "+x"(c02), [c03] "+x"(c03),
                [c10] "+x"(c10), [c11] "+x"(c11), [c12] "+x"(c12), [c13] "+x"(c13),
                [a0] "=&x"(a0), [a1] "=&x"(a1), [w] "=&x"(w), [t1] "=&x"(t1), [t2] "=&x"(t2)
              : [p] "r"(patches), [wp] "r"(weights), [lut] "x"(lut), [low] "x"(low)
              : "memory");
    }
    __m256i s = _mm256_sad_epu8(c00, zero);
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c01, zero));
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c02, zero));
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c03, zero));
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c10, zero));
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c11, zero));
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c12, zero));
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c13, zero));
    total = _mm256_add_epi64(total, s);
    done += 31;
  }
  *sink += lane_sum(total);
  return static_cast<double>(done) * 8.0 * 256.0;
}

// Nibble-planar operands (every byte < 16, 4 data bits per byte): XOR, vpshufb, byte add, i.e.
// 128 bit-MACs per 3 vector ops. Same 2 x 4 broadcast tile as the channel-lane microkernel.
#define KX_RL_PLANAR_STEP(a, w, acc)   \
  "vpxor " a ", " w ", %[t1]\n\t"      \
  "vpshufb %[t1], %[lut], %[t1]\n\t"   \
  "vpaddb %[t1], " acc ", " acc "\n\t"

namespace {

// One array for the broadcast tiles' operands: weights (words 0-3), patches (16-31), 64-bit
// scalar operands (32-63), so the asm needs a single base register.
alignas(64) const std::uint32_t kPlanarOperands[64] = {
    0x0a0b0c0d, 0x01020304, 0x07060504, 0x0f0f0102, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0,
    0x01020304, 1, 2, 3, 4, 5, 6, 7, 0x0f0e0d0c, 9, 10, 11, 12, 13, 14, 15,
    0x89abcdef, 0x01234567, 0x76543210, 0xfedcba98, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
    0x5555aaaa, 0x5555aaaa, 0xf0f0f0f0, 0x0f0f0f0f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

// 63 steps (each byte grows by <= 4 per step: 63 * 4 < 256) of the planar 2 x 4 broadcast tile,
// the step loop in asm like the microkernel's. SCALAR is "" or extra scalar chains.
#define KX_RL_PLANAR_TILE(SCALAR_A, SCALAR_B)                                                  \
  "1:\n\t"                                                                                     \
  "vmovdqa 64(%[p]), %[a0]\n\t"                                                                \
  "vmovdqa 96(%[p]), %[a1]\n\t"                                                                \
  "vpbroadcastd (%[p]), %[w]\n\t"                                                              \
  KX_RL_PLANAR_STEP("%[a0]", "%[w]", "%[c00]") KX_RL_PLANAR_STEP("%[a1]", "%[w]", "%[c10]")    \
  SCALAR_A                                                                                     \
  "vpbroadcastd 4(%[p]), %[w]\n\t"                                                             \
  KX_RL_PLANAR_STEP("%[a0]", "%[w]", "%[c01]") KX_RL_PLANAR_STEP("%[a1]", "%[w]", "%[c11]")    \
  "vpbroadcastd 8(%[p]), %[w]\n\t"                                                             \
  KX_RL_PLANAR_STEP("%[a0]", "%[w]", "%[c02]") KX_RL_PLANAR_STEP("%[a1]", "%[w]", "%[c12]")    \
  SCALAR_B                                                                                     \
  "vpbroadcastd 12(%[p]), %[w]\n\t"                                                            \
  KX_RL_PLANAR_STEP("%[a0]", "%[w]", "%[c03]") KX_RL_PLANAR_STEP("%[a1]", "%[w]", "%[c13]")    \
  "dec %[n]\n\t"                                                                               \
  "jnz 1b\n\t"

__m256i sad_sum8(__m256i c00, __m256i c01, __m256i c02, __m256i c03, __m256i c10, __m256i c11,
                 __m256i c12, __m256i c13) {
  const __m256i zero = _mm256_setzero_si256();
  __m256i s = _mm256_sad_epu8(c00, zero);
  s = _mm256_add_epi64(s, _mm256_sad_epu8(c01, zero));
  s = _mm256_add_epi64(s, _mm256_sad_epu8(c02, zero));
  s = _mm256_add_epi64(s, _mm256_sad_epu8(c03, zero));
  s = _mm256_add_epi64(s, _mm256_sad_epu8(c10, zero));
  s = _mm256_add_epi64(s, _mm256_sad_epu8(c11, zero));
  s = _mm256_add_epi64(s, _mm256_sad_epu8(c12, zero));
  return _mm256_add_epi64(s, _mm256_sad_epu8(c13, zero));
}

}  // namespace

double roofline_loop_avx2_planar(long long iterations, unsigned long long* sink) {
  const __m256i lut = lut_vector(), zero = _mm256_setzero_si256();
  __m256i total = zero;
  long long done = 0;
  while (done < iterations) {
    __m256i c00 = zero, c01 = zero, c02 = zero, c03 = zero;
    __m256i c10 = zero, c11 = zero, c12 = zero, c13 = zero;
    __m256i a0, a1, w, t1;
    long long n = 63;
    __asm__(KX_RL_PLANAR_TILE("", "")
            : [c00] "+x"(c00), [c01] "+x"(c01), [c02] "+x"(c02), [c03] "+x"(c03),
              [c10] "+x"(c10), [c11] "+x"(c11), [c12] "+x"(c12), [c13] "+x"(c13),
              [a0] "=&x"(a0), [a1] "=&x"(a1), [w] "=&x"(w), [t1] "=&x"(t1), [n] "+r"(n)
            : [p] "r"(kPlanarOperands), [lut] "x"(lut)
            : "cc", "memory");
    total = _mm256_add_epi64(total, sad_sum8(c00, c01, c02, c03, c10, c11, c12, c13));
    done += 63;
  }
  *sink += lane_sum(total);
  return static_cast<double>(done) * 8.0 * 128.0;  // 128 data bits per planar vector
}

// The planar tile plus two scalar 64-bit XOR + POPCNT + ADD chains per step on the integer
// ALUs, which the vector loop leaves idle: the best mix measured on Zen 3 (+5-10% over the
// planar loop alone; 4 chains per step is no better, dispatch-bound). No kernel issues it
// yet (splitting K between the vector tile and 64 scalar (pixel, channel) accumulators is
// future work), but the roofline is the best rate the CPU reaches, so it counts.
#define KX_RL_SCALAR_STEP(off, acc)           \
  "mov " off "(%[p]), %[g]\n\t"              \
  "xor " off "+16(%[p]), %[g]\n\t"           \
  "popcnt %[g], %[g]\n\t"                    \
  "add %[g], " acc "\n\t"

double roofline_loop_avx2_planar_mixed(long long iterations, unsigned long long* sink) {
  const __m256i lut = lut_vector(), zero = _mm256_setzero_si256();
  __m256i total = zero;
  std::uint64_t scalar_total = 0;
  long long done = 0;
  while (done < iterations) {
    __m256i c00 = zero, c01 = zero, c02 = zero, c03 = zero;
    __m256i c10 = zero, c11 = zero, c12 = zero, c13 = zero;
    __m256i a0, a1, w, t1;
    std::uint64_t g0 = 0, g1 = 0, g;
    long long n = 63;
    __asm__(KX_RL_PLANAR_TILE(KX_RL_SCALAR_STEP("128", "%[g0]"), KX_RL_SCALAR_STEP("136", "%[g1]"))
            : [c00] "+x"(c00), [c01] "+x"(c01), [c02] "+x"(c02), [c03] "+x"(c03),
              [c10] "+x"(c10), [c11] "+x"(c11), [c12] "+x"(c12), [c13] "+x"(c13),
              [a0] "=&x"(a0), [a1] "=&x"(a1), [w] "=&x"(w), [t1] "=&x"(t1), [n] "+r"(n),
              [g0] "+r"(g0), [g1] "+r"(g1), [g] "=&r"(g)
            : [p] "r"(kPlanarOperands), [lut] "x"(lut)
            : "cc", "memory");
    total = _mm256_add_epi64(total, sad_sum8(c00, c01, c02, c03, c10, c11, c12, c13));
    scalar_total += g0 + g1;
    done += 63;
  }
  *sink += lane_sum(total) + scalar_total;
  return static_cast<double>(done) * (8.0 * 128.0 + 2.0 * 64.0);
}

// The former one-pixel channel-lane TABLE tile's mix (before gemm_tile_pair_x64): per step,
// two 64-channel weight vectors of nibble bytes, and per pixel a 16-bit table offset load, a
// table load, and one vpshufb (weights as indices) + byte add per 32 channels: 2 vector ALU ops
// per 128 bit-MACs. Six pixels (the tile's maximum, which the kernel uses), all operands in one
// L1-resident line, 63 steps per widening as in the kernel (each step adds <= 4 to a byte).
// Counted as 6 x 64 x 4 bit-MACs per step.
namespace {

alignas(64) const std::uint8_t kRooflineTables[16 * 32] = {
#define KX_RL_T(v)                                                                          \
  __builtin_popcount(0 ^ v), __builtin_popcount(1 ^ v), __builtin_popcount(2 ^ v),          \
      __builtin_popcount(3 ^ v), __builtin_popcount(4 ^ v), __builtin_popcount(5 ^ v),      \
      __builtin_popcount(6 ^ v), __builtin_popcount(7 ^ v), __builtin_popcount(8 ^ v),      \
      __builtin_popcount(9 ^ v), __builtin_popcount(10 ^ v), __builtin_popcount(11 ^ v),    \
      __builtin_popcount(12 ^ v), __builtin_popcount(13 ^ v), __builtin_popcount(14 ^ v),   \
      __builtin_popcount(15 ^ v)
#define KX_RL_T2(v) KX_RL_T(v), KX_RL_T(v)
    KX_RL_T2(0), KX_RL_T2(1), KX_RL_T2(2),  KX_RL_T2(3),  KX_RL_T2(4),  KX_RL_T2(5),
    KX_RL_T2(6), KX_RL_T2(7), KX_RL_T2(8),  KX_RL_T2(9),  KX_RL_T2(10), KX_RL_T2(11),
    KX_RL_T2(12), KX_RL_T2(13), KX_RL_T2(14), KX_RL_T2(15)
#undef KX_RL_T2
#undef KX_RL_T
};

// Weights (64 nibble bytes) then six pixels' table offsets (2 bytes each, distinct tables).
alignas(64) const std::uint8_t kTableOperands[128] = {
    3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3, 8, 3, 2, 7, 9, 5,
    0, 2, 8, 8, 4, 1, 9, 7, 1, 6, 9, 3, 9, 9, 3, 7, 5, 1, 0, 5, 8, 2, 0, 9, 7, 4, 9, 4, 4, 5, 9, 2,
    3 * 32, 0, 7 * 32 % 256, 7 * 32 / 256, 12 * 32 % 256, 12 * 32 / 256, 5 * 32, 0,
    9 * 32 % 256, 9 * 32 / 256, 14 * 32 % 256, 14 * 32 / 256};

#define KX_RL_TBL_PIXEL(OFF, A, B)                     \
  "movzwl " OFF "(%[p]), %%eax\n\t"                    \
  "vmovdqa (%[tb], %%rax), %%ymm14\n\t"                \
  "vpshufb %%ymm12, %%ymm14, %%ymm15\n\t"              \
  "vpaddb %%ymm15, %%" A ", %%" A "\n\t"               \
  "vpshufb %%ymm13, %%ymm14, %%ymm15\n\t"              \
  "vpaddb %%ymm15, %%" B ", %%" B "\n\t"

}  // namespace

double roofline_loop_avx2_table(long long iterations, unsigned long long* sink) {
  alignas(32) std::uint64_t lanes[4];
  std::uint64_t total = 0;
  long long done = 0;
  while (done < iterations) {
    long long n = 63;
    __asm__ volatile(
        "vpxor %%ymm0, %%ymm0, %%ymm0\n\t"
        "vmovdqa %%ymm0, %%ymm1\n\t vmovdqa %%ymm0, %%ymm2\n\t vmovdqa %%ymm0, %%ymm3\n\t"
        "vmovdqa %%ymm0, %%ymm4\n\t vmovdqa %%ymm0, %%ymm5\n\t vmovdqa %%ymm0, %%ymm6\n\t"
        "vmovdqa %%ymm0, %%ymm7\n\t vmovdqa %%ymm0, %%ymm8\n\t vmovdqa %%ymm0, %%ymm9\n\t"
        "vmovdqa %%ymm0, %%ymm10\n\t vmovdqa %%ymm0, %%ymm11\n\t"
        "1:\n\t"
        "vmovdqa (%[p]), %%ymm12\n\t"
        "vmovdqa 32(%[p]), %%ymm13\n\t"
        KX_RL_TBL_PIXEL("64", "ymm0", "ymm1") KX_RL_TBL_PIXEL("66", "ymm2", "ymm3")
        KX_RL_TBL_PIXEL("68", "ymm4", "ymm5") KX_RL_TBL_PIXEL("70", "ymm6", "ymm7")
        KX_RL_TBL_PIXEL("72", "ymm8", "ymm9") KX_RL_TBL_PIXEL("74", "ymm10", "ymm11")
        "dec %[n]\n\t"
        "jnz 1b\n\t"
        // Sum all byte counters (so nothing is dead) into lanes.
        "vpaddb %%ymm1, %%ymm0, %%ymm0\n\t vpaddb %%ymm3, %%ymm2, %%ymm2\n\t"
        "vpaddb %%ymm5, %%ymm4, %%ymm4\n\t vpaddb %%ymm7, %%ymm6, %%ymm6\n\t"
        "vpaddb %%ymm9, %%ymm8, %%ymm8\n\t vpaddb %%ymm11, %%ymm10, %%ymm10\n\t"
        "vpxor %%ymm15, %%ymm15, %%ymm15\n\t"
        "vpsadbw %%ymm15, %%ymm0, %%ymm0\n\t vpsadbw %%ymm15, %%ymm2, %%ymm2\n\t"
        "vpsadbw %%ymm15, %%ymm4, %%ymm4\n\t vpsadbw %%ymm15, %%ymm6, %%ymm6\n\t"
        "vpsadbw %%ymm15, %%ymm8, %%ymm8\n\t vpsadbw %%ymm15, %%ymm10, %%ymm10\n\t"
        "vpaddq %%ymm2, %%ymm0, %%ymm0\n\t vpaddq %%ymm6, %%ymm4, %%ymm4\n\t"
        "vpaddq %%ymm10, %%ymm8, %%ymm8\n\t vpaddq %%ymm4, %%ymm0, %%ymm0\n\t"
        "vpaddq %%ymm8, %%ymm0, %%ymm0\n\t"
        "vmovdqa %%ymm0, (%[out])\n\t"
        : [n] "+r"(n)
        : [p] "r"(kTableOperands), [tb] "r"(kRooflineTables), [out] "r"(lanes)
        : "cc", "memory", "rax", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
          "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    total += lanes[0] + lanes[1] + lanes[2] + lanes[3];
    done += 63;
  }
  *sink += total;
  return static_cast<double>(done) * 6.0 * 64.0 * 4.0;
}

#undef KX_RL_TBL_PIXEL

namespace {

// Fixed pseudo-random operands for the table mixes (a linear congruential generator).
struct OperandRandom {
  std::uint32_t x;
  int operator()() {
    x = x * 1103515245u + 12345u;
    return static_cast<int>(x >> 16);
  }
};

}  // namespace

// The channel-lane PAIR table tile's mix, by running that tile itself (gemm_tile_pair_x64,
// three slots = 6 pixels x 64 channels, byte counters) on one 63-step run with every operand
// in L1: per slot and 3 steps, 3 offset loads, 3 table loads, 6 vpshufb with the weights as
// memory operands, 4 byte adds and the 6 ops that fold the chunk into the slot's counters; then
// the counters' recovery and stores once per 63 steps, as in the kernel. Two output pixels per
// vpshufb: ~950 G bit-MACs/s per core on Zen 3 against ~645 for the one-pixel table mix.
namespace {

// Operands of both pair tile mixes: two 64-channel weight blocks of 63 steps (the x64 tile
// reads the first) and three slots' pair-table offsets (the x128 tile reads the first).
struct PairOperands {
  alignas(64) std::uint8_t weights[2][63 * 64];
  alignas(64) std::uint16_t offsets[3][64];
};

const PairOperands& pair_operands() {
  static const PairOperands* const ops = [] {
    auto* o = new PairOperands;
    OperandRandom next{12345};
    for (auto& block : o->weights) {
      for (auto& w : block) w = static_cast<std::uint8_t>(next() & 15);
    }
    for (auto& slot : o->offsets) {
      for (auto& e : slot) e = static_cast<std::uint16_t>((next() & 255) * 32);
    }
    return o;
  }();
  return *ops;
}

}  // namespace

double roofline_loop_avx2_pair(long long iterations, unsigned long long* sink) {
  const PairOperands& ops = pair_operands();
  const std::uint16_t* const bases[3] = {ops.offsets[0], ops.offsets[1], ops.offsets[2]};
  const TableRun run[1] = {{0, 63 * 2, 2}};
  alignas(32) __m256i counts[12];
  std::uint64_t total = 0;
  long long done = 0;
  while (done < iterations) {
    gemm_tile_pair_x64<3, true>(bases, run, ops.weights[0], kPairTables.v, counts);
    total += static_cast<std::uint64_t>(_mm256_extract_epi8(counts[0], 0));
    done += 63;
  }
  *sink += total;
  return static_cast<double>(done) * 3.0 * 2.0 * 64.0 * 4.0;
}

// The PAIR table tile over 128 channels (gemm_seg_pair_x128, the kernel's tile for convs with
// more than 64 output channels, run as is): one slot of two pixels, two 64-channel weight
// blocks, one 63-step segment per call with the counters' recovery and the uint16 sums added
// in memory, as in every segment of the kernel but the first. Per 3 steps: 3 offset loads, 3
// table loads, 12 vpshufb, 8 byte adds and 12 fold ops for 2 x 128 outputs, i.e. half the
// offset and table loads per vpshufb of the 3-slot x64 tile.
double roofline_loop_avx2_pair128(long long iterations, unsigned long long* sink) {
  const PairOperands& ops = pair_operands();
  const TableRun segment[1] = {{0, 63 * 2, 3}};
  alignas(32) __m256i sums[2][8] = {};
  long long done = 0;
  while (done < iterations) {
    const TableRun* run = segment;
    const std::uint8_t* wk = ops.weights[0];
    gemm_seg_pair_x128<false>(ops.offsets[0], run, wk, sizeof(ops.weights[0]), kPairTables.v, sums[0], sums[1]);
    done += 63;
  }
  *sink += static_cast<std::uint64_t>(_mm256_extract_epi16(sums[0][0], 0));
  return static_cast<double>(done) * 2.0 * 128.0 * 4.0;
}

// The CHANNEL-PAIR table mix: the pair tile with the roles of input and weights swapped. The
// table comes from the weights: per step, one 16-byte table for two output channels c, c' (entry
// i = popcount(i XOR w_c) + 16 * popcount(i XOR w_c'), repeated in both lanes), and the indices
// are 32 output pixels' input nibbles at that step, one byte each, read as vpshufb's memory
// operand. Five such pixel vectors share each table, so per 3 steps and 5 x 32 pixels x 2
// channels there are 3 table loads, 15 vpshufb (with their index loads), 10 byte adds and 15
// ops that fold each chunk into two byte counters as in the pair tile (L += sum, H += sum >> 4),
// the shift done as vpmulhuw by 4096 (the same value) so that it runs beside the vpshufb
// instead of on their two pipes. That is 45 vector ALU ops per 3 * 1280 bit-MACs, within ~5% of
// what four vector pipes allow on Zen 3. There the loop alone runs at ~1040 G bit-MACs/s per
// core and this mix (with its recovery every 63 steps) at ~1000, against ~935 for the pair
// tile's mix, whose loop takes ~15.8 cycles for its 48 vector ALU ops per chunk (12 would be
// the same bound) with twice the loads and more macro-ops per vpshufb. No kernel
// issues it (a conv would need its 32 pixels' nibbles as aligned vectors, i.e. an im2col of
// nibble planes, and its per-channel counts transposed to NHWC; docs/SPEED.md has the
// estimate), but the roofline is the best rate the CPU reaches, so it counts. One pass is 63 steps (21 chunks;
// each nibble count <= 252), then the counters are recovered exactly, as in the kernel.
namespace {

constexpr int kDualPixelVectors = 5;
constexpr int kDualSteps = 63;

struct DualOperands {
  alignas(64) std::uint8_t tables[kDualSteps][32];
  alignas(64) std::uint8_t indices[kDualSteps][kDualPixelVectors][32];
  std::uint8_t weights[kDualSteps][2];
};

const DualOperands& dual_operands() {
  static const DualOperands* const ops = [] {
    auto* o = new DualOperands;
    OperandRandom next{271828};
    for (int k = 0; k < kDualSteps; ++k) {
      const int lo = next() & 15, hi = next() & 15;
      o->weights[k][0] = static_cast<std::uint8_t>(lo);
      o->weights[k][1] = static_cast<std::uint8_t>(hi);
      // The pair tile's table (16 lo + hi) is this table: popcount(i ^ lo) + 16 popcount(i ^ hi).
      std::memcpy(o->tables[k], kPairTables.v + 32 * (16 * lo + hi), 32);
      for (auto& vector : o->indices[k]) {
        for (auto& e : vector) e = static_cast<std::uint8_t>(next() & 15);
      }
    }
    return o;
  }();
  return *ops;
}

// Pixel vector R at chunk step S: indices[k + S][R] with k the chunk's first step.
#define KX_RL_DUAL_IX(R, S) #S "*160+" #R "*32"
#define KX_RL_DUAL_VECTOR(R, L, H)                                     \
  "vpshufb " KX_RL_DUAL_IX(R, 0) "(%[ix]), %%ymm0, %%ymm13\n\t"        \
  "vpshufb " KX_RL_DUAL_IX(R, 1) "(%[ix]), %%ymm1, %%ymm14\n\t"        \
  "vpaddb %%ymm14, %%ymm13, %%ymm13\n\t"                               \
  "vpshufb " KX_RL_DUAL_IX(R, 2) "(%[ix]), %%ymm2, %%ymm14\n\t"        \
  "vpaddb %%ymm14, %%ymm13, %%ymm13\n\t"                               \
  "vpaddb %%ymm13, %%" L ", %%" L "\n\t"                               \
  "vpmulhuw %%ymm15, %%ymm13, %%ymm13\n\t"                             \
  "vpaddb %%ymm13, %%" H ", %%" H "\n\t"
// L, H -> exact lo in L, hi in H (the pair tile's recovery; ymm13 temporary).
#define KX_RL_DUAL_RECOVER(L, H) KX_PAIR_RECOVER(L, H, "ymm13")

// One 63-step pass: counts[2 r] = lo (channel c), counts[2 r + 1] = hi (channel c') of pixel
// vector r, per byte.
void dual_pass(const DualOperands& ops, __m256i* counts) {
  static const std::uint16_t kShiftBy4 = 4096;
  const std::uint8_t* tb = ops.tables[0];
  const std::uint8_t* ix = ops.indices[0][0];
  const std::uint8_t* const tb_end = tb + sizeof(ops.tables);
  __asm__ volatile(
      "vpbroadcastw %[mul], %%ymm15\n\t"
      "vpxor %%ymm3, %%ymm3, %%ymm3\n\t"
      "vmovdqa %%ymm3, %%ymm4\n\t vmovdqa %%ymm3, %%ymm5\n\t vmovdqa %%ymm3, %%ymm6\n\t"
      "vmovdqa %%ymm3, %%ymm7\n\t vmovdqa %%ymm3, %%ymm8\n\t vmovdqa %%ymm3, %%ymm9\n\t"
      "vmovdqa %%ymm3, %%ymm10\n\t vmovdqa %%ymm3, %%ymm11\n\t vmovdqa %%ymm3, %%ymm12\n\t"
      ".p2align 5\n\t"
      "1:\n\t"
      "vmovdqa (%[tb]), %%ymm0\n\t"
      "vmovdqa 32(%[tb]), %%ymm1\n\t"
      "vmovdqa 64(%[tb]), %%ymm2\n\t"
      KX_RL_DUAL_VECTOR(0, "ymm3", "ymm4") KX_RL_DUAL_VECTOR(1, "ymm5", "ymm6")
      KX_RL_DUAL_VECTOR(2, "ymm7", "ymm8") KX_RL_DUAL_VECTOR(3, "ymm9", "ymm10")
      KX_RL_DUAL_VECTOR(4, "ymm11", "ymm12")
      "add $96, %[tb]\n\t"
      "add $480, %[ix]\n\t"
      "cmp %[tb_end], %[tb]\n\t"
      "jb 1b\n\t"
      KX_RL_DUAL_RECOVER("ymm3", "ymm4") KX_RL_DUAL_RECOVER("ymm5", "ymm6")
      KX_RL_DUAL_RECOVER("ymm7", "ymm8") KX_RL_DUAL_RECOVER("ymm9", "ymm10")
      KX_RL_DUAL_RECOVER("ymm11", "ymm12")
      "vmovdqa %%ymm3, (%[out])\n\t vmovdqa %%ymm4, 32(%[out])\n\t"
      "vmovdqa %%ymm5, 64(%[out])\n\t vmovdqa %%ymm6, 96(%[out])\n\t"
      "vmovdqa %%ymm7, 128(%[out])\n\t vmovdqa %%ymm8, 160(%[out])\n\t"
      "vmovdqa %%ymm9, 192(%[out])\n\t vmovdqa %%ymm10, 224(%[out])\n\t"
      "vmovdqa %%ymm11, 256(%[out])\n\t vmovdqa %%ymm12, 288(%[out])\n\t"
      : [tb] "+r"(tb), [ix] "+r"(ix)
      : [tb_end] "r"(tb_end), [mul] "m"(kShiftBy4), [msk] "r"(kPairRecoverMask), [out] "r"(counts)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
        "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

#undef KX_RL_DUAL_RECOVER
#undef KX_RL_DUAL_VECTOR
#undef KX_RL_DUAL_IX

}  // namespace

double roofline_loop_avx2_dual(long long iterations, unsigned long long* sink) {
  const DualOperands& ops = dual_operands();
  alignas(32) __m256i counts[2 * kDualPixelVectors];
  std::uint64_t total = 0;
  long long done = 0;
  while (done < iterations) {
    dual_pass(ops, counts);
    total += static_cast<std::uint64_t>(_mm256_extract_epi8(counts[0], 0));
    done += kDualSteps;
  }
  *sink += total;
  return static_cast<double>(done) * kDualPixelVectors * 32.0 * 2.0 * 4.0;
}

bool roofline_dual_mix_matches_popcounts() {
  const DualOperands& ops = dual_operands();
  alignas(32) std::uint8_t counts[2 * kDualPixelVectors][32];
  dual_pass(ops, reinterpret_cast<__m256i*>(counts));
  for (int r = 0; r < kDualPixelVectors; ++r) {
    for (int p = 0; p < 32; ++p) {
      int lo = 0, hi = 0;
      for (int k = 0; k < kDualSteps; ++k) {
        lo += __builtin_popcount(ops.indices[k][r][p] ^ ops.weights[k][0]);
        hi += __builtin_popcount(ops.indices[k][r][p] ^ ops.weights[k][1]);
      }
      if (counts[2 * r][p] != lo || counts[2 * r + 1][p] != hi) return false;
    }
  }
  return true;
}

#undef KX_RL_STEP
#undef KX_RL_PLANAR_STEP
#undef KX_RL_SCALAR_STEP
#undef KX_RL_PLANAR_TILE

}  // namespace internal
}  // namespace keras_xnor
