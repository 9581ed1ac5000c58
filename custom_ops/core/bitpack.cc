#include "custom_ops/core/bitpack.h"

#include <cstring>

#include "custom_ops/core/xnor_conv2d.h"
#include "custom_ops/core/xnor_kernels.h"

namespace keras_xnor {

void pack_bits(const float* in, std::int64_t rows, int channels, PackedWord* out,
               const ParallelFor& parallel_for) {
  if (kernel_path_available(KernelPath::kAvx2)) {
    // Same sign rule (ordered x < 0) with compare + movemask, 8 channels per instruction.
    internal::pack_rows_avx2(in, rows, channels, out, nullptr, parallel_for);
    return;
  }
  // Portable: the sign test is `x < 0`, so +0, -0 and NaN all map to +1 (bit 0).
  internal::pack_rows_portable(in, rows, channels, out, nullptr, parallel_for);
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

std::int64_t first_row_with_padding_bits(const PackedWord* in, std::int64_t rows, int channels) {
  const int used = channels % kBitsPerWord;
  if (used == 0) return -1;  // no padding bits
  const int words = packed_words(channels);
  const std::uint32_t padding = ~((1u << used) - 1u);
  for (std::int64_t r = 0; r < rows; ++r) {
    if (static_cast<std::uint32_t>(in[r * words + words - 1]) & padding) return r;
  }
  return -1;
}

}  // namespace keras_xnor
