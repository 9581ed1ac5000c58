#include "custom_ops/core/bitpack.h"

#include <cstring>

namespace keras_xnor {
namespace {

// Packs one row. The sign test is `x < 0` so that +0, -0 and NaN all map to +1 (bit 0).
void pack_row(const float* in, int channels, PackedWord* out) {
  const int words = packed_words(channels);
  for (int w = 0; w < words; ++w) {
    const int begin = w * kBitsPerWord;
    const int count = channels - begin < kBitsPerWord ? channels - begin : kBitsPerWord;
    std::uint32_t bits = 0;
    for (int b = 0; b < count; ++b) {
      bits |= static_cast<std::uint32_t>(in[begin + b] < 0.0f) << b;
    }
    out[w] = static_cast<PackedWord>(bits);
  }
}

}  // namespace

void pack_bits(const float* in, std::int64_t rows, int channels, PackedWord* out,
               const ParallelFor& parallel_for) {
  const int words = packed_words(channels);
  parallel_for(rows, 2 * channels, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t r = begin; r < end; ++r) pack_row(in + r * channels, channels, out + r * words);
  });
}

void unpack_bits(const PackedWord* in, std::int64_t rows, int channels, float* out) {
  const int words = packed_words(channels);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (int c = 0; c < channels; ++c) {
      const std::uint32_t word = static_cast<std::uint32_t>(in[r * words + c / kBitsPerWord]);
      out[r * channels + c] = (word >> (c % kBitsPerWord)) & 1u ? -1.0f : 1.0f;
    }
  }
}

}  // namespace keras_xnor
