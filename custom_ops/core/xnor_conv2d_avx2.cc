// AVX2 path of the binary conv: sign-pack + mean|x| pass, im2col of the packed input into
// pixel-lane blocks, the xnor_gemm_*_avx2 microkernels, and the fused output stage
//   out = (n_valid - 2 * popcount) * alpha[c] * K + bias[c]  (ReLU if asked).
// SAME borders: a padded tap gets patch bits 0, so its XOR with the weights is the weights and
// the tile's popcount includes popcount(w[c, tap]) for it. The output stage subtracts that
// (a per-call table of per-(channel, tap) weight popcounts, masked per lane to the pixels
// that have the tap padded), and n_valid counts only real taps: the padded tap contributes 0,
// bit-exact with the float simulation. The microkernels never see a mask.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "custom_ops/core/roofline.h"
#include "custom_ops/core/xnor_gemm_avx2.h"
#include "custom_ops/core/xnor_kernels.h"

namespace keras_xnor {
namespace internal {
namespace {

constexpr int kBlock = 16;  // output pixels per im2col block (two 8-lane vectors)
// Dense layers with fewer rows than this use the GEMV kernel (rows would leave lanes empty).
constexpr int kGemvMaxBatch = 8;

// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)): the same order as hsum8 below, so a
// pixel's mean |x| does not depend on whether it was packed alone or in a group of eight
// (results must not depend on how a pool splits the rows).
float hsum(__m256 v) {
  const __m256 t = _mm256_hadd_ps(v, v);
  const __m256 t2 = _mm256_hadd_ps(t, t);
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(t2), _mm256_extractf128_ps(t2, 1)));
}

// Lane j = hsum(v[j]).
__m256 hsum8(const __m256* v) {
  const __m256 h0123 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 h4567 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20),
                       _mm256_permute2f128_ps(h0123, h4567, 0x31));
}

// One block of up to 16 output pixels, im2col'ed.
constexpr int kMaxTaps = kMaxKernelSize * kMaxKernelSize;  // spec.h

struct Block {
  std::int64_t first = 0;  // first output pixel (flattened n, oh, ow)
  int count = 0;           // real pixels in the block
  alignas(32) float k[kBlock];
  alignas(32) std::int32_t n_valid[kBlock];
  // Taps padded for at least one pixel of the block, with the lanes (-1) that have them padded.
  int padded_taps = 0;
  int padded_tap[kMaxTaps];
  alignas(32) std::int32_t padded_lanes[kMaxTaps][kBlock];
};

struct Geometry {
  const Conv2DShape* s;
  int in_words, taps, kw;
  const std::uint32_t* bits;
  const float* mean_abs;  // null without K
  const std::int32_t* tap_pop;  // [out_c][taps] popcount of each tap's weight words; null if VALID
};

