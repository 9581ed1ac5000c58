// AVX-512 conv driver (AVX512F + AVX512_VPOPCNTDQ), the channel-lane design of
// xnor_conv2d_channel_lanes_avx2.cc without its nibble tables: output channels in lanes (16
// per zmm), VPOPCNTD on the XOR of a broadcast input word with 16 channels' weight words.
// Tile: 6 output pixels x 64 channels (24 accumulators, 4 weight vectors, 1 broadcast), the
// output stage fused. Used instead of the AVX2 channel-lane driver when the CPU has both
// features (conv2d_avx2_driver); bitwise the same output: the same packing (mean |x| from
// pack_rows_range_avx2), K summed in the same order, the same float output stage.
//
// The input is sign-packed into a zero-padded image [batch][hp][wp][words] read in place (a
// receptive field is a list of runs from its corner), in the conv pass: each task range packs
// the rows it reads that no other range has claimed (no packing pass, fork / join, of its own).
// A padded tap has input bits 0, so its XOR adds the tap's weight popcount: the output stage
// subtracts it (tap_pop), and n_valid counts only the real taps, so the padded tap contributes
// 0 to the dot.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <new>

#include "custom_ops/core/xnor_kernels.h"

// GCC 12 warns about the _mm512_undefined_* placeholders inside its own AVX-512 intrinsics
// (GCC bug 105593), once per inlined call.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace keras_xnor {
namespace internal {
namespace {

constexpr int kLanes = 16;          // channels per vector
constexpr int kBlockLanes = 64;     // channels per weight block (kVectors vectors)
constexpr int kVectors = kBlockLanes / kLanes;
constexpr int kTilePixels = 6;      // pixels per tile: 6 x 4 accumulators
constexpr int kBlockPixels = 24;    // pixels per work block (large outputs)
constexpr int kSmallOutput = 512;   // below: one-tile blocks, shared out evenly
constexpr std::int64_t kTargetTasks = 64;

// A stretch of consecutive packed words of a receptive field: `length` words from the pixel's
// corner + in_offset, against weight steps w_step .. w_step + length - 1.
struct Run {
  std::int64_t in_offset;
  int w_step;
  int length;
};

// A block of consecutive output pixels (flattened n, oh, ow).
struct PixelBlock {
  std::int64_t first = 0;
  int count = 0;
  const std::uint32_t* base[kBlockPixels];  // corner of the receptive field, padded image
  float k[kBlockPixels];
  std::int32_t n_valid[kBlockPixels];
  std::uint16_t row_pad[kBlockPixels];      // kernel rows / columns in the padding (bit i)
  std::uint16_t col_pad[kBlockPixels];
};
static_assert(kMaxKernelSize <= 16, "padding masks are 16 bits");

struct Geometry {
  int words = 0, hp = 0, wp = 0;
  const std::uint32_t* image = nullptr;
  const float* mean_pad = nullptr;      // null without K
  const std::uint16_t* row_mask = nullptr;  // [out_h]
  const std::uint16_t* col_mask = nullptr;  // [out_w]
  const std::uint16_t* row_valid = nullptr;  // [out_h]: kernel rows inside the input
  const std::uint16_t* col_valid = nullptr;  // [out_w]
};

void describe_block(const Conv2DShape& s, const Geometry& g, std::int64_t first, int count,
                    PixelBlock* __restrict blk) {
  blk->first = first;
  blk->count = count;
  const std::int64_t hw = static_cast<std::int64_t>(s.out_h) * s.out_w;
  std::int64_t n = first / hw;
  const int rem = static_cast<int>(first % hw);
  int oh = rem / s.out_w, ow = rem % s.out_w;
  const std::int64_t step = static_cast<std::int64_t>(s.stride_w) * g.words;
  // The AVX2 driver's K: padded mean |x| summed over all taps in (kh, kw) order (padded taps
  // add +0.0), then divided by the tap count; 16 pixels of one output row at stride 1 at once
  // (the same additions, lane by lane).
  const float divisor = static_cast<float>(s.k_h * s.k_w);
  // One output row's stretch at a time: its corners step by stride_w pixels.
  for (int j = 0; j < count;) {
    const int len = std::min(count - j, s.out_w - ow);
    const std::int64_t corner = (n * g.hp + static_cast<std::int64_t>(oh) * s.stride_h) * g.wp +
                                static_cast<std::int64_t>(ow) * s.stride_w;
    const std::uint32_t* base = g.image + corner * g.words;
    const std::uint16_t rp = g.row_mask[oh];
    const std::int32_t rv = g.row_valid[oh] * s.in_c;
    const std::uint16_t* cm = g.col_mask + ow;
    const std::uint16_t* cv = g.col_valid + ow;
    for (int e = 0; e < len; ++e) {
      blk->base[j + e] = base + e * step;
      blk->row_pad[j + e] = rp;
      blk->col_pad[j + e] = cm[e];
      blk->n_valid[j + e] = rv * cv[e];
    }
    if (g.mean_pad == nullptr) {
      for (int e = 0; e < len; ++e) blk->k[j + e] = 1.0f;
    } else {
      const float* m0 = g.mean_pad + corner;
      for (int e = 0; e < len;) {
        const int l = std::min(16, len - e);
        if (s.stride_w == 1 && l > 1) {
          const __mmask16 m = static_cast<__mmask16>((1u << l) - 1);
          __m512 sum = _mm512_setzero_ps();
          for (int i = 0; i < s.k_h; ++i) {
            const float* row = m0 + e + static_cast<std::int64_t>(i) * s.dilation_h * g.wp;
            for (int q = 0; q < s.k_w; ++q) {
              const float* tap = row + static_cast<std::int64_t>(q) * s.dilation_w;
              sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(m, tap));
            }
          }
          _mm512_mask_storeu_ps(blk->k + j + e, m, _mm512_div_ps(sum, _mm512_set1_ps(divisor)));
          e += l;
          continue;
        }
        const float* t0 = m0 + static_cast<std::int64_t>(e) * s.stride_w;
        float sum = 0.0f;
        for (int i = 0; i < s.k_h; ++i) {
          const float* row = t0 + static_cast<std::int64_t>(i) * s.dilation_h * g.wp;
          for (int q = 0; q < s.k_w; ++q) sum += row[static_cast<std::int64_t>(q) * s.dilation_w];
        }
        blk->k[j + e] = sum / divisor;
        ++e;
      }
    }
    j += len;
    ow = 0;
    if (++oh == s.out_h) {
      oh = 0;
      ++n;
    }
  }
}

// Popcounts of NP pixels (bases) x NV vectors of one 64-channel weight block (w: step 0 of
// the block, 64 words per step) over the runs of a receptive field.
template <int NP, int NV>
__attribute__((always_inline)) inline void vpopcnt_tile(const std::uint32_t* const* bases,
                                                        const Run* runs, int nruns,
                                                        const std::uint32_t* w,
                                                        __m512i (&acc)[NP][NV]) {
#pragma GCC unroll 8
  for (int p = 0; p < NP; ++p) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_setzero_si512();
  }
  for (int r = 0; r < nruns; ++r) {
    const std::uint32_t* in[NP];
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) in[p] = bases[p] + runs[r].in_offset;
    const std::uint32_t* wr = w + static_cast<std::int64_t>(runs[r].w_step) * kBlockLanes;
    const int length = runs[r].length;
    for (int k = 0; k < length; ++k, wr += kBlockLanes) {
      __m512i wv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) wv[v] = _mm512_load_si512(wr + v * kLanes);
#pragma GCC unroll 8
      for (int p = 0; p < NP; ++p) {
        const __m512i a = _mm512_set1_epi32(static_cast<int>(in[p][k]));
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          acc[p][v] = _mm512_add_epi32(acc[p][v], _mm512_popcnt_epi32(_mm512_xor_si512(a, wv[v])));
        }
      }
    }
  }
}

