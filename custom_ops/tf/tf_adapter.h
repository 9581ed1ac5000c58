// Helpers shared by the TensorFlow adapters of the keras-xnor core (custom_ops/tf/*_op.cc).
//
// The adapters only validate and translate: tensors in, a core call, tensors out. Everything
// here is glue, with no arithmetic on tensor values:
//  * parallel_for_from(context) runs the core's ParallelFor (custom_ops/core/parallel.h) on
//    TF's intra-op thread pool, so the kernels use the threads the user gave TF
//    (tf.config.threading.set_intra_op_parallelism_threads).
//  * validation helpers that return readable messages, used both by the shape functions (at
//    graph construction) and by the kernels (at run time, where shapes are finally known).
//
// Testing hook: when the environment variable KERAS_XNOR_TF_FIXED_BLOCK_SIZE is set to a
// positive integer when the first op runs, work is split into chunks of that many units
// (even on one thread) instead of the default chunking, so tests can force many small ranges.
#ifndef KERAS_XNOR_TF_TF_ADAPTER_H_
#define KERAS_XNOR_TF_TF_ADAPTER_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "custom_ops/core/bitpack.h"
#include "custom_ops/core/parallel.h"
#include "custom_ops/core/xnor_conv2d.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace keras_xnor {
namespace tf_adapter {

// Statuses whose message is the arguments concatenated (absl::StrCat), in place of
// tensorflow::errors::InvalidArgument / ResourceExhausted, which TensorFlow deprecated.
template <typename... Args>
absl::Status invalid_argument(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}
template <typename... Args>
absl::Status resource_exhausted(const Args&... args) {
  return absl::ResourceExhaustedError(absl::StrCat(args...));
}

// A spin-wait hint to the CPU (pause on x86).
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

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

// Shared state of one parallel_for_from call: whichever thread is free claims the next range,
// the caller from the back, the pool's threads from the front (GuidedRanges in
// custom_ops/core/parallel.h).
struct ParallelRun {
  GuidedRanges ranges;
  std::atomic<std::int64_t> done{0};  // units whose fn call has returned
  std::int64_t units = 0;
  const RangeFn* fn = nullptr;  // valid until done == units (the caller waits for that)

