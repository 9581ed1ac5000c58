// pack_filter (filter_pack.h): one task per tap; the float rows of a tap are read in order
// (out_c contiguous floats per input channel) and each output channel's word is built in a
// small per-thread array, then stored at its strided place in the OHWI result.
#include "custom_ops/core/filter_pack.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace keras_xnor {

void pack_filter(const float* filter, std::int64_t taps, int in_c, int out_c, PackedWord* packed,
                 const ParallelFor& parallel_for) {
  const int words = packed_words(in_c);
  const std::int64_t row_words = taps * words;  // packed words per output channel
  parallel_for(taps, static_cast<std::int64_t>(in_c) * out_c,
               [&](std::int64_t begin, std::int64_t end) {
    std::vector<std::uint32_t> acc(static_cast<std::size_t>(out_c));
    for (std::int64_t t = begin; t < end; ++t) {
      for (int w = 0; w < words; ++w) {
        std::fill(acc.begin(), acc.end(), 0u);
        const int bits = std::min(kBitsPerWord, in_c - w * kBitsPerWord);
        for (int b = 0; b < bits; ++b) {
          const float* row = filter + (t * in_c + w * kBitsPerWord + b) * out_c;
          for (int o = 0; o < out_c; ++o) {
            acc[o] |= static_cast<std::uint32_t>(row[o] < 0.0f) << b;
          }
        }
        for (int o = 0; o < out_c; ++o) {
          packed[o * row_words + t * words + w] = static_cast<PackedWord>(acc[o]);
        }
      }
    }
  });
}

}  // namespace keras_xnor