// vpopcnt_tile<kTilePixels, NV> with named accumulators: GCC keeps the array version's 24
// accumulators partly on the stack (a load and a store per update), these in registers.
#define KX_VP_PIXEL(p)                                                                    \
  {                                                                                       \
    const __m512i x = _mm512_set1_epi32(static_cast<int>(in##p[k]));                      \
    c##p##0 = _mm512_add_epi32(c##p##0, _mm512_popcnt_epi32(_mm512_xor_si512(x, w0)));    \
    if constexpr (NV > 1) {                                                               \
      c##p##1 = _mm512_add_epi32(c##p##1, _mm512_popcnt_epi32(_mm512_xor_si512(x, w1)));  \
    }                                                                                     \
    if constexpr (NV > 2) {                                                               \
      c##p##2 = _mm512_add_epi32(c##p##2, _mm512_popcnt_epi32(_mm512_xor_si512(x, w2)));  \
    }                                                                                     \
    if constexpr (NV > 3) {                                                               \
      c##p##3 = _mm512_add_epi32(c##p##3, _mm512_popcnt_epi32(_mm512_xor_si512(x, w3)));  \
    }                                                                                     \
  }
#define KX_VP_DECLARE(p)                                                                  \
  __m512i c##p##0 = _mm512_setzero_si512(), c##p##1 = c##p##0, c##p##2 = c##p##0,         \
          c##p##3 = c##p##0
#define KX_VP_STORE(p)   \
  acc[p][0] = c##p##0;   \
  if (NV > 1) acc[p][1 % NV] = c##p##1; \
  if (NV > 2) acc[p][2 % NV] = c##p##2; \
  if (NV > 3) acc[p][3 % NV] = c##p##3

template <int NV>
__attribute__((noinline)) void vpopcnt_tile6(const std::uint32_t* const* bases,
                                                         const Run* runs, int nruns,
                                                         const std::uint32_t* w,
                                                         __m512i (&acc)[kTilePixels][NV]) {
  static_assert(kTilePixels == 6, "six named pixels");
  KX_VP_DECLARE(0);
  KX_VP_DECLARE(1);
  KX_VP_DECLARE(2);
  KX_VP_DECLARE(3);
  KX_VP_DECLARE(4);
  KX_VP_DECLARE(5);
  for (int r = 0; r < nruns; ++r) {
    const std::int64_t off = runs[r].in_offset;
    const std::uint32_t* in0 = bases[0] + off;
    const std::uint32_t* in1 = bases[1] + off;
    const std::uint32_t* in2 = bases[2] + off;
    const std::uint32_t* in3 = bases[3] + off;
    const std::uint32_t* in4 = bases[4] + off;
    const std::uint32_t* in5 = bases[5] + off;
    const std::uint32_t* wr = w + static_cast<std::int64_t>(runs[r].w_step) * kBlockLanes;
    const int length = runs[r].length;
    for (int k = 0; k < length; ++k, wr += kBlockLanes) {
      const __m512i w0 = _mm512_load_si512(wr);
      const __m512i w1 = NV > 1 ? _mm512_load_si512(wr + kLanes) : w0;
      const __m512i w2 = NV > 2 ? _mm512_load_si512(wr + 2 * kLanes) : w0;
      const __m512i w3 = NV > 3 ? _mm512_load_si512(wr + 3 * kLanes) : w0;
      KX_VP_PIXEL(0)
      KX_VP_PIXEL(1)
      KX_VP_PIXEL(2)
      KX_VP_PIXEL(3)
      KX_VP_PIXEL(4)
      KX_VP_PIXEL(5)
    }
  }
  KX_VP_STORE(0);
  KX_VP_STORE(1);
  KX_VP_STORE(2);
  KX_VP_STORE(3);
  KX_VP_STORE(4);
  KX_VP_STORE(5);
}
#undef KX_VP_PIXEL
#undef KX_VP_DECLARE
#undef KX_VP_STORE

// What the output stage needs for one 64-channel block.
struct OutputStage {
  const float* alpha;           // + oc0, padded to whole blocks
  const float* bias;            // + oc0, padded; -0.0 without a bias
  const std::int32_t* tap_pop;  // + oc0; [tap][oc_pad]
  int oc_pad;
  __mmask16 last_mask;          // lanes of the block's last vector that exist
  __mmask16 relu;               // all lanes with ReLU, else none
  int k_h, k_w;
  float* out;                   // pixel blk.first, channel oc0
  int out_c;
};

// out = (dot * alpha) * K + bias (ReLU) for pixels q0 .. q0 + NP - 1 of the block: dot =
// n_valid - 2 * (pop - sum of the padded taps' weight popcounts). The arithmetic and its
// order are finish_tile's (xnor_conv2d_channel_lanes_avx2.cc), so the floats are the same.
template <int NP, int NV>
__attribute__((always_inline)) inline void finish_tile(__m512i (&acc)[NP][NV],
                                                       const PixelBlock& blk, int q0,
                                                       const OutputStage& st) {
  // No branches on the flags: without K, k is 1.0 (r * 1.0f = r); without a bias, it is -0.0
  // (r + -0.0f = r, -0.0 included); without ReLU, the max is masked off.
  __m512 alpha[NV], bias[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    alpha[v] = _mm512_loadu_ps(st.alpha + v * kLanes);
    bias[v] = _mm512_loadu_ps(st.bias + v * kLanes);
  }
  const __m512 zero = _mm512_setzero_ps();
  const __mmask16 relu = st.relu, last_mask = st.last_mask;
  const bool last_full = last_mask == 0xffff;
#pragma GCC unroll 8
  for (int p = 0; p < NP; ++p) {
    const int j = q0 + p;
    const __m512i nv = _mm512_set1_epi32(blk.n_valid[j]);
    const int rp = blk.row_pad[j], cp = blk.col_pad[j];
    if ((rp | cp) != 0) {
      for (int i = 0; i < st.k_h; ++i) {
        for (int q = 0; q < st.k_w; ++q) {
          if (((rp >> i) & 1) == 0 && ((cp >> q) & 1) == 0) continue;
          const std::int32_t* t =
              st.tap_pop + static_cast<std::int64_t>(i * st.k_w + q) * st.oc_pad;
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) {
            acc[p][v] = _mm512_sub_epi32(acc[p][v], _mm512_loadu_si512(t + v * kLanes));
          }
        }
      }
    }
    const __m512 kv = _mm512_set1_ps(blk.k[j]);
    float* out = st.out + static_cast<std::int64_t>(j) * st.out_c;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __m512i dot = _mm512_sub_epi32(nv, _mm512_add_epi32(acc[p][v], acc[p][v]));
      __m512 r = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), alpha[v]);
      r = _mm512_mul_ps(r, kv);
      // No FMA contraction of the multiply and the bias add (this file is built with FMA).
      __asm__("" : "+v"(r));
      r = _mm512_add_ps(r, bias[v]);
      r = _mm512_mask_max_ps(r, relu, r, zero);
      if (v < NV - 1 || last_full) {
        _mm512_storeu_ps(out + v * kLanes, r);
      } else {
        _mm512_mask_storeu_ps(out + v * kLanes, last_mask, r);
      }
    }
  }
}

