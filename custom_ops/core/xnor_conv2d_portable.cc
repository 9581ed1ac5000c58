// Portable path of the binary conv (plain C++17, any CPU): sign-pack + mean|x| pass, im2col of
// the packed input into blocks of 4 pixel rows, and a 4 pixels x 2 channels register tile of
// 64-bit XOR + __builtin_popcountll, with the fused output stage of xnor_conv2d.h.
// SAME borders as in the AVX2 path: padded taps have patch bits 0 and a 0 mask word.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include "custom_ops/core/xnor_kernels.h"

namespace keras_xnor {
namespace internal {
namespace {

constexpr int kRows = 4;  // output pixels per block
constexpr int kCols = 2;  // output channels per tile

std::uint64_t load64(const std::uint32_t* p) {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// On x86, build this loop twice, with and without the POPCNT instruction, and let the loader
// pick (GCC function multiversioning): baseline x86-64 has no popcount instruction and
// __builtin_popcountll would become a library call. Other ISAs get their native popcount.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KX_POPCNT_CLONES __attribute__((target_clones("popcnt", "default")))
#else
#define KX_POPCNT_CLONES
#endif

// Popcounts of (patch XOR weight) [AND mask] for kRows pixels x kCols channels. The unroll
// pragmas keep the accumulators in registers (without them GCC -O2 keeps them in memory). Rows of
// `patches`/`masks` are `stride` words apart; weights rows are `kw` words (any alignment).
template <bool kMasked>
__attribute__((always_inline)) inline void gemm_tile_impl(const std::uint32_t* patches, const std::uint32_t* masks, int stride,
                           int kw, const std::uint32_t* const* w, std::int64_t pops[kRows][kCols]) {
  std::int64_t acc[kRows][kCols] = {};
  const int pairs = kw / 2;
  for (int k = 0; k < pairs; ++k) {
    std::uint64_t x[kRows];
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) x[r] = load64(patches + r * stride + 2 * k);
#pragma GCC unroll 4
    for (int c = 0; c < kCols; ++c) {
      const std::uint64_t wv = load64(w[c] + 2 * k);
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) {
        std::uint64_t v = x[r] ^ wv;
        if (kMasked) v &= load64(masks + r * stride + 2 * k);
        acc[r][c] += __builtin_popcountll(v);
      }
    }
  }
  if (kw & 1) {
    const int k = kw - 1;
    for (int c = 0; c < kCols; ++c) {
      for (int r = 0; r < kRows; ++r) {
        std::uint32_t v = patches[r * stride + k] ^ w[c][k];
        if (kMasked) v &= masks[r * stride + k];
        acc[r][c] += __builtin_popcount(v);
      }
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kCols; ++c) pops[r][c] = acc[r][c];
}

KX_POPCNT_CLONES void gemm_tile_masked(const std::uint32_t* patches, const std::uint32_t* masks,
                                       int stride, int kw, const std::uint32_t* const* w,
                                       std::int64_t pops[kRows][kCols]) {
  gemm_tile_impl<true>(patches, masks, stride, kw, w, pops);
}

KX_POPCNT_CLONES void gemm_tile_plain(const std::uint32_t* patches, int stride, int kw,
                                      const std::uint32_t* const* w,
                                      std::int64_t pops[kRows][kCols]) {
  gemm_tile_impl<false>(patches, nullptr, stride, kw, w, pops);
}

}  // namespace

bool conv2d_portable(const ConvArgs& a, const ParallelFor& parallel_for) {
  const Conv2DShape& s = a.shape;
  const int words = packed_words(s.in_c);
  const int taps = s.k_h * s.k_w;
  const int kw = taps * words;
  const std::int64_t in_pixels = static_cast<std::int64_t>(s.batch) * s.in_h * s.in_w;
  auto* bits = static_cast<std::uint32_t*>(
      thread_scratch(static_cast<std::size_t>(in_pixels) * words * 4, kScratchPacked));
  float* mean_abs = a.use_k ? static_cast<float*>(thread_scratch(
                                  static_cast<std::size_t>(in_pixels) * 4, kScratchMeanAbs))
                            : nullptr;
  if (bits == nullptr || (a.use_k && mean_abs == nullptr)) return false;
  pack_rows_portable(a.input, in_pixels, s.in_c, reinterpret_cast<PackedWord*>(bits), mean_abs,
                     parallel_for);
  const std::int64_t total = static_cast<std::int64_t>(s.batch) * s.out_h * s.out_w;
  const std::int64_t hw = static_cast<std::int64_t>(s.out_h) * s.out_w;
  const ConvTiling tiling = plan_conv_tiling(s, kRows, kCols);
  const std::uint32_t* filter = reinterpret_cast<const std::uint32_t*>(a.filter);
  const int span_h = (s.k_h - 1) * s.dilation_h, span_w = (s.k_w - 1) * s.dilation_w;
  const std::int64_t cost = static_cast<std::int64_t>(kRows) * tiling.oc_chunk * kw;

  std::atomic<bool> failed{false};  // a worker could not get its scratch
  parallel_for(tiling.tasks, cost, [&](std::int64_t begin, std::int64_t end) {
    const std::size_t bytes = static_cast<std::size_t>(kw) * kRows * 4;
    auto* patches = static_cast<std::uint32_t*>(thread_scratch(bytes, kScratchPatches));
    auto* masks = static_cast<std::uint32_t*>(thread_scratch(bytes, kScratchMasks));
    if (patches == nullptr || masks == nullptr) {
      failed.store(true, std::memory_order_relaxed);
      return;
    }
    std::int64_t cached = -1;
    int count = 0;
    bool border = false;
    float kval[kRows];
    std::int64_t n_valid[kRows];
    for (std::int64_t t = begin; t < end; ++t) {
      const std::int64_t bi = t / tiling.oc_chunks;
      const int chunk = static_cast<int>(t % tiling.oc_chunks);
      const std::int64_t first = bi * kRows;
      if (bi != cached) {
        cached = bi;
        count = static_cast<int>(std::min<std::int64_t>(kRows, total - first));
        // First the geometry (masks are only needed when some pixel has a padded tap).
        std::int64_t img[kRows];
        int ih0[kRows], iw0[kRows];
        border = false;
        for (int r = 0; r < count; ++r) {
          const std::int64_t p = first + r;
          img[r] = p / hw;
          const int rem = static_cast<int>(p % hw);
          ih0[r] = (rem / s.out_w) * s.stride_h - s.pad_top;
          iw0[r] = (rem % s.out_w) * s.stride_w - s.pad_left;
          border |= ih0[r] < 0 || iw0[r] < 0 || ih0[r] + span_h >= s.in_h || iw0[r] + span_w >= s.in_w;
        }
        for (int r = 0; r < kRows; ++r) {
          std::uint32_t* prow = patches + r * kw;
          std::uint32_t* mrow = masks + r * kw;
          if (r >= count) {
            for (int k = 0; k < kw; ++k) prow[k] = 0;
            if (border) for (int k = 0; k < kw; ++k) mrow[k] = 0;
            kval[r] = 0.0f;
            n_valid[r] = 0;
            continue;
          }
          float ksum = 0.0f;
          int valid = 0, k = 0;
          for (int i = 0; i < s.k_h; ++i) {
            const int ih = ih0[r] + i * s.dilation_h;
            for (int j = 0; j < s.k_w; ++j, k += words) {
              const int iw = iw0[r] + j * s.dilation_w;
              if (ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w) {
                const std::int64_t pix = (img[r] * s.in_h + ih) * s.in_w + iw;
                const std::uint32_t* src = bits + pix * words;
                for (int q = 0; q < words; ++q) prow[k + q] = src[q];
                if (border) for (int q = 0; q < words; ++q) mrow[k + q] = ~0u;
                if (mean_abs != nullptr) ksum += mean_abs[pix];
                ++valid;
              } else {
                for (int q = 0; q < words; ++q) prow[k + q] = 0;
                for (int q = 0; q < words; ++q) mrow[k + q] = 0;
              }
            }
          }
          kval[r] = mean_abs != nullptr ? ksum / static_cast<float>(taps) : 1.0f;
          n_valid[r] = static_cast<std::int64_t>(valid) * s.in_c;
        }
      }
      const int oc_begin = chunk * tiling.oc_chunk;
      const int oc_end = std::min(s.out_c, oc_begin + tiling.oc_chunk);
      for (int oc = oc_begin; oc < oc_end; oc += kCols) {
        const std::uint32_t* w[kCols];
        for (int c = 0; c < kCols; ++c) {
          w[c] = filter + static_cast<std::int64_t>(std::min(oc + c, s.out_c - 1)) * kw;
        }
        std::int64_t pops[kRows][kCols];
        if (border) {
          gemm_tile_masked(patches, masks, kw, kw, w, pops);
        } else {
          gemm_tile_plain(patches, kw, kw, w, pops);
        }
        const int nc = std::min(kCols, s.out_c - oc);
        for (int r = 0; r < count; ++r) {
          float* out = a.output + (first + r) * s.out_c + oc;
          for (int c = 0; c < nc; ++c) {
            const std::int64_t dot = n_valid[r] - 2 * pops[r][c];
            float v = static_cast<float>(dot) * a.alpha[oc + c];
            if (a.use_k) v *= kval[r];
            if (a.bias != nullptr) v += a.bias[oc + c];
            if (a.relu && v < 0.0f) v = 0.0f;
            out[c] = v;
          }
        }
      }
    }
  });
  return !failed.load();
}

namespace {

// pops[j] = popcount(x XOR w[j]) over `words` words, for two weight rows at once.
KX_POPCNT_CLONES void gemv_1x2(const std::uint32_t* x, int words, const std::uint32_t* w0,
                               const std::uint32_t* w1, std::int64_t* pops) {
  std::int64_t p0 = 0, p1 = 0;
  const int pairs = words / 2;
  for (int k = 0; k < pairs; ++k) {
    const std::uint64_t xv = load64(x + 2 * k);
    p0 += __builtin_popcountll(xv ^ load64(w0 + 2 * k));
    p1 += __builtin_popcountll(xv ^ load64(w1 + 2 * k));
  }
  if (words & 1) {
    p0 += __builtin_popcount(x[words - 1] ^ w0[words - 1]);
    p1 += __builtin_popcount(x[words - 1] ^ w1[words - 1]);
  }
  pops[0] = p0;
  pops[1] = p1;
}

}  // namespace

bool dense_portable(const DenseArgs& a, const ParallelFor& parallel_for) {
  if (a.batch >= kRows) {
    // Enough rows to fill the conv tile: a 1x1 conv on a 1x1 image.
    ConvArgs c{a};  // the operands
    c.shape.batch = a.batch;
    c.shape.in_h = c.shape.in_w = 1;
    c.shape.in_c = a.in_features;
    c.shape.out_c = a.units;
    c.shape.k_h = c.shape.k_w = 1;
    c.shape.out_h = c.shape.out_w = 1;
    return conv2d_portable(c, parallel_for);
  }
  const int words = packed_words(a.in_features);
  auto* bits = static_cast<std::uint32_t*>(
      thread_scratch(static_cast<std::size_t>(a.batch) * words * 4, kScratchPacked));
  auto* mean_abs = static_cast<float*>(thread_scratch(static_cast<std::size_t>(a.batch) * 4, kScratchMeanAbs));
  if (bits == nullptr || mean_abs == nullptr) return false;
  pack_rows_portable(a.input, a.batch, a.in_features, reinterpret_cast<PackedWord*>(bits),
                     a.use_k ? mean_abs : nullptr, serial_for);
  const std::uint32_t* filter = reinterpret_cast<const std::uint32_t*>(a.filter);
  const int pairs = (a.units + 1) / 2;
  parallel_for(pairs, static_cast<std::int64_t>(2) * words * a.batch, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t q = begin; q < end; ++q) {
      const int u0 = static_cast<int>(q * 2);
      const int u1 = std::min(u0 + 1, a.units - 1);
      for (int n = 0; n < a.batch; ++n) {
        std::int64_t pops[2];
        gemv_1x2(bits + static_cast<std::int64_t>(n) * words, words,
                 filter + static_cast<std::int64_t>(u0) * words,
                 filter + static_cast<std::int64_t>(u1) * words, pops);
        for (int j = 0; j < 2 && u0 + j < a.units; ++j) {
          float v = static_cast<float>(a.in_features - 2 * pops[j]) * a.alpha[u0 + j];
          if (a.use_k) v *= mean_abs[n];
          if (a.bias != nullptr) v += a.bias[u0 + j];
          if (a.relu && v < 0.0f) v = 0.0f;
          a.output[static_cast<std::int64_t>(n) * a.units + u0 + j] = v;
        }
      }
    }
  });
  return true;
}

}  // namespace internal
}  // namespace keras_xnor