// im2col of one block with AVX2 gathers: for each tap, the 16 pixels' input offsets are one
// vector add away from the block's base offsets; out-of-image taps are masked off (patch 0,
// no K contribution, listed per lane for the output-stage correction).
void build_block(const Geometry& g, std::int64_t first, int block_pixels, std::int64_t total,
                 std::uint32_t* patches, Block* b) {
  const Conv2DShape& s = *g.s;
  b->first = first;
  b->count = static_cast<int>(std::min<std::int64_t>(block_pixels, total - first));
  const int span_h = (s.k_h - 1) * s.dilation_h, span_w = (s.k_w - 1) * s.dilation_w;
  alignas(32) std::int32_t ih0[kBlock], iw0[kBlock], base[kBlock], live[kBlock];
  bool border = false;
  unsigned char tap_padded[kMaxTaps] = {};
  {
    const std::int64_t hw = static_cast<std::int64_t>(s.out_h) * s.out_w;
    std::int64_t img = first / hw;
    int rem = static_cast<int>(first % hw);
    int oh = rem / s.out_w, ow = rem % s.out_w;
    for (int j = 0; j < kBlock; ++j) {
      live[j] = j < b->count ? -1 : 0;
      ih0[j] = oh * s.stride_h - s.pad_top;
      iw0[j] = ow * s.stride_w - s.pad_left;
      // Offset (in pixels) of the tap (0, 0), possibly outside the image; only ever used
      // for taps that are inside.
      base[j] = static_cast<std::int32_t>((img * s.in_h + ih0[j]) * s.in_w + iw0[j]);
      if (j < b->count) {
        border |= ih0[j] < 0 || iw0[j] < 0 || ih0[j] + span_h >= s.in_h || iw0[j] + span_w >= s.in_w;
      }
      if (++ow == s.out_w) {
        ow = 0;
        if (++oh == s.out_h) {
          oh = 0;
          ++img;
        }
      }
    }
  }
  const int words = g.in_words;
  const __m256i in_h = _mm256_set1_epi32(s.in_h), in_w = _mm256_set1_epi32(s.in_w);
  const __m256i vwords = _mm256_set1_epi32(words);
  const int* src = reinterpret_cast<const int*>(g.bits);
  const int vectors = b->count > 8 ? 2 : 1;  // an 8-pixel block leaves lanes 8..15 unused
  for (int v = 0; v < vectors; ++v) {
    const __m256i vih0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(ih0 + v * 8));
    const __m256i viw0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(iw0 + v * 8));
    const __m256i vlive = _mm256_load_si256(reinterpret_cast<const __m256i*>(live + v * 8));
    const __m256i vbase =
        _mm256_mullo_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(base + v * 8)), vwords);
    __m256 ksum = _mm256_setzero_ps();
    __m256i valid = _mm256_setzero_si256();
    int k = 0;
    for (int i = 0; i < s.k_h; ++i) {
      const __m256i ih = _mm256_add_epi32(vih0, _mm256_set1_epi32(i * s.dilation_h));
      const __m256i row_ok = _mm256_and_si256(
          vlive, _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), ih),
                                     _mm256_cmpgt_epi32(in_h, ih)));
      for (int t = 0; t < s.k_w; ++t, k += words) {
        const __m256i iw = _mm256_add_epi32(viw0, _mm256_set1_epi32(t * s.dilation_w));
        const __m256i ok = _mm256_and_si256(
            row_ok, _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), iw),
                                        _mm256_cmpgt_epi32(in_w, iw)));
        const int tap_pixels = i * s.dilation_h * s.in_w + t * s.dilation_w;
        const __m256i off = _mm256_add_epi32(vbase, _mm256_set1_epi32(tap_pixels * words));
        for (int q = 0; q < words; ++q) {
          const __m256i x =
              _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), src + q, off, ok, 4);
          _mm256_store_si256(reinterpret_cast<__m256i*>(patches + (k + q) * kBlock + v * 8), x);
        }
        if (border) {
          const __m256i padded = _mm256_andnot_si256(ok, vlive);
          const int tap = i * s.k_w + t;
          _mm256_store_si256(reinterpret_cast<__m256i*>(b->padded_lanes[tap] + v * 8), padded);
          tap_padded[tap] |= !_mm256_testz_si256(padded, padded);
        }
        valid = _mm256_sub_epi32(valid, ok);  // ok is -1 for a real tap
        if (g.mean_abs != nullptr) {
          const __m256i pix = _mm256_add_epi32(
              _mm256_load_si256(reinterpret_cast<const __m256i*>(base + v * 8)), _mm256_set1_epi32(tap_pixels));
          ksum = _mm256_add_ps(ksum, _mm256_mask_i32gather_ps(_mm256_setzero_ps(), g.mean_abs, pix,
                                                              _mm256_castsi256_ps(ok), 4));
        }
      }
    }
    _mm256_store_ps(b->k + v * 8, g.mean_abs != nullptr
                                      ? _mm256_div_ps(ksum, _mm256_set1_ps(static_cast<float>(g.taps)))
                                      : _mm256_set1_ps(1.0f));
    _mm256_store_si256(reinterpret_cast<__m256i*>(b->n_valid + v * 8),
                       _mm256_mullo_epi32(valid, _mm256_set1_epi32(s.in_c)));
  }
  b->padded_taps = 0;
  if (border) {
    for (int tap = 0; tap < g.taps; ++tap) {
      if (tap_padded[tap]) b->padded_tap[b->padded_taps++] = tap;
    }
  }
}