// Tiles of up to kTilePixels pixels over the block, NV vectors of channels.
template <int NV>
void run_block(const PixelBlock& blk, const Run* runs, int nruns, const std::uint32_t* w,
               const OutputStage& st) {
  int q0 = 0;
  for (; q0 + kTilePixels <= blk.count; q0 += kTilePixels) {
    __m512i acc[kTilePixels][NV];
    vpopcnt_tile6<NV>(blk.base + q0, runs, nruns, w, acc);
    finish_tile<kTilePixels, NV>(acc, blk, q0, st);
  }
  const auto rest = [&](auto np_tag) {
    constexpr int NP = decltype(np_tag)::value;
    __m512i acc[NP][NV];
    vpopcnt_tile<NP, NV>(blk.base + q0, runs, nruns, w, acc);
    finish_tile<NP, NV>(acc, blk, q0, st);
  };
  switch (blk.count - q0) {
    case 5: rest(std::integral_constant<int, 5>()); break;
    case 4: rest(std::integral_constant<int, 4>()); break;
    case 3: rest(std::integral_constant<int, 3>()); break;
    case 2: rest(std::integral_constant<int, 2>()); break;
    case 1: rest(std::integral_constant<int, 1>()); break;
    default: break;
  }
}

// Writes taps of 64-channel block b of the layout (vpopcnt_filter_words) and their weight
// popcounts (tap_pop [tap][oc_pad]); channels past out_c are 0.
void make_filter_block(const Conv2DShape& s, const std::uint32_t* filter, std::int64_t b,
                       int tap, std::uint32_t* layout, std::int32_t* tap_pop) {
  const int words = packed_words(s.in_c), taps = s.k_h * s.k_w;
  const int oc_pad = (s.out_c + kBlockLanes - 1) / kBlockLanes * kBlockLanes;
  std::uint32_t* dst = layout + (b * taps + tap) * static_cast<std::int64_t>(words) * kBlockLanes;
  for (int c = 0; c < kBlockLanes; ++c) {
    const std::int64_t oc = b * kBlockLanes + c;
    if (oc < s.out_c) {
      const std::uint32_t* src = filter + (oc * taps + tap) * words;
      for (int q = 0; q < words; ++q) dst[q * kBlockLanes + c] = src[q];
    } else {
      for (int q = 0; q < words; ++q) dst[q * kBlockLanes + c] = 0;
    }
  }
  for (int v = 0; v < kVectors; ++v) {
    __m512i pop = _mm512_setzero_si512();
    for (int q = 0; q < words; ++q) {
      const __m512i wq = _mm512_load_si512(dst + q * kBlockLanes + v * kLanes);
      pop = _mm512_add_epi32(pop, _mm512_popcnt_epi32(wq));
    }
    _mm512_storeu_si512(
        tap_pop + static_cast<std::int64_t>(tap) * oc_pad + b * kBlockLanes + v * kLanes, pop);
  }
}

}  // namespace