  // Claims and runs ranges at `end` until none is left.
  void work(GuidedRanges::End end_to_claim) {
    std::int64_t begin, end;
    while (ranges.claim(&begin, &end, end_to_claim)) {
      (*fn)(begin, end);
      done.fetch_add(end - begin, std::memory_order_acq_rel);
    }
  }
};

// Work below this many cost units (the core's "simple operations") runs on the caller: waking a
// pool thread costs more than it saves.
inline constexpr std::int64_t kMinParallelCost = 20000;

// The core's ParallelFor on top of the op's intra-op thread pool
// (tf.config.threading.set_intra_op_parallelism_threads): the caller runs ranges itself,
// claimed from the back of the job, and NumThreads() - 1 pool closures join it, claiming guided
// ranges from the front.
// Compared with the pool's own ParallelFor this starts work at once on the caller (no wake-up
// on the critical path), keeps at most NumThreads() threads busy even when the caller is not a
// pool thread, and a closure that starts after the last range was claimed just returns.
// Results do not depend on the split (the core's contract). The returned function refers to
// the pool, which lives as long as the device: use it within Compute() only.
inline ParallelFor parallel_for_from(tensorflow::OpKernelContext* context) {
  auto* workers = context->device()->tensorflow_cpu_worker_threads()->workers;
  return [workers](std::int64_t n, std::int64_t cost_per_unit, const RangeFn& fn) {
    if (n <= 0) return;
    const std::int64_t forced = forced_block_size();
    const int threads = workers == nullptr ? 1 : workers->NumThreads();
    const std::int64_t cost = std::max<std::int64_t>(cost_per_unit, 1);
    if (forced == 0 && (threads <= 1 || n == 1 || cost * n < kMinParallelCost)) {
      fn(0, n);
      return;
    }
    auto run = std::make_shared<ParallelRun>();
    run->units = n;
    run->ranges.reset(n, threads, forced);
    run->fn = &fn;
    const std::int64_t ranges_at_most = (n + run->ranges.min_units() - 1) / run->ranges.min_units();
    const std::int64_t helpers = std::min<std::int64_t>(threads - 1, ranges_at_most - 1);
    for (std::int64_t h = 0; h < helpers; ++h) {
      workers->Schedule([run] { run->work(GuidedRanges::End::kFront); });
    }
    run->work(GuidedRanges::End::kBack);
    // Every unit is claimed; wait for the ranges other threads are still running.
    for (int spins = 0; run->done.load(std::memory_order_acquire) < run->units; ++spins) {
      if (spins < 4096) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  };
}

// An op attribute's declaration for REGISTER_OP: "name: type".
inline std::string attr_spec(const char* name, const char* type) {
  return absl::StrCat(name, ": ", type);
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

// Kernel extents supported by the core (spec.h).
inline std::string check_kernel_size(std::int64_t k_h, std::int64_t k_w) {
  if (k_h < 1 || k_h > kMaxKernelSize || k_w < 1 || k_w > kMaxKernelSize) {
    return "kernel size must be between 1 and " + std::to_string(kMaxKernelSize) +
           " in both dimensions, got " + std::to_string(k_h) + "x" + std::to_string(k_w);
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

// How an op names its operands in messages: conv {"channels", "tap", "filter"},
// dense {"features", "unit", "unit"}.
struct OperandNouns {
  const char* channels;  // what the input's last axis counts
  const char* word_of;   // what one row of packed filter words belongs to
  const char* output;    // one output channel
};

// Shape functions: the input's and the filter's last axes against the in_channels attribute
// (the filter holds packed_words(in_channels) words per row).
inline absl::Status check_channel_dims(tensorflow::shape_inference::InferenceContext* c,
                                       const char* op,
                                       tensorflow::shape_inference::ShapeHandle input,
                                       tensorflow::shape_inference::ShapeHandle filter,
                                       int in_channels, const OperandNouns& nouns) {
  const auto input_c = c->Dim(input, c->Rank(input) - 1);
  const auto filter_words = c->Dim(filter, c->Rank(filter) - 1);
  if (c->ValueKnown(input_c) && c->Value(input_c) != in_channels) {
    return invalid_argument(op, ": input has ", c->Value(input_c), " ", nouns.channels,
                            " but the in_channels attribute is ", in_channels);
  }
  if (c->ValueKnown(filter_words) && c->Value(filter_words) != packed_words(in_channels)) {
    return invalid_argument(op, ": filter has ", c->Value(filter_words), " packed words per ",
                            nouns.word_of, " but ", in_channels, " ", nouns.channels, " need ",
                            packed_words(in_channels));
  }
  return absl::OkStatus();
}

// Shape functions: alpha and bias have one value per output (the filter's first axis);
// `outputs` receives the merged dimension.
inline absl::Status merge_output_dims(tensorflow::shape_inference::InferenceContext* c,
                                      const char* op,
                                      tensorflow::shape_inference::ShapeHandle filter,
                                      tensorflow::shape_inference::ShapeHandle alpha,
                                      tensorflow::shape_inference::ShapeHandle bias,
                                      const OperandNouns& nouns,
                                      tensorflow::shape_inference::DimensionHandle* outputs) {
  *outputs = c->Dim(filter, 0);
  if (!c->Merge(*outputs, c->Dim(alpha, 0), outputs).ok() ||
      !c->Merge(*outputs, c->Dim(bias, 0), outputs).ok()) {
    return invalid_argument(
        op, ": alpha and bias must have one value per ", nouns.output, " (",
        c->DebugString(c->Dim(filter, 0)), "), got ", c->DebugString(c->Dim(alpha, 0)), " and ",
        c->DebugString(c->Dim(bias, 0)));
  }
  return absl::OkStatus();
}

// Run time: the same checks as check_channel_dims on the actual tensors.
inline absl::Status check_channel_sizes(const char* op, const tensorflow::Tensor& input,
                                        const tensorflow::Tensor& filter, int in_channels,
                                        const OperandNouns& nouns) {
  const std::int64_t input_c = input.dim_size(input.dims() - 1);
  const std::int64_t filter_words = filter.dim_size(filter.dims() - 1);
  if (input_c != in_channels) {
    return invalid_argument(op, ": input has ", input_c, " ", nouns.channels,
                            " but the in_channels attribute is ", in_channels);
  }
  if (filter_words != packed_words(in_channels)) {
    return invalid_argument(op, ": filter has ", filter_words, " packed words per ",
                            nouns.word_of, " but ", in_channels, " ", nouns.channels, " need ",
                            packed_words(in_channels));
  }
  return absl::OkStatus();
}

// Run time, after check_channel_sizes: the filter's padding bits are 0 past the last channel
// (the kernels would count a set one). One word per filter row; an op skips it for a filter
// buffer its cache holds, which was checked when first seen and cannot have changed since.
inline absl::Status check_filter_padding(const char* op, const tensorflow::Tensor& filter,
                                         int in_channels, const OperandNouns& nouns) {
  const std::int64_t words = filter.dim_size(filter.dims() - 1);
  const std::int64_t rows = words == 0 ? 0 : filter.NumElements() / words;
  const std::int64_t bad_row = first_row_with_padding_bits(
      filter.flat<PackedWord>().data(), rows, in_channels);
  if (bad_row >= 0) {
    return invalid_argument(op, ": filter row ", bad_row, " (flattened over all axes but the ",
                            "last) has padding bits set past its ", in_channels, " ",
                            nouns.channels, "; they must be 0 (pack weights with ",
                            "KerasXnorPackFilter / keras_xnor.ops.pack_filter)");
  }
  return absl::OkStatus();
}

// Run time: alpha and bias have one value per output (the filter's first axis).
inline absl::Status check_output_sizes(const char* op, const tensorflow::Tensor& filter,
                                       const tensorflow::Tensor& alpha,
                                       const tensorflow::Tensor& bias,
                                       const OperandNouns& nouns) {
  const std::int64_t outputs = filter.dim_size(0);
  if (alpha.dim_size(0) != outputs || bias.dim_size(0) != outputs) {
    return invalid_argument(
        op, ": alpha and bias must have one value per ", nouns.output, " (", outputs, "), got ",
        alpha.dim_size(0), " and ", bias.dim_size(0));
  }
  return absl::OkStatus();
}

}  // namespace tf_adapter
}  // namespace keras_xnor

#endif  // KERAS_XNOR_TF_TF_ADAPTER_H_
