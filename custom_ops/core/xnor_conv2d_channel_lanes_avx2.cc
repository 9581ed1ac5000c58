// AVX2 conv driver with output channels in vector lanes (the default for convs with at least
// a few dozen output pixels): the filter is transposed once per call into 16-channel blocks
// (one pass over it, cheaper than it saves), patches are copied pixel-major (whole kernel rows
// at a time, no gathers), and the output stage writes 8 contiguous NHWC channels per store.
// SAME borders use the same correction as the pixel-lane driver: a padded tap has patch bits
// 0, and the output stage subtracts popcount(w[c, tap]) for each padded tap of the pixel.
// Both operands are nibble-planar (xnor_gemm_avx2.h): packed word k of a pixel or filter row
// becomes planar words 2k (low nibbles) and 2k + 1 (high nibbles), made once per operand (the
// input right after sign packing, the filter in the transpose), so the microkernel's inner
// step needs 6 vector ops per 256 data bits instead of 8.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "custom_ops/core/xnor_gemm_avx2.h"
#include "custom_ops/core/xnor_kernels.h"

namespace keras_xnor {
namespace internal {
namespace {

constexpr int kBlock = 16;    // pixels per im2col block
constexpr int kLanes = 16;    // channels per weight block (two vectors)
constexpr int kMaxTaps = 11 * 11;

struct PixelBlock {
  std::int64_t first = 0;
  int count = 0;
  float k[kBlock];
  std::int32_t n_valid[kBlock];
  int padded_taps[kBlock];
  unsigned char padded_tap[kBlock][kMaxTaps];
};

// Popcount of each 32-bit lane.
inline __m256i popcount_epi32(__m256i x) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                       2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i bytes =
      _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x, low)),
                      _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low)));
  return _mm256_madd_epi16(_mm256_maddubs_epi16(bytes, _mm256_set1_epi8(1)), _mm256_set1_epi16(1));
}

// In place: r[j] lane i (row j, column i) -> r[i] lane j.
inline void transpose8x8(__m256i r[8]) {
  const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
  const __m256i t4 = _mm256_unpacklo_epi32(r[4], r[5]), t5 = _mm256_unpackhi_epi32(r[4], r[5]);
  const __m256i t6 = _mm256_unpacklo_epi32(r[6], r[7]), t7 = _mm256_unpackhi_epi32(r[6], r[7]);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
  const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
  r[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
  r[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
  r[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
  r[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
  r[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
  r[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
  r[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
  r[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

// Nibble planes of n packed words: dst[2k] = src[k] & 0x0f0f0f0f, dst[2k + 1] = (src[k] >> 4)
// & 0x0f0f0f0f.
inline void make_nibble_planes(const std::uint32_t* src, std::int64_t n, std::uint32_t* dst) {
  const __m256i low = _mm256_set1_epi8(0x0f);
  std::int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k));
    const __m256i lo = _mm256_and_si256(x, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
    // In-lane interleave gives words {0,0',1,1' | 4,4',5,5'} and {2,2',3,3' | 6,6',7,7'}.
    const __m256i u0 = _mm256_unpacklo_epi32(lo, hi), u1 = _mm256_unpackhi_epi32(lo, hi);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * k),
                        _mm256_permute2x128_si256(u0, u1, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * k + 8),
                        _mm256_permute2x128_si256(u0, u1, 0x31));
  }
  for (; k < n; ++k) {
    dst[2 * k] = src[k] & 0x0f0f0f0fu;
    dst[2 * k + 1] = (src[k] >> 4) & 0x0f0f0f0fu;
  }
}

// Transposes 16-channel filter block b into the planar layout (channel_lanes_filter_words) and,
// when tap_pop is not null, writes that block's per-tap weight popcounts.
void transpose_filter_block(const Conv2DShape& s, const std::uint32_t* filter, std::int64_t b,
                            std::uint32_t* wt, std::int32_t* tap_pop) {
  const int packed = packed_words(s.in_c);
  const int words = 2 * packed;
  const int taps = s.k_h * s.k_w;
  const int kw = taps * words;
  const int kw_packed = taps * packed;
  const int oc_pad = (s.out_c + kLanes - 1) / kLanes * kLanes;
  std::uint32_t* dst = wt + b * kw * kLanes;
  for (int h = 0; h < 2; ++h) {
    const int c0 = static_cast<int>(b) * kLanes + h * 8;
    const std::uint32_t* rows[8];
    bool live[8];
    for (int j = 0; j < 8; ++j) {
      live[j] = c0 + j < s.out_c;
      rows[j] = filter + static_cast<std::int64_t>(live[j] ? c0 + j : 0) * kw_packed;
    }
    const __m256i low = _mm256_set1_epi8(0x0f);
    int k = 0;
    for (; k + 8 <= kw_packed; k += 8) {
      __m256i r[8];
      for (int j = 0; j < 8; ++j) {
        r[j] = live[j] ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[j] + k))
                       : _mm256_setzero_si256();
      }
      transpose8x8(r);
      for (int i = 0; i < 8; ++i) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(dst + 2 * (k + i) * kLanes + h * 8),
                           _mm256_and_si256(r[i], low));
        _mm256_store_si256(reinterpret_cast<__m256i*>(dst + (2 * (k + i) + 1) * kLanes + h * 8),
                           _mm256_and_si256(_mm256_srli_epi16(r[i], 4), low));
      }
    }
    for (; k < kw_packed; ++k) {
      for (int j = 0; j < 8; ++j) {
        const std::uint32_t x = live[j] ? rows[j][k] : 0u;
        dst[2 * k * kLanes + h * 8 + j] = x & 0x0f0f0f0fu;
        dst[(2 * k + 1) * kLanes + h * 8 + j] = (x >> 4) & 0x0f0f0f0fu;
      }
    }
    if (tap_pop != nullptr) {
      // Per-tap weight popcounts of these 8 channels, from the transposed words (lanes =
      // channels, so the sums land in tap_pop's [tap][channel] layout directly).
      for (int t = 0; t < taps; ++t) {
        __m256i acc = _mm256_setzero_si256();
        for (int q = 0; q < words; ++q) {
          acc = _mm256_add_epi32(acc, popcount_epi32(_mm256_load_si256(
                                          reinterpret_cast<const __m256i*>(dst + (t * words + q) * kLanes + h * 8))));
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(tap_pop + t * oc_pad + c0), acc);
      }
    }
  }
}

}  // namespace

