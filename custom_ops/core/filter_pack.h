// Sign-bit packing of a float filter in the layout Keras stores it, straight into the layout the
// binary kernels read: the input-channel axis (second to last) is packed, and the output axis
// (last) moves to the front. The same pass gives each output filter's mean |w|, the alpha of
// eq. 6 (Rastegari et al. 2016), so inference reads the latent weights once for both.
//
//   filter    float [taps, in_c, out_c] row-major: a Conv2D kernel HWIO (taps = k_h * k_w) or a
//             Dense kernel [in_c, units] (taps = 1)
//   packed    PackedWord [out_c, taps, packed_words(in_c)]: OHWI packed along I, or
//             [units, packed_words(in_c)]
//   mean_abs  float [out_c] or nullptr: sum over taps and in_c of |w| / (taps * in_c), summed
//             in double (so it may differ from a float32 reduction in the last bit)
//
// Bit convention as in spec.h (set bit = x < 0, sign(0) = +1, padding bits 0), so `packed`
// equals pack_bits(transpose(filter, [last, 0, ..., -2])) bit for bit without the transposed
// float copy. No alignment required; thread-safe (no shared state); results do not depend on
// the parallel split.
#ifndef KERAS_XNOR_CORE_FILTER_PACK_H_
#define KERAS_XNOR_CORE_FILTER_PACK_H_

#include <cstdint>

#include "custom_ops/core/parallel.h"
#include "custom_ops/core/spec.h"

namespace keras_xnor {

void pack_filter(const float* filter, std::int64_t taps, int in_c, int out_c, PackedWord* packed,
                 float* mean_abs = nullptr, const ParallelFor& parallel_for = serial_for);

}  // namespace keras_xnor

#endif  // KERAS_XNOR_CORE_FILTER_PACK_H_
