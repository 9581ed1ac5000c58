// Helpers shared by the TensorFlow adapters of the keras-xnor core (custom_ops/tf/*_op.cc).
//
// The adapters only validate and translate: tensors in, a core call, tensors out. Everything
// here is glue, with no arithmetic on tensor values:
//  * parallel_for_from(context) wraps TF's intra-op thread pool into the core's ParallelFor
//    (custom_ops/core/parallel.h), so the kernels use the threads the user gave TF
//    (tf.config.threading.set_intra_op_parallelism_threads).
//  * validation helpers that return readable messages, used both by the shape functions (at
//    graph construction) and by the kernels (at run time, where shapes are finally known).
//
// Testing hook: when the environment variable KERAS_XNOR_TF_FIXED_BLOCK_SIZE is set to a
// positive integer when the first op runs, work is split into blocks of that many units
// instead of TF's cost model, so tests can force many small concurrent ranges.
#ifndef KERAS_XNOR_TF_TF_ADAPTER_H_
#define KERAS_XNOR_TF_TF_ADAPTER_H_

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "custom_ops/core/parallel.h"
#include "custom_ops/core/xnor_conv2d.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace keras_xnor {
namespace tf_adapter {

// Block size forced by KERAS_XNOR_TF_FIXED_BLOCK_SIZE, or 0 (use TF's cost model).
inline std::int64_t forced_block_size() {
  static const std::int64_t block = [] {
    const char* text = std::getenv("KERAS_XNOR_TF_FIXED_BLOCK_SIZE");
    if (text == nullptr) return std::int64_t{0};
    const long long value = std::atoll(text);
    return value > 0 ? static_cast<std::int64_t>(value) : std::int64_t{0};
  }();
  return block;
}

// The core's ParallelFor on top of the op's intra-op thread pool. The returned function
// refers to the pool, which lives as long as the device: use it within Compute() only.
inline ParallelFor parallel_for_from(tensorflow::OpKernelContext* context) {
  auto* workers = context->device()->tensorflow_cpu_worker_threads()->workers;
  return [workers](std::int64_t n, std::int64_t cost_per_unit, const RangeFn& fn) {
    if (n <= 0) return;
    using Params = tsl::thread::ThreadPool::SchedulingParams;
    const std::int64_t block = forced_block_size();
    if (workers == nullptr || workers->NumThreads() <= 1) {
      if (block > 0) {
        for (std::int64_t b = 0; b < n; b += block) fn(b, std::min(n, b + block));
      } else {
        fn(0, n);
      }
      return;
    }
    const Params params = block > 0 ? Params::Fixed(block)
                                    : Params::Adaptive(std::max<std::int64_t>(cost_per_unit, 1));
    workers->ParallelFor(n, params, [&fn](std::int64_t begin, std::int64_t end) {
      fn(begin, end);
    });
  };
}

// "" when `values` is a list of two integers >= 1, else a message naming the attribute.
inline std::string check_pair(const char* name, const std::vector<std::int32_t>& values) {
  if (values.size() != 2) {
    return std::string(name) + " must have 2 elements [height, width], got " +
           std::to_string(values.size());
  }
  if (values[0] < 1 || values[1] < 1) {
    return std::string(name) + " must be >= 1, got [" + std::to_string(values[0]) + ", " +
           std::to_string(values[1]) + "]";
  }
  return "";
}

inline std::string check_padding(const std::string& text, Padding* padding) {
  if (!parse_padding(text, padding)) {
    return "padding must be \"SAME\" or \"VALID\", got \"" + text + "\"";
  }
  return "";
}

inline std::string check_in_channels(std::int64_t in_channels) {
  if (in_channels < 1 || in_channels > std::numeric_limits<int>::max() - kBitsPerWord) {
    return "in_channels must be >= 1, got " + std::to_string(in_channels);
  }
  return "";
}

// Kernel extents supported by the core.
inline constexpr int kMinKernelSize = 1;
inline constexpr int kMaxKernelSize = 11;

inline std::string check_kernel_size(std::int64_t k_h, std::int64_t k_w) {
  if (k_h < kMinKernelSize || k_h > kMaxKernelSize || k_w < kMinKernelSize ||
      k_w > kMaxKernelSize) {
    return "kernel size must be between " + std::to_string(kMinKernelSize) + " and " +
           std::to_string(kMaxKernelSize) + " in both dimensions, got " + std::to_string(k_h) +
           "x" + std::to_string(k_w);
  }
  return "";
}

// TensorFlow's output size rule (see xnor_conv2d.h); <= 0 means an empty output.
inline std::int64_t conv_output_size(std::int64_t in, int k, int stride, int dilation,
                                     Padding padding) {
  if (padding == Padding::kSame) return (in + stride - 1) / stride;
  const std::int64_t span = in - static_cast<std::int64_t>(k - 1) * dilation;
  return span <= 0 ? 0 : (span + stride - 1) / stride;
}

inline bool fits_int(std::int64_t value) {
  return value >= 0 && value <= std::numeric_limits<int>::max();
}

}  // namespace tf_adapter
}  // namespace keras_xnor

#endif  // KERAS_XNOR_TF_TF_ADAPTER_H_