void prepare_channel_lanes_filter_avx2(const Conv2DShape& s, const PackedWord* filter,
                                       std::uint32_t* lanes_filter, std::int32_t* tap_pop,
                                       const ParallelFor& parallel_for) {
  const int blocks16 = (s.out_c + kLanes - 1) / kLanes;
  const std::int64_t cost = static_cast<std::int64_t>(s.k_h) * s.k_w * packed_words(s.in_c) * kLanes * 4;
  parallel_for(blocks16, cost, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t b = begin; b < end; ++b) {
      transpose_filter_block(s, reinterpret_cast<const std::uint32_t*>(filter), b, lanes_filter,
                             tap_pop);
    }
  });
}

bool channel_lanes_preferred(const Conv2DShape& s) {
  // Transposing the filter costs about one pass over it, i.e. ~1/pixels of the conv's own
  // filter traffic; measured on Zen 3 the channel-lane driver is as fast or faster than the
  // pixel-lane one for every ResNet-18 / AlexNet shape, including 512@7 (49 pixels) and 96->256
  // 5x5 (filter 19 K words), thanks to contiguous stores and no gathers. Below a few dozen
  // pixels (batched dense layers, tiny images) the transpose would dominate.
  const std::int64_t pixels = static_cast<std::int64_t>(s.batch) * s.out_h * s.out_w;
  return pixels >= 32;
}

