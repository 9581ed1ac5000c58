// Facts the C++ kernels share with the Python package (keras_xnor/spec.py).
// tests/test_spec.py checks the two agree: change both together.
//
// Bit convention:
//  * sign(x) = -1 if x < 0 else +1: sign(0) = +1, sign(-0.0) = +1, sign(NaN) = +1.
//  * A packed word holds 32 channels: channel c is bit (c % 32) of word (c / 32), LSB first.
//    A set bit means -1, a clear bit means +1.
//  * Channel padding bits are 0 in activations and weights, so they XOR to 0 and add nothing
//    to a popcount: dot = n - 2 * popcount(a XOR b), n = number of real products.
//  * SAME padding: a padded tap contributes 0 to the dot (not +1 or -1) and 0 to K.
#ifndef KERAS_XNOR_CORE_SPEC_H_
#define KERAS_XNOR_CORE_SPEC_H_

#include <cstdint>

namespace keras_xnor {

inline constexpr const char kOpPrefix[] = "KerasXnor";
inline constexpr const char kPackBitsOp[] = "KerasXnorPackBits";
inline constexpr const char kBinConv2DOp[] = "KerasXnorBinConv2D";
inline constexpr const char kBinDenseOp[] = "KerasXnorBinDense";
inline constexpr const char kPackFilterOp[] = "KerasXnorPackFilter";

inline constexpr int kBitsPerWord = 32;
inline constexpr int kNegativeBit = 1;
inline constexpr const char kBitOrder[] = "lsb_first";

inline constexpr const char kAttrStrides[] = "strides";
inline constexpr const char kAttrPadding[] = "padding";
inline constexpr const char kAttrDilations[] = "dilations";
inline constexpr const char kAttrInChannels[] = "in_channels";
inline constexpr const char kAttrUseK[] = "use_k";
inline constexpr const char kAttrRelu[] = "relu";

inline constexpr const char kPaddingSame[] = "SAME";
inline constexpr const char kPaddingValid[] = "VALID";

inline constexpr int kSpecVersion = 1;

// Kernel heights and widths the binary conv serves: 1 .. kMaxKernelSize. The layers run a
// larger kernel as the float simulation, and export it that way.
inline constexpr int kMaxKernelSize = 11;

// One packed word as stored in tensors (TF and TFLite int32); kernels read it as uint32_t.
using PackedWord = std::int32_t;

inline constexpr int packed_words(int channels) {
  return (channels + kBitsPerWord - 1) / kBitsPerWord;
}

}  // namespace keras_xnor

#endif  // KERAS_XNOR_CORE_SPEC_H_
