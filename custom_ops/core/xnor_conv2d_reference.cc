// Reference (oracle) implementation of the binary conv and dense layers: the formula of
// xnor_conv2d.h written as plain loops. Slow on purpose; the fast paths are tested against it.
#include <cmath>
#include <cstdint>
#include <vector>

#include "custom_ops/core/bitpack.h"
#include "custom_ops/core/xnor_kernels.h"

namespace keras_xnor {
namespace internal {
namespace {

int popcount32(std::uint32_t x) { return __builtin_popcount(x); }

float output_stage(std::int64_t dot, float alpha, float k, const float* bias, int c, bool relu) {
  float v = static_cast<float>(dot) * alpha * k;
  if (bias != nullptr) v += bias[c];
  if (relu && v < 0.0f) v = 0.0f;
  return v;
}

}  // namespace

void conv2d_reference(const ConvArgs& a) {
  const Conv2DShape& s = a.shape;
  const int words = packed_words(s.in_c);
  const std::int64_t pixels = static_cast<std::int64_t>(s.batch) * s.in_h * s.in_w;
  std::vector<PackedWord> packed(static_cast<std::size_t>(pixels) * words);
  pack_rows_portable(a.input, pixels, s.in_c, packed.data(), nullptr, serial_for);

  // A[n,h,w] = mean_c |I[n,h,w,c]|.
  std::vector<float> mean_abs;
  if (a.use_k) {
    mean_abs.resize(static_cast<std::size_t>(pixels));
    for (std::int64_t p = 0; p < pixels; ++p) {
      float sum = 0.0f;
      for (int c = 0; c < s.in_c; ++c) sum += std::fabs(a.input[p * s.in_c + c]);
      mean_abs[p] = sum / static_cast<float>(s.in_c);
    }
  }

  for (int n = 0; n < s.batch; ++n) {
    for (int oh = 0; oh < s.out_h; ++oh) {
      for (int ow = 0; ow < s.out_w; ++ow) {
        float k = 1.0f;
        if (a.use_k) {
          float sum = 0.0f;
          for (int i = 0; i < s.k_h; ++i) {
            const int ih = oh * s.stride_h - s.pad_top + i * s.dilation_h;
            if (ih < 0 || ih >= s.in_h) continue;
            for (int j = 0; j < s.k_w; ++j) {
              const int iw = ow * s.stride_w - s.pad_left + j * s.dilation_w;
              if (iw < 0 || iw >= s.in_w) continue;
              sum += mean_abs[(static_cast<std::int64_t>(n) * s.in_h + ih) * s.in_w + iw];
            }
          }
          k = sum / static_cast<float>(s.k_h * s.k_w);
        }
        float* out =
            a.output + ((static_cast<std::int64_t>(n) * s.out_h + oh) * s.out_w + ow) * s.out_c;
        for (int c = 0; c < s.out_c; ++c) {
          std::int64_t valid = 0, pop = 0;
          for (int i = 0; i < s.k_h; ++i) {
            const int ih = oh * s.stride_h - s.pad_top + i * s.dilation_h;
            if (ih < 0 || ih >= s.in_h) continue;
            for (int j = 0; j < s.k_w; ++j) {
              const int iw = ow * s.stride_w - s.pad_left + j * s.dilation_w;
              if (iw < 0 || iw >= s.in_w) continue;
              const PackedWord* x =
                  packed.data() + ((static_cast<std::int64_t>(n) * s.in_h + ih) * s.in_w + iw) * words;
              const PackedWord* w = a.filter + ((static_cast<std::int64_t>(c) * s.k_h + i) * s.k_w + j) * words;
              for (int q = 0; q < words; ++q) {
                pop += popcount32(static_cast<std::uint32_t>(x[q]) ^ static_cast<std::uint32_t>(w[q]));
              }
              valid += s.in_c;
            }
          }
          out[c] = output_stage(valid - 2 * pop, a.alpha[c], k, a.bias, c, a.relu);
        }
      }
    }
  }
}

void dense_reference(const DenseArgs& a) {
  const int words = packed_words(a.in_features);
  std::vector<PackedWord> packed(static_cast<std::size_t>(a.batch) * words);
  pack_rows_portable(a.input, a.batch, a.in_features, packed.data(), nullptr, serial_for);
  for (int n = 0; n < a.batch; ++n) {
    float k = 1.0f;
    if (a.use_k) {
      float sum = 0.0f;
      for (int c = 0; c < a.in_features; ++c) sum += std::fabs(a.input[static_cast<std::int64_t>(n) * a.in_features + c]);
      k = sum / static_cast<float>(a.in_features);
    }
    const PackedWord* x = packed.data() + static_cast<std::int64_t>(n) * words;
    for (int u = 0; u < a.units; ++u) {
      const PackedWord* w = a.filter + static_cast<std::int64_t>(u) * words;
      std::int64_t pop = 0;
      for (int q = 0; q < words; ++q) {
        pop += popcount32(static_cast<std::uint32_t>(x[q]) ^ static_cast<std::uint32_t>(w[q]));
      }
      a.output[static_cast<std::int64_t>(n) * a.units + u] =
          output_stage(a.in_features - 2 * pop, a.alpha[u], k, a.bias, u, a.relu);
    }
  }
}

}  // namespace internal
}  // namespace keras_xnor