// Output stage for one tile: pops [nr][16] -> out rows of the block's pixels, channels
// [oc0, oc0 + nr) clipped to out_c.
template <int NR>
void store_tile(const ConvArgs& a, const Geometry& g, const Block& b, int lanes, int oc0,
                const std::int32_t* pops) {
  const int out_c = a.shape.out_c;
  const int nr = std::min(NR, out_c - oc0);
  alignas(32) float res[NR][kBlock];
  const __m256 zero = _mm256_setzero_ps();
  for (int v = 0; v < lanes / 8; ++v) {
    const __m256i nv = _mm256_load_si256(reinterpret_cast<const __m256i*>(b.n_valid + v * 8));
    const __m256 kv = _mm256_load_ps(b.k + v * 8);
    for (int j = 0; j < NR; ++j) {
      const int c = oc0 + std::min(j, nr - 1);
      __m256i pop = _mm256_load_si256(reinterpret_cast<const __m256i*>(pops + j * 16 + v * 8));
      if (b.padded_taps > 0) {
        const std::int32_t* tp = g.tap_pop + static_cast<std::int64_t>(c) * g.taps;
        for (int e = 0; e < b.padded_taps; ++e) {
          const int tap = b.padded_tap[e];
          const __m256i lanes_mask =
              _mm256_load_si256(reinterpret_cast<const __m256i*>(b.padded_lanes[tap] + v * 8));
          pop = _mm256_sub_epi32(pop, _mm256_and_si256(lanes_mask, _mm256_set1_epi32(tp[tap])));
        }
      }
      const __m256i dot = _mm256_sub_epi32(nv, _mm256_add_epi32(pop, pop));
      __m256 r = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(a.alpha[c]));
      if (a.use_k) r = _mm256_mul_ps(r, kv);
      if (a.bias != nullptr) r = _mm256_add_ps(r, _mm256_set1_ps(a.bias[c]));
      if (a.relu) r = _mm256_max_ps(r, zero);
      _mm256_store_ps(res[j] + v * 8, r);
    }
  }
  float* out = a.output + b.first * out_c + oc0;
  if (NR == 4 && nr == 4) {
    for (int v = 0; v < lanes / 8; ++v) {
      const __m256 r0 = _mm256_load_ps(res[0] + v * 8), r1 = _mm256_load_ps(res[1] + v * 8);
      const __m256 r2 = _mm256_load_ps(res[2 % NR] + v * 8), r3 = _mm256_load_ps(res[3 % NR] + v * 8);
      const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
      const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
      const __m256 u[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                           _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
      // u[i] holds pixel i (low half) and pixel i + 4 (high half) of this vector.
      for (int i = 0; i < 8; ++i) {
        const int j = v * 8 + i;
        if (j >= b.count) break;
        const __m128 q = (i < 4) ? _mm256_castps256_ps128(u[i]) : _mm256_extractf128_ps(u[i - 4], 1);
        _mm_storeu_ps(out + static_cast<std::int64_t>(j) * out_c, q);
      }
    }
    return;
  }
  for (int j = 0; j < b.count; ++j) {
    float* row = out + static_cast<std::int64_t>(j) * out_c;
    for (int c = 0; c < nr; ++c) row[c] = res[c][j];
  }
}

// Sign words of the first `full` whole 32-channel words of one pixel row `x` into `out`, and
// the lane-wise sum of |x| over them (reduced by the caller, so the summation order is fixed).
inline __m256 pack_full_words(const float* x, int full, PackedWord* out) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 acc = _mm256_setzero_ps();
  for (int w = 0; w < full; ++w) {
    const float* xw = x + w * kBitsPerWord;
    std::uint32_t word = 0;
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      const __m256 v = _mm256_loadu_ps(xw + q * 8);
      // x < 0 (ordered): -0.0 and NaN give 0, i.e. sign +1.
      word |= static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ)))
              << (q * 8);
      acc = _mm256_add_ps(acc, _mm256_and_ps(v, abs_mask));
    }
    out[w] = static_cast<PackedWord>(word);
  }
  return acc;
}

}  // namespace