void conv2d_channel_lanes_avx2(const ConvArgs& a, const ParallelFor& parallel_for,
                               std::uint32_t* bits, float* mean_abs) {
  const Conv2DShape& s = a.shape;
  const int packed = packed_words(s.in_c);  // packed words per pixel / tap
  const int words = 2 * packed;               // planar words per pixel / tap
  const int taps = s.k_h * s.k_w;
  const int kw = taps * words;                // planar words per patch / filter row
  const int blocks16 = (s.out_c + kLanes - 1) / kLanes;
  const int oc_pad = blocks16 * kLanes;
  const bool same = s.padding == Padding::kSame;
  const std::uint32_t* filter = reinterpret_cast<const std::uint32_t*>(a.filter);

  // Transposed planar filter [block][k][16] and per-tap popcounts [tap][oc_pad] (SAME): from a
  // PreparedConv2DFilter, else made per call; alpha/bias padded to whole vectors. One scratch
  // allocation, carved up.
  const bool prepared = a.lanes_filter != nullptr;
  const std::size_t wt_words = prepared ? 0 : static_cast<std::size_t>(blocks16) * kw * kLanes;
  const std::size_t tp_words = same && !prepared ? static_cast<std::size_t>(taps) * oc_pad : 0;
  auto* scratch = static_cast<std::uint32_t*>(
      thread_scratch((wt_words + tp_words + 2 * static_cast<std::size_t>(oc_pad)) * 4, kScratchFilterT));
  const std::uint32_t* wt = prepared ? a.lanes_filter : scratch;
  const std::int32_t* tap_pop =
      prepared ? a.lanes_tap_pop : reinterpret_cast<std::int32_t*>(scratch + wt_words);
  float* alpha = reinterpret_cast<float*>(scratch + wt_words + tp_words);
  float* bias = alpha + oc_pad;
  for (int c = 0; c < oc_pad; ++c) {
    alpha[c] = c < s.out_c ? a.alpha[c] : 0.0f;
    bias[c] = (c < s.out_c && a.bias != nullptr) ? a.bias[c] : 0.0f;
  }
  // One parallel pass: units [0, pack_units) sign-pack 64 input pixels each, the rest (none
  // with a prepared filter) transpose one 16-channel filter block each.
  constexpr int kPackRows = 64;
  const std::int64_t in_pixels = static_cast<std::int64_t>(s.batch) * s.in_h * s.in_w;
  auto* planar = static_cast<std::uint32_t*>(
      thread_scratch(static_cast<std::size_t>(in_pixels) * words * 4, kScratchPlanar));
  const std::int64_t pack_units = (in_pixels + kPackRows - 1) / kPackRows;
  const std::int64_t filter_units = prepared ? 0 : blocks16;
  const std::int64_t unit_cost = (static_cast<std::int64_t>(kPackRows) * s.in_c * 2 * pack_units +
                                  static_cast<std::int64_t>(kw) * kLanes * 2 * filter_units) /
                                 (pack_units + filter_units);
  parallel_for(pack_units + filter_units, unit_cost, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t unit = begin; unit < end; ++unit) {
      if (unit < pack_units) {
        const std::int64_t r0 = unit * kPackRows, r1 = std::min(in_pixels, (unit + 1) * kPackRows);
        pack_rows_range_avx2(a.input, r0, r1, s.in_c, reinterpret_cast<PackedWord*>(bits), mean_abs);
        make_nibble_planes(bits + r0 * packed, (r1 - r0) * packed, planar + r0 * words);
        continue;
      }
      transpose_filter_block(s, filter, unit - pack_units, scratch,
                             same ? reinterpret_cast<std::int32_t*>(scratch + wt_words) : nullptr);
    }
  });

  const std::int64_t total = static_cast<std::int64_t>(s.batch) * s.out_h * s.out_w;
  // Few pixels: one-quad blocks, so every task costs the same (with 16-pixel blocks, 49 pixels
  // would make three full blocks and a one-pixel one, and a 2-thread split would be uneven).
  const int block_pixels = total < 512 ? 4 : kBlock;
  const ConvTiling tiling = plan_conv_tiling(s, block_pixels, kLanes);
  const std::int64_t cost = static_cast<std::int64_t>(block_pixels) * tiling.oc_chunk * kw;
  const int span_w = (s.k_w - 1) * s.dilation_w;
  // Locals, not a.*: the output stores may alias anything, so the compiler would reload them.
  const bool use_k = a.use_k, relu = a.relu, has_bias = a.bias != nullptr;
  float* const output = a.output;
  const int out_c = s.out_c;
  parallel_for(tiling.tasks, cost, [&, use_k, relu, has_bias, output, out_c](std::int64_t begin, std::int64_t end) {
    const __m256 zero = _mm256_setzero_ps();
    auto* patches = static_cast<std::uint32_t*>(
        thread_scratch(static_cast<std::size_t>(kBlock) * kw * 4, kScratchPatches));
    auto* pops = static_cast<std::int32_t*>(thread_scratch(kBlock * kLanes * 4, kScratchTile));
    PixelBlock blk;
    std::int64_t cached = -1;
    for (std::int64_t t = begin; t < end; ++t) {
      const std::int64_t bi = t / tiling.oc_chunks;
      const int chunk = static_cast<int>(t % tiling.oc_chunks);
      if (bi != cached) {
        cached = bi;
        blk.first = bi * block_pixels;
        blk.count = static_cast<int>(std::min<std::int64_t>(block_pixels, total - blk.first));
        const std::int64_t hw = static_cast<std::int64_t>(s.out_h) * s.out_w;
        std::int64_t img = blk.first / hw;
        int rem = static_cast<int>(blk.first % hw);
        int oh = rem / s.out_w, ow = rem % s.out_w;
        const int row_words = s.k_w * words;
        const bool rows_contiguous = s.dilation_w == 1;
        for (int j = 0; j < blk.count; ++j) {
          const int ih0 = oh * s.stride_h - s.pad_top, iw0 = ow * s.stride_w - s.pad_left;
          const bool cols_ok = iw0 >= 0 && iw0 + span_w < s.in_w;
          std::uint32_t* prow = patches + static_cast<std::int64_t>(j) * kw;
          float ksum = 0.0f;
          int valid = 0, npad = 0, k = 0;
          for (int i = 0; i < s.k_h; ++i, k += row_words) {
            const int ih = ih0 + i * s.dilation_h;
            const bool row_ok = ih >= 0 && ih < s.in_h;
            const std::int64_t row_pix = (img * s.in_h + ih) * s.in_w;
            if (row_ok && cols_ok && rows_contiguous) {
              // The k_w taps of this kernel row are adjacent input pixels: one block copy.
              // May over-read/over-write by < 8 words: the planar input and the patch
              // buffer have >= 64 bytes of slack, and later writes fix the patch overlap.
              const std::uint32_t* src = planar + (row_pix + iw0) * words;
              for (int w = 0; w < row_words; w += 8) {
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(prow + k + w),
                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + w)));
              }
              if (mean_abs != nullptr) {
                const float* m = mean_abs + row_pix + iw0;
                for (int q = 0; q < s.k_w; ++q) ksum += m[q];
              }
              valid += s.k_w;
              continue;
            }
            for (int q = 0; q < s.k_w; ++q) {
              const int iw = iw0 + q * s.dilation_w;
              std::uint32_t* dst = prow + k + q * words;
              if (row_ok && iw >= 0 && iw < s.in_w) {
                const std::uint32_t* src = planar + (row_pix + iw) * words;
                for (int w = 0; w < words; ++w) dst[w] = src[w];
                if (mean_abs != nullptr) ksum += mean_abs[row_pix + iw];
                ++valid;
              } else {
                for (int w = 0; w < words; ++w) dst[w] = 0;
                blk.padded_tap[j][npad++] = static_cast<unsigned char>(i * s.k_w + q);
              }
            }
          }
          blk.k[j] = mean_abs != nullptr ? ksum / static_cast<float>(taps) : 1.0f;
          blk.n_valid[j] = valid * s.in_c;
          blk.padded_taps[j] = npad;
          if (++ow == s.out_w) {
            ow = 0;
            if (++oh == s.out_h) {
              oh = 0;
              ++img;
            }
          }
        }
      }
      const int oc_begin = chunk * tiling.oc_chunk;
      const int oc_end = std::min(s.out_c, oc_begin + tiling.oc_chunk);
      for (int oc0 = oc_begin; oc0 < oc_end; oc0 += kLanes) {
        const std::uint32_t* wblock = wt + static_cast<std::int64_t>(oc0 / kLanes) * kw * kLanes;
        const __m256 alpha0 = _mm256_loadu_ps(alpha + oc0), alpha1 = _mm256_loadu_ps(alpha + oc0 + 8);
        const __m256 bias0 = _mm256_loadu_ps(bias + oc0), bias1 = _mm256_loadu_ps(bias + oc0 + 8);
        // Channels past out_c (the last block) are computed and not stored.
        const bool full = oc0 + kLanes <= out_c;
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i store0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(out_c - oc0), lane);
        const __m256i store1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(out_c - oc0 - 8), lane);
        // All quads of the block in one call (the patch buffer holds whole quads).
        xnor_gemm_4x16_rows_avx2(patches, kw, (blk.count + 3) / 4, kw, wblock, pops);
        for (int q0 = 0; q0 < blk.count; q0 += 4) {
          const int np = std::min(4, blk.count - q0);
          for (int i = 0; i < np; ++i) {
            const int j = q0 + i;
            float* out = output + (blk.first + j) * out_c + oc0;
            const __m256i nv = _mm256_set1_epi32(blk.n_valid[j]);
            const __m256 kv = _mm256_set1_ps(blk.k[j]);
            __m256i p0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pops + j * 16));
            __m256i p1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pops + j * 16 + 8));
            for (int e = 0; e < blk.padded_taps[j]; ++e) {
              const std::int32_t* tp = tap_pop + blk.padded_tap[j][e] * oc_pad + oc0;
              p0 = _mm256_sub_epi32(p0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tp)));
              p1 = _mm256_sub_epi32(p1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tp + 8)));
            }
            __m256 r0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(nv, _mm256_add_epi32(p0, p0))), alpha0);
            __m256 r1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(nv, _mm256_add_epi32(p1, p1))), alpha1);
            if (use_k) {
              r0 = _mm256_mul_ps(r0, kv);
              r1 = _mm256_mul_ps(r1, kv);
            }
            if (has_bias) {
              r0 = _mm256_add_ps(r0, bias0);
              r1 = _mm256_add_ps(r1, bias1);
            }
            if (relu) {
              r0 = _mm256_max_ps(r0, zero);
              r1 = _mm256_max_ps(r1, zero);
            }
            if (full) {
              _mm256_storeu_ps(out, r0);
              _mm256_storeu_ps(out + 8, r1);
            } else {
              _mm256_maskstore_ps(out, store0, r0);
              _mm256_maskstore_ps(out + 8, store1, r1);
            }
          }
        }
      }
    }
  });
}

}  // namespace internal
}  // namespace keras_xnor
