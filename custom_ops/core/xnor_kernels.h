// Internal interface between the public entry points (xnor_conv2d.cc) and the per-path
// implementations (reference, portable, AVX2). Not part of the public API.
//
// Every implementation receives a validated, resolved Conv2DShape (resolve_conv2d_shape
// returned "") and non-null input/filter/alpha/output pointers; bias may be null. Layouts and
// the bit convention are those of xnor_conv2d.h and spec.h. Implementations are thread-safe
// and give identical results for any split chosen by `parallel_for`.
#ifndef KERAS_XNOR_CORE_XNOR_KERNELS_H_
#define KERAS_XNOR_CORE_XNOR_KERNELS_H_

#include <cstdint>

#include "custom_ops/core/parallel.h"
#include "custom_ops/core/spec.h"
#include "custom_ops/core/xnor_conv2d.h"

namespace keras_xnor {
namespace internal {

struct ConvArgs {
  Conv2DShape shape;
  const float* input = nullptr;
  const PackedWord* filter = nullptr;
  const float* alpha = nullptr;
  const float* bias = nullptr;
  bool use_k = false;
  bool relu = false;
  float* output = nullptr;
};

struct DenseArgs {
  int batch = 0, in_features = 0, units = 0;
  const float* input = nullptr;
  const PackedWord* filter = nullptr;
  const float* alpha = nullptr;
  const float* bias = nullptr;
  bool use_k = false;
  bool relu = false;
  float* output = nullptr;
};

// The oracle: plain loops, no blocking, serial (ignores parallel_for).
void conv2d_reference(const ConvArgs& args);
void dense_reference(const DenseArgs& args);

}  // namespace internal
}  // namespace keras_xnor

#endif  // KERAS_XNOR_CORE_XNOR_KERNELS_H_