void prepare_vpopcnt_filter_avx512(const Conv2DShape& s, const PackedWord* filter,
                                   std::uint32_t* layout, std::int32_t* tap_pop,
                                   const ParallelFor& parallel_for) {
  const int blocks = (s.out_c + kBlockLanes - 1) / kBlockLanes;
  const int taps = s.k_h * s.k_w;
  const std::int64_t cost = static_cast<std::int64_t>(packed_words(s.in_c)) * kBlockLanes * 2;
  const std::int64_t units = static_cast<std::int64_t>(blocks) * taps;
  parallel_for(units, cost, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t u = begin; u < end; ++u) {
      make_filter_block(s, reinterpret_cast<const std::uint32_t*>(filter), u / taps,
                        static_cast<int>(u % taps), layout, tap_pop);
    }
  });
}

bool conv2d_vpopcnt_avx512(const ConvArgs& a, const ParallelFor& parallel_for) {
  const Conv2DShape& s = a.shape;
  const int words = packed_words(s.in_c);
  const int taps = s.k_h * s.k_w;
  const bool same = s.padding == Padding::kSame;
  const int oc_blocks = (s.out_c + kBlockLanes - 1) / kBlockLanes;
  const int oc_pad = oc_blocks * kBlockLanes;

  // Filter layout and tap popcounts (prepared, or made per call), then alpha / bias padded to
  // whole blocks: one scratch allocation, carved up.
  const bool prepared = a.vpopcnt_filter != nullptr;
  const std::size_t layout_words = prepared ? 0 : vpopcnt_filter_words(s);
  const std::size_t tp_words = prepared ? 0 : vpopcnt_tap_pop_words(s);
  auto* scratch = static_cast<std::uint32_t*>(thread_scratch(
      (layout_words + tp_words + 2 * static_cast<std::size_t>(oc_pad)) * 4, kScratchFilterT));
  if (scratch == nullptr) return false;
  const std::uint32_t* layout = prepared ? a.vpopcnt_filter : scratch;
  const std::int32_t* tap_pop =
      prepared ? a.vpopcnt_tap_pop : reinterpret_cast<std::int32_t*>(scratch + layout_words);
  float* alpha = reinterpret_cast<float*>(scratch + layout_words + tp_words);
  float* bias = alpha + oc_pad;
  std::copy(a.alpha, a.alpha + s.out_c, alpha);
  std::fill(alpha + s.out_c, alpha + oc_pad, 0.0f);
  if (a.bias != nullptr) std::copy(a.bias, a.bias + s.out_c, bias);
  std::fill(bias + (a.bias != nullptr ? s.out_c : 0), bias + oc_pad, -0.0f);

  // The zero-padded packed image and its mean |x| (K).
  const int span_h = (s.k_h - 1) * s.dilation_h + 1, span_w = (s.k_w - 1) * s.dilation_w + 1;
  const int pad_h = same ? std::max((s.out_h - 1) * s.stride_h + span_h - s.in_h, 0) : 0;
  const int pad_w = same ? std::max((s.out_w - 1) * s.stride_w + span_w - s.in_w, 0) : 0;
  const int hp = s.in_h + pad_h, wp = s.in_w + pad_w;
  const int pad_top = s.pad_top, pad_left = s.pad_left;
  const int pad_bottom = pad_h - pad_top, pad_right = pad_w - pad_left;
  const std::int64_t padded_pixels = static_cast<std::int64_t>(s.batch) * hp * wp;
  auto* image = static_cast<std::uint32_t*>(
      thread_scratch(static_cast<std::size_t>(padded_pixels) * words * 4, kScratchPlanar));
  float* mean_pad = nullptr;
  if (a.use_k) {
    mean_pad = static_cast<float*>(
        thread_scratch(static_cast<std::size_t>(padded_pixels) * 4, kScratchMeanAbsPadded));
  }
  if (image == nullptr || (a.use_k && mean_pad == nullptr)) return false;

  // Per output row / column: the kernel rows / columns that fall in the padding; per input row:
  // whether any receptive field reads it (a stride beyond the kernel span skips rows).
  // Then one state per input row (image, row): 0 not packed, 1 being packed, 2 packed.
  const std::int64_t pack_units = static_cast<std::int64_t>(s.batch) * s.in_h;
  const std::size_t mask_bytes = (2 * (static_cast<std::size_t>(s.out_h) + s.out_w) + s.in_h) * 2;
  auto* masks = static_cast<std::uint16_t*>(
      thread_scratch(mask_bytes + static_cast<std::size_t>(pack_units), kScratchPadClasses));
  if (masks == nullptr) return false;
  auto* row_state =
      reinterpret_cast<std::atomic<std::uint8_t>*>(reinterpret_cast<char*>(masks) + mask_bytes);
  for (std::int64_t u = 0; u < pack_units; ++u) new (row_state + u) std::atomic<std::uint8_t>(0);
  std::uint16_t* row_mask = masks;
  std::uint16_t* col_mask = masks + s.out_h;
  std::uint16_t* row_valid = col_mask + s.out_w;
  std::uint16_t* col_valid = row_valid + s.out_h;
  std::uint16_t* row_read = col_valid + s.out_w;
  std::fill(row_read, row_read + s.in_h, 0);
  for (int oh = 0; oh < s.out_h; ++oh) {
    int m = 0;
    for (int i = 0; i < s.k_h; ++i) {
      const std::int64_t r = static_cast<std::int64_t>(oh) * s.stride_h +
                             static_cast<std::int64_t>(i) * s.dilation_h - pad_top;
      if (r < 0 || r >= s.in_h) {
        m |= 1 << i;
      } else {
        row_read[r] = 1;
      }
    }
    row_mask[oh] = static_cast<std::uint16_t>(m);
    row_valid[oh] = static_cast<std::uint16_t>(s.k_h - __builtin_popcount(m));
  }
  for (int ow = 0; ow < s.out_w; ++ow) {
    int m = 0;
    for (int q = 0; q < s.k_w; ++q) {
      const std::int64_t c = static_cast<std::int64_t>(ow) * s.stride_w +
                             static_cast<std::int64_t>(q) * s.dilation_w - pad_left;
      if (c < 0 || c >= s.in_w) m |= 1 << q;
    }
    col_mask[ow] = static_cast<std::uint16_t>(m);
    col_valid[ow] = static_cast<std::uint16_t>(s.k_w - __builtin_popcount(m));
  }

  // The filter layout when not prepared (per 64-channel block and tap): a pass of its own.
  const std::int64_t filter_units = prepared ? 0 : static_cast<std::int64_t>(oc_blocks) * taps;
  if (filter_units > 0) {
    const std::int64_t filter_cost = static_cast<std::int64_t>(words) * kBlockLanes * 2;
    parallel_for(filter_units, filter_cost, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t u = begin; u < end; ++u) {
        make_filter_block(s, reinterpret_cast<const std::uint32_t*>(a.filter), u / taps,
                          static_cast<int>(u % taps), scratch,
                          reinterpret_cast<std::int32_t*>(scratch + layout_words));
      }
    });
  }

  // Packs input row `unit` (image unit / in_h) into the padded image (sign bits and mean |x|),
  // zeroes the padding columns beside it, and, for the first / last row of an image, the
  // padding rows above / below.
  const auto pack_row = [&](std::int64_t unit) {
    const std::int64_t n = unit / s.in_h;
    const int ih = static_cast<int>(unit % s.in_h);
    if (ih == 0 && pad_top > 0) {
      const std::int64_t z0 = n * hp;  // first padding row above
      std::memset(image + z0 * wp * words, 0, static_cast<std::size_t>(pad_top) * wp * words * 4);
      if (mean_pad != nullptr) {
        std::fill(mean_pad + z0 * wp, mean_pad + (z0 + pad_top) * wp, 0.0f);
      }
    }
    if (ih == s.in_h - 1 && pad_bottom > 0) {
      const std::int64_t z0 = n * hp + pad_top + s.in_h;
      std::memset(image + z0 * wp * words, 0,
                  static_cast<std::size_t>(pad_bottom) * wp * words * 4);
      if (mean_pad != nullptr) {
        std::fill(mean_pad + z0 * wp, mean_pad + (z0 + pad_bottom) * wp, 0.0f);
      }
    }
    if (!row_read[ih]) return;
    const std::int64_t prow = (n * hp + ih + pad_top) * wp;  // first pixel of the padded row
    std::uint32_t* dst = image + prow * words;
    auto* row_bits =
        reinterpret_cast<PackedWord*>(dst + static_cast<std::int64_t>(pad_left) * words);
    pack_rows_range_avx2(a.input + unit * s.in_w * s.in_c, 0, s.in_w, s.in_c, row_bits,
                         mean_pad != nullptr ? mean_pad + prow + pad_left : nullptr);
    if (pad_w > 0) {
      std::memset(dst, 0, static_cast<std::size_t>(pad_left) * words * 4);
      std::memset(dst + static_cast<std::int64_t>(pad_left + s.in_w) * words, 0,
                  static_cast<std::size_t>(pad_right) * words * 4);
      if (mean_pad != nullptr) {
        std::fill(mean_pad + prow, mean_pad + prow + pad_left, 0.0f);
        std::fill(mean_pad + prow + pad_left + s.in_w, mean_pad + prow + wp, 0.0f);
      }
    }
  };
  // The input rows are packed in the conv pass, each by the first task that needs it (see
  // make_once): no pass (and fork / join) of their own. Every input row the receptive fields of
  // output pixels [first, first + count) read, plus the first / last row of the image when they
  // reach into the padding above / below (those rows' units zero it).
  const auto ensure_rows = [&](std::int64_t first, std::int64_t count) {
    const std::int64_t q_end = (first + count - 1) / s.out_w;
    for (std::int64_t q = first / s.out_w; q <= q_end; ++q) {  // flattened (image, output row)
      const std::int64_t n = q / s.out_h;
      const int oh = static_cast<int>(q % s.out_h);
      bool above = false, below = false;
      for (int i = 0; i < s.k_h; ++i) {
        const std::int64_t r = static_cast<std::int64_t>(oh) * s.stride_h +
                               static_cast<std::int64_t>(i) * s.dilation_h - pad_top;
        if (r < 0) {
          above = true;
        } else if (r >= s.in_h) {
          below = true;
        } else {
          const std::int64_t unit = n * s.in_h + r;
          make_once(row_state[unit], [&] { pack_row(unit); });
        }
      }
      if (above) make_once(row_state[n * s.in_h], [&] { pack_row(n * s.in_h); });
      if (below) {
        const std::int64_t unit = n * s.in_h + s.in_h - 1;
        make_once(row_state[unit], [&] { pack_row(unit); });
      }
    }
  };

  // The receptive field as runs from its corner: one per kernel row when its taps are adjacent
  // (dilation_w 1), else one per tap. Weight steps are (tap, word) in order.
  Run runs[kMaxKernelSize * kMaxKernelSize];
  int nruns = 0;
  const bool row_runs = s.dilation_w == 1;
  for (int i = 0; i < s.k_h; ++i) {
    for (int q = 0; q < (row_runs ? 1 : s.k_w); ++q) {
      Run& r = runs[nruns++];
      r.in_offset = (static_cast<std::int64_t>(i) * s.dilation_h * wp +
                     static_cast<std::int64_t>(q) * s.dilation_w) * words;
      r.w_step = (i * s.k_w + q) * words;
      r.length = (row_runs ? s.k_w : 1) * words;
    }
  }

  Geometry g;
  g.words = words;
  g.hp = hp;
  g.wp = wp;
  g.image = image;
  g.mean_pad = mean_pad;
  g.row_mask = row_mask;
  g.col_mask = col_mask;
  g.row_valid = row_valid;
  g.col_valid = col_valid;
  const std::int64_t total = static_cast<std::int64_t>(s.batch) * s.out_h * s.out_w;
  // Few output pixels: one-tile blocks, the pixels shared out evenly (49 = 9 blocks of 5 or 6),
  // so that tasks cost about the same.
  const bool one_tile = total < kSmallOutput;
  const int block_pixels = one_tile ? kTilePixels : kBlockPixels;
  const ConvTiling tiling = plan_tiling(total, block_pixels, s.out_c, kBlockLanes, kTargetTasks);
  const std::int64_t task_cost =
      static_cast<std::int64_t>(block_pixels) * tiling.oc_chunk * taps * words;
  const int out_c = s.out_c;
  float* const output = a.output;
  const std::int64_t step_words = static_cast<std::int64_t>(taps) * words * kBlockLanes;
  // First output pixel of block bi (bi = tiling.blocks: total).
  const auto block_begin = [&](std::int64_t bi) {
    return one_tile ? bi * total / tiling.blocks : std::min(total, bi * block_pixels);
  };
  parallel_for(tiling.tasks, task_cost, [&](std::int64_t begin, std::int64_t end) {
    PixelBlock blk;
    std::int64_t cached = -1;
    OutputStage st;
    st.oc_pad = oc_pad;
    st.relu = static_cast<__mmask16>(a.relu ? 0xffff : 0);
    st.k_h = s.k_h;
    st.k_w = s.k_w;
    st.out_c = out_c;
    // The input rows of all the range's blocks first, in one go: packing them block by block,
    // between tiles, measured about 2% slower at one thread on 64@56.
    const std::int64_t first = block_begin(begin / tiling.oc_chunks);
    ensure_rows(first, block_begin((end - 1) / tiling.oc_chunks + 1) - first);
    for (std::int64_t t = begin; t < end; ++t) {
      const std::int64_t bi = t / tiling.oc_chunks;
      const int chunk = static_cast<int>(t % tiling.oc_chunks);
      if (bi != cached) {
        cached = bi;
        const std::int64_t p0 = block_begin(bi);
        describe_block(s, g, p0, static_cast<int>(block_begin(bi + 1) - p0), &blk);
      }
      const int oc_begin = chunk * tiling.oc_chunk;
      const int oc_end = std::min(out_c, oc_begin + tiling.oc_chunk);
      for (int oc0 = oc_begin; oc0 < oc_end; oc0 += kBlockLanes) {
        const int nc = std::min(kBlockLanes, out_c - oc0);
        st.alpha = alpha + oc0;
        st.bias = bias + oc0;
        st.tap_pop = tap_pop + oc0;
        st.out = output + blk.first * out_c + oc0;
        const int rem = nc % kLanes;
        st.last_mask = static_cast<__mmask16>(rem == 0 ? 0xffff : (1u << rem) - 1);
        const std::uint32_t* w = layout + static_cast<std::int64_t>(oc0 / kBlockLanes) * step_words;
        switch ((nc + kLanes - 1) / kLanes) {
          case 4: run_block<4>(blk, runs, nruns, w, st); break;
          case 3: run_block<3>(blk, runs, nruns, w, st); break;
          case 2: run_block<2>(blk, runs, nruns, w, st); break;
          default: run_block<1>(blk, runs, nruns, w, st); break;
        }
      }
    }
  });
  return true;
}

}  // namespace internal
}  // namespace keras_xnor