void pack_rows_avx2(const float* input, std::int64_t pixels, int in_c, PackedWord* bits,
                    float* mean_abs, const ParallelFor& parallel_for) {
  parallel_for(pixels, 2 * in_c, [&](std::int64_t begin, std::int64_t end) {
    pack_rows_range_avx2(input, begin, end, in_c, bits, mean_abs);
  });
}

void pack_rows_range_avx2(const float* input, std::int64_t begin, std::int64_t end, int in_c,
                          PackedWord* bits, float* mean_abs) {
  const int words = packed_words(in_c);
  const int full = in_c / kBitsPerWord;
  std::int64_t p = begin;
  if (mean_abs != nullptr && full == words) {
    // Groups of eight pixels: one transposing horizontal sum and one division for all eight.
    const __m256 divisor = _mm256_set1_ps(static_cast<float>(in_c));
    for (; p + 8 <= end; p += 8) {
      __m256 acc[8];
      for (int j = 0; j < 8; ++j) {
        acc[j] = pack_full_words(input + (p + j) * in_c, full, bits + (p + j) * words);
      }
      _mm256_storeu_ps(mean_abs + p, _mm256_div_ps(hsum8(acc), divisor));
    }
  }
  {
    for (; p < end; ++p) {
      const float* x = input + p * in_c;
      PackedWord* out = bits + p * words;
      const __m256 acc = pack_full_words(x, full, out);
      float tail_sum = 0.0f;
      if (full < words) {
        std::uint32_t word = 0;
        for (int c = full * kBitsPerWord; c < in_c; ++c) {
          word |= static_cast<std::uint32_t>(x[c] < 0.0f) << (c - full * kBitsPerWord);
          tail_sum += std::fabs(x[c]);
        }
        out[full] = static_cast<PackedWord>(word);
      }
      if (mean_abs != nullptr) mean_abs[p] = (hsum(acc) + tail_sum) / static_cast<float>(in_c);
    }
  }
}

bool conv2d_avx2(const ConvArgs& a, const ParallelFor& parallel_for) {
  return conv2d_avx2_driver(a, parallel_for, Avx2Driver::kAuto);
}

