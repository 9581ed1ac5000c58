// Sign-bit packing of float tensors along their last (channel) axis.
//
// Layout: `in` is `rows x channels` floats, row-major (NHWC flattened to rows = N*H*W).
// `out` is `rows x packed_words(channels)` PackedWords, row-major. Bit convention as in spec.h:
// channel c -> bit c % 32 of word c / 32; set bit = -1 (x < 0); sign(0) = +1; padding bits 0.
// No alignment required; reads exactly rows*channels floats and writes exactly
// rows*packed_words(channels) words. Thread-safe (no shared state).
#ifndef KERAS_XNOR_CORE_BITPACK_H_
#define KERAS_XNOR_CORE_BITPACK_H_

#include <cstdint>

#include "custom_ops/core/parallel.h"
#include "custom_ops/core/spec.h"

namespace keras_xnor {

void pack_bits(const float* in, std::int64_t rows, int channels, PackedWord* out,
               const ParallelFor& parallel_for = serial_for);

// Inverse of pack_bits: writes -1.0f / +1.0f for each of `channels` channels of each row.
void unpack_bits(const PackedWord* in, std::int64_t rows, int channels, float* out);

// The first row of packed words (`rows x packed_words(channels)`, as pack_bits writes them)
// whose padding bits are not all 0, or -1 when there is none. The kernels rely on 0 padding
// bits (a set one would count as a channel that is not there), so the adapters check packed
// weights that come from outside with this. Reads only the last word of each row.
std::int64_t first_row_with_padding_bits(const PackedWord* in, std::int64_t rows, int channels);

}  // namespace keras_xnor

#endif  // KERAS_XNOR_CORE_BITPACK_H_
