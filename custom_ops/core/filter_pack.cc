// pack_filter (filter_pack.h): one task per block of 16 output channels (64 bytes of each float
// row, a cache line), which walks all rows (tap, input channel) of the filter in order, building
// the block's packed words bit by bit and its |w| sums; the words are then stored at their
// strided places in the OHWI result.
#include "custom_ops/core/filter_pack.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace keras_xnor {
namespace {

constexpr int kBlock = 16;  // output channels per task

}  // namespace

void pack_filter(const float* filter, std::int64_t taps, int in_c, int out_c, PackedWord* packed,
                 float* mean_abs, const ParallelFor& parallel_for) {
  const int words = packed_words(in_c);
  const std::int64_t row_words = taps * words;  // packed words per output channel
  const std::int64_t blocks = (out_c + kBlock - 1) / kBlock;
  parallel_for(blocks, taps * in_c * kBlock, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t block = begin; block < end; ++block) {
      const int o0 = static_cast<int>(block) * kBlock;
      const int n = std::min(kBlock, out_c - o0);
      double sums[kBlock] = {};
      for (std::int64_t t = 0; t < taps; ++t) {
        for (int w = 0; w < words; ++w) {
          std::uint32_t acc[kBlock] = {};
          const int bits = std::min(kBitsPerWord, in_c - w * kBitsPerWord);
          for (int b = 0; b < bits; ++b) {
            const float* row = filter + (t * in_c + w * kBitsPerWord + b) * out_c + o0;
            for (int j = 0; j < n; ++j) {
              acc[j] |= static_cast<std::uint32_t>(row[j] < 0.0f) << b;
              sums[j] += std::fabs(row[j]);
            }
          }
          for (int j = 0; j < n; ++j) {
            packed[(o0 + j) * row_words + t * words + w] = static_cast<PackedWord>(acc[j]);
          }
        }
      }
      if (mean_abs != nullptr) {
        const double count = static_cast<double>(taps) * in_c;
        for (int j = 0; j < n; ++j) mean_abs[o0 + j] = static_cast<float>(sums[j] / count);
      }
    }
  });
}

}  // namespace keras_xnor