bool conv2d_avx2_driver(const ConvArgs& a, const ParallelFor& parallel_for, Avx2Driver driver) {
  const Conv2DShape& s = a.shape;
  // AVX-512 CPUs: the VPOPCNTD driver wherever the channel-lane one would run (it indexes with
  // 64 bits, so also for inputs too large for the pixel-lane gathers).
  if (popcount_avx512_available() &&
      (driver == Avx2Driver::kVpopcnt512 ||
       (driver == Avx2Driver::kAuto && channel_lanes_preferred(s)))) {
    return conv2d_vpopcnt_avx512(a, parallel_for);
  }
  if (driver == Avx2Driver::kVpopcnt512) driver = Avx2Driver::kAuto;
  Geometry g;
  g.s = &s;
  g.in_words = packed_words(s.in_c);
  g.taps = s.k_h * s.k_w;
  g.kw = g.taps * g.in_words;
  const std::int64_t in_pixels = static_cast<std::int64_t>(s.batch) * s.in_h * s.in_w;
  auto* bits = static_cast<std::uint32_t*>(
      thread_scratch(static_cast<std::size_t>(in_pixels) * g.in_words * 4, kScratchPacked));
  float* mean_abs = a.use_k ? static_cast<float*>(thread_scratch(
                                  static_cast<std::size_t>(in_pixels) * 4, kScratchMeanAbs))
                            : nullptr;
  if (bits == nullptr || (a.use_k && mean_abs == nullptr)) return false;
  // The pixel-lane im2col gathers with 32-bit offsets; larger inputs take the channel-lane
  // driver, which indexes with 64 bits.
  const bool offsets_fit = in_pixels * g.in_words < (std::int64_t{1} << 31) - 64;
  if (!offsets_fit && popcount_avx512_available()) return conv2d_vpopcnt_avx512(a, parallel_for);
  if (driver == Avx2Driver::kChannelLanes || !offsets_fit ||
      (driver == Avx2Driver::kAuto && channel_lanes_preferred(s))) {
    return conv2d_channel_lanes_avx2(a, parallel_for, bits, mean_abs);  // packs the input itself
  }
  pack_rows_avx2(a.input, in_pixels, s.in_c, reinterpret_cast<PackedWord*>(bits), mean_abs,
                 parallel_for);
  g.bits = bits;
  g.mean_abs = mean_abs;
  g.tap_pop = nullptr;
  const std::uint32_t* filter = reinterpret_cast<const std::uint32_t*>(a.filter);
  if (s.padding == Padding::kSame) {
    auto* tap_pop = static_cast<std::int32_t*>(
        thread_scratch(static_cast<std::size_t>(s.out_c) * g.taps * 4, kScratchTapPop));
    if (tap_pop == nullptr) return false;
    parallel_for(s.out_c, g.kw, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t row = begin * g.taps; row < end * g.taps; ++row) {
        const std::uint32_t* w = filter + row * g.in_words;
        std::int32_t pop = 0;
        for (int q = 0; q < g.in_words; ++q) pop += _mm_popcnt_u32(w[q]);
        tap_pop[row] = pop;
      }
    });
    g.tap_pop = tap_pop;
  }

  const std::int64_t total = static_cast<std::int64_t>(s.batch) * s.out_h * s.out_w;
  // Few output pixels (deep layers such as 512@7): 8-pixel blocks and the 8x8 tile, so that
  // every task costs the same and a pool splits them evenly (a 16-pixel grid would leave one
  // light tail block next to a few heavy ones). Both tiles run at the same speed.
  const int block_pixels = total < 8 * kBlock ? 8 : kBlock;
  const ConvTiling tiling = plan_conv_tiling(s, block_pixels, 8);
  const std::int64_t cost = static_cast<std::int64_t>(block_pixels) * tiling.oc_chunk * g.kw;
  std::atomic<bool> failed{false};  // a worker could not get its scratch
  parallel_for(tiling.tasks, cost, [&](std::int64_t begin, std::int64_t end) {
    const std::size_t block_bytes = static_cast<std::size_t>(g.kw) * kBlock * 4;
    auto* patches = static_cast<std::uint32_t*>(thread_scratch(block_bytes, kScratchPatches));
    auto* pops = static_cast<std::int32_t*>(thread_scratch(8 * 16 * 4, kScratchTile));
    if (patches == nullptr || pops == nullptr) {
      failed.store(true, std::memory_order_relaxed);
      return;
    }
    Block block;
    std::int64_t cached = -1;
    for (std::int64_t t = begin; t < end; ++t) {
      const std::int64_t bi = t / tiling.oc_chunks;
      const int chunk = static_cast<int>(t % tiling.oc_chunks);
      if (bi != cached) {
        build_block(g, bi * block_pixels, block_pixels, total, patches, &block);
        cached = bi;
      }
      const int oc_begin = chunk * tiling.oc_chunk;
      const int oc_end = std::min(s.out_c, oc_begin + tiling.oc_chunk);
      if (block.count > 8) {
        for (int oc = oc_begin; oc < oc_end; oc += 4) {
          const std::uint32_t* w[4];
          for (int j = 0; j < 4; ++j) {
            w[j] = filter + static_cast<std::int64_t>(std::min(oc + j, s.out_c - 1)) * g.kw;
          }
          xnor_gemm_16x4_avx2(patches, g.kw, w, pops);
          store_tile<4>(a, g, block, 16, oc, pops);
        }
      } else {
        for (int oc = oc_begin; oc < oc_end; oc += 8) {
          const std::uint32_t* w[8];
          for (int j = 0; j < 8; ++j) {
            w[j] = filter + static_cast<std::int64_t>(std::min(oc + j, s.out_c - 1)) * g.kw;
          }
          xnor_gemm_8x8_avx2(patches, g.kw, w, pops);
          store_tile<8>(a, g, block, 8, oc, pops);
        }
      }
    }
  });
  return !failed.load();
}

bool dense_avx2(const DenseArgs& a, const ParallelFor& parallel_for) {
  // A prepared table filter serves batches from 2 rows (the channel-lane table tile pairs two
  // rows per lookup; no transpose to pay per call); without one, batches that fill the
  // pixel-lane tiles. One row stays on the GEMV, which reads each weight bit once.
  // On AVX-512 CPUs a prepared filter holds the VPOPCNTD driver's layout instead, which serves
  // the same batches (that driver has no pairs: any batch fills its 6-pixel tiles).
  const bool prepared_vpopcnt = a.vpopcnt_filter != nullptr;
  const bool prepared_table = a.nibble_filter != nullptr || prepared_vpopcnt;
  if (a.batch >= (prepared_table ? kPreparedDenseMinBatch : kGemvMaxBatch)) {
    // The dense layer as a 1x1 conv on one 1 x batch image: consecutive rows are neighbouring
    // pixels of one image row, which the channel-lane table tile pairs (a batch of 1x1 images
    // would leave every pixel without a partner). K of a 1x1 conv is the pixel's mean |x|.
    ConvArgs c{a};  // the operands and prepared layouts
    c.shape.batch = 1;
    c.shape.in_h = c.shape.out_h = 1;
    c.shape.in_w = c.shape.out_w = a.batch;
    c.shape.in_c = a.in_features;
    c.shape.out_c = a.units;
    c.shape.k_h = c.shape.k_w = 1;
    return conv2d_avx2_driver(c, parallel_for,
                              prepared_vpopcnt ? Avx2Driver::kVpopcnt512
                              : prepared_table ? Avx2Driver::kChannelLanes
                                               : Avx2Driver::kAuto);
  }
  // GEMV: each unit quad streams its weight rows once per input row.
  const int words = packed_words(a.in_features);
  auto* bits = static_cast<std::uint32_t*>(
      thread_scratch(static_cast<std::size_t>(a.batch) * words * 4, kScratchPacked));
  auto* mean_abs = static_cast<float*>(thread_scratch(static_cast<std::size_t>(a.batch) * 4, kScratchMeanAbs));
  if (bits == nullptr || mean_abs == nullptr) return false;
  pack_rows_avx2(a.input, a.batch, a.in_features, reinterpret_cast<PackedWord*>(bits),
                 a.use_k ? mean_abs : nullptr, serial_for);
  const std::uint32_t* filter = reinterpret_cast<const std::uint32_t*>(a.filter);
  const int quads = (a.units + 3) / 4;
  parallel_for(quads, static_cast<std::int64_t>(4) * words * a.batch, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t q = begin; q < end; ++q) {
      const int u0 = static_cast<int>(q * 4);
      const std::uint32_t* w[4];
      for (int j = 0; j < 4; ++j) w[j] = filter + static_cast<std::int64_t>(std::min(u0 + j, a.units - 1)) * words;
      const int nu = std::min(4, a.units - u0);
      for (int n = 0; n < a.batch; ++n) {
        std::int32_t pops[4];
        xnor_gemv_1x4_avx2(bits + static_cast<std::int64_t>(n) * words, words, w, pops);
        float* out = a.output + static_cast<std::int64_t>(n) * a.units + u0;
        for (int j = 0; j < nu; ++j) {
          float v = static_cast<float>(a.in_features - 2 * pops[j]) * a.alpha[u0 + j];
          if (a.use_k) v *= mean_abs[n];
          // The empty asm keeps an optimizing build (-O3 vectorizes this loop; the file is
          // built with -mfma) from fusing the multiply and the bias add into an FMA, which
          // would round differently from the other paths and the reference.
          __asm__("" : "+x"(v));
          if (a.bias != nullptr) v += a.bias[u0 + j];
          if (a.relu && v < 0.0f) v = 0.0f;
          out[j] = v;
        }
      }
    }
  });
  return true;
}

}  // namespace internal
}  // namespace keras_xnor
