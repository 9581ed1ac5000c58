// XNOR-Net binary convolution and binary fully connected layer (Rastegari et al. 2016, eq. 11).
//
//   out[n,h,w,c] = dot[n,h,w,c] * alpha[c] * K[n,h,w] + bias[c]       (then ReLU if asked)
//   dot          = sum over valid taps and channels of sign(I) * sign(W)
//                = n_valid - 2 * popcount(packed(I) XOR packed(W))
//   K[n,h,w]     = box filter 1/(kh*kw) over A = mean_c |I[n,:,:,c]|, with the conv's
//                  stride/padding/dilation, zero padding (the divisor is always kh*kw).
//                  K = 1 when use_k is false.
//
// Layouts:
//   input   float NHWC [batch, in_h, in_w, in_c]
//   filter  PackedWord [out_c, k_h, k_w, packed_words(in_c)]  (OHWI, packed along I; spec.h)
//   alpha   float [out_c] (required), bias float [out_c] or nullptr
//   output  float NHWC [batch, out_h, out_w, out_c]
// Padding and output size follow TensorFlow: VALID out = ceil((in - (k-1)*d) / s);
// SAME out = ceil(in / s), pad_total = max((out-1)*s + (k-1)*d + 1 - in, 0), pad_top = total/2.
// A padded tap contributes 0 to the dot (it is excluded, not treated as +1 or -1).
//
// The integer part (dot) is exact. Threads come from `parallel_for`; results are identical for
// any split. Calls are thread-safe: no shared mutable state.
//
// Memory: no caller buffer is read or written outside the extents above (no over-read, no
// alignment requirement). Per-call work buffers (the packed input, im2col blocks, a transposed
// copy of small filters) are thread_local scratch that grows to the largest call seen and is
// reused, so steady-state calls do not allocate.
//
// Out of memory: the *_checked entry points return false when a work buffer (or a prepared
// filter) cannot be allocated; the output is then unspecified and nothing leaks (adapters turn
// it into their framework's error: ResourceExhausted in TF, kTfLiteError in TFLite). The
// unchecked void / value-returning functions throw std::bad_alloc on the calling thread
// instead (never from a pool thread).
//
// Paths (KernelPath): kReference is the oracle (plain loops, serial). kPortable is plain C++17
// (uint64 XOR + popcount, 4 pixels x 2 channels register tile; on x86 the tile is built with
// and without POPCNT and the loader picks). kAvx2 (*_avx2.cc, used only after a CPUID check)
// packs signs with compare+movemask and runs vpshufb-popcount tiles with the output stage
// fused per tile: by default output channels in vector lanes on a zero-padded input read in
// place (xnor_conv2d_channel_lanes_avx2.cc: a popcount-table tile, see custom_ops/core/README.md),
// pixels in lanes over im2col blocks for small outputs (xnor_gemm_{16x4,8x8}_avx2.cc); the
// dense layer runs as a 1x1 conv on a 1 x batch image from batch 8 (from batch 2 with a
// PreparedDenseFilter), below that a GEMV kernel (xnor_gemv_1x4_avx2.cc). On CPUs with
// AVX512F + AVX512_VPOPCNTDQ, kAvx2 runs a VPOPCNTD channel-lane driver instead of the AVX2
// channel-lane one (xnor_conv2d_vpopcnt_avx512.cc; bitwise the same output). For every path the
// float part is (dot * alpha) * K + bias in float32, K summed over taps in (kh, kw) order; the
// fast paths may differ from the reference in the last bits of K (channel-sum order) only.
#ifndef KERAS_XNOR_CORE_XNOR_CONV2D_H_
#define KERAS_XNOR_CORE_XNOR_CONV2D_H_

#include <cstdint>
#include <memory>
#include <string>

#include "custom_ops/core/parallel.h"
#include "custom_ops/core/spec.h"

namespace keras_xnor {

enum class Padding { kValid, kSame };

// Which implementation runs. kAuto picks the fastest one the CPU supports (checked once, at
// run time); the others exist for tests and benchmarks. kReference is plain loops (the oracle).
enum class KernelPath { kAuto, kReference, kPortable, kAvx2 };

struct Conv2DShape {
  // Set by the caller.
  int batch = 0, in_h = 0, in_w = 0, in_c = 0;
  int out_c = 0, k_h = 0, k_w = 0;
  int stride_h = 1, stride_w = 1, dilation_h = 1, dilation_w = 1;
  Padding padding = Padding::kValid;
  // Filled by resolve_conv2d_shape.
  int out_h = 0, out_w = 0, pad_top = 0, pad_left = 0;
};

// Validates the caller's fields and fills out_h/out_w/pad_top/pad_left. Returns "" when the
// shape is valid, else a readable message (kernel 1..kMaxKernelSize of spec.h, strides and
// dilations >= 1, sizes > 0, output not empty).
std::string resolve_conv2d_shape(Conv2DShape* shape);

// Parses "SAME" / "VALID"; returns false for anything else.
bool parse_padding(const std::string& text, Padding* padding);

// True when this build and this CPU can run `path` (kAuto and kReference always can).
bool kernel_path_available(KernelPath path);
// The path kAuto resolves to on this CPU: "avx2+avx512" (kAvx2 with the VPOPCNTD driver on
// AVX512F + AVX512_VPOPCNTDQ CPUs, unless KERAS_XNOR_AVX512=0), "avx2" or "portable".
const char* auto_kernel_path_name();

void xnor_conv2d(const Conv2DShape& shape, const float* input, const PackedWord* filter,
                 const float* alpha, const float* bias, bool use_k, bool relu, float* output,
                 const ParallelFor& parallel_for = serial_for,
                 KernelPath path = KernelPath::kAuto);
// xnor_conv2d that returns false instead of throwing when out of memory (see the header).
[[nodiscard]] bool xnor_conv2d_checked(const Conv2DShape& shape, const float* input,
                                       const PackedWord* filter, const float* alpha,
                                       const float* bias, bool use_k, bool relu, float* output,
                                       const ParallelFor& parallel_for = serial_for,
                                       KernelPath path = KernelPath::kAuto);

namespace internal {
struct PreparedFilterData;
}  // namespace internal

// A conv filter prepared once for many calls with the same weights (inference; the TFLite
// delegate prepares at Prepare time, where the filter is a constant tensor). It holds a copy of
// the packed filter and, on AVX2 CPUs, the channel-lane driver's filter layout (nibble bytes
// for its table tile; on AVX-512 CPUs the VPOPCNTD driver's words instead) with the per-tap
// weight popcounts, so a call does no filter work at all. Immutable once made: copies share the
// data, and it may be used by several threads at once. Training changes the weights every step
// and keeps using the plain-filter xnor_conv2d.
struct PreparedConv2DFilter {
  bool empty() const { return data == nullptr; }
  // True when a conv of `shape` may use it (same in_c, out_c, k_h, k_w; the other fields,
  // including padding, may differ).
  bool matches(const Conv2DShape& shape) const;
  std::shared_ptr<const internal::PreparedFilterData> data;  // opaque
};

// Prepares `filter` (layout as for xnor_conv2d) for shape's in_c, out_c, k_h, k_w.
// Precondition: resolve_conv2d_shape(&shape) returned "" (use it to validate first).
// Cost: about one conv call's filter work; uses `parallel_for` for it.
PreparedConv2DFilter prepare_conv2d_filter(const Conv2DShape& shape, const PackedWord* filter,
                                           const ParallelFor& parallel_for = serial_for);
// prepare_conv2d_filter that returns false (and leaves *prepared empty) instead of throwing
// when out of memory.
[[nodiscard]] bool prepare_conv2d_filter_checked(const Conv2DShape& shape, const PackedWord* filter,
                                                 PreparedConv2DFilter* prepared,
                                                 const ParallelFor& parallel_for = serial_for);

// xnor_conv2d with a prepared filter: same results, bit for bit, as with the plain filter.
// Precondition: !filter.empty() && filter.matches(shape) (checked; aborts with a message
// otherwise, as it is a programming error).
void xnor_conv2d(const Conv2DShape& shape, const float* input,
                 const PreparedConv2DFilter& filter, const float* alpha, const float* bias,
                 bool use_k, bool relu, float* output,
                 const ParallelFor& parallel_for = serial_for,
                 KernelPath path = KernelPath::kAuto);
[[nodiscard]] bool xnor_conv2d_checked(const Conv2DShape& shape, const float* input,
                                       const PreparedConv2DFilter& filter, const float* alpha,
                                       const float* bias, bool use_k, bool relu, float* output,
                                       const ParallelFor& parallel_for = serial_for,
                                       KernelPath path = KernelPath::kAuto);

// Binary fully connected layer: a conv whose kernel covers the whole input, so
// K[n] = mean |input[n,:]| (use_k) and dot = in_features - 2 * popcount.
//   input [batch, in_features] float, filter [units, packed_words(in_features)] PackedWord,
//   alpha [units], bias [units] or nullptr, output [batch, units].
// Validates a dense layer's sizes (all >= 1 and within range). Returns "" or a message.
std::string check_dense_shape(int batch, int in_features, int units);

// A dense filter prepared once for many calls with the same weights, as PreparedConv2DFilter
// (for batches from kPreparedDenseMinBatch, below: the TFLite delegate prepares constant
// filters at Prepare, the TF op weights it sees twice).
// On AVX2 CPUs it holds the channel-lane table layout, with which batches of 2 rows or more
// run as a 1 x batch image on the channel-lane driver; a single row keeps the GEMV on the
// packed copy. Immutable once made; copies share the data.
struct PreparedDenseFilter {
  bool empty() const { return data == nullptr; }
  // True when a dense layer of these sizes may use it.
  bool matches(int in_features, int units) const;
  std::shared_ptr<const internal::PreparedFilterData> data;  // opaque
};

// Batches below this run the GEMV on the packed filter, prepared or not: adapters prepare a
// dense filter only for batches from it (a prepared dense filter takes ~3x the packed
// filter's memory: a copy of it and the table layout, a byte per 4 input features).
inline constexpr int kPreparedDenseMinBatch = 2;

// Prepares `filter` (layout as for xnor_dense). Precondition: check_dense_shape(1,
// in_features, units) returned "". Cost: about one call's filter work; uses `parallel_for`.
PreparedDenseFilter prepare_dense_filter(int in_features, int units, const PackedWord* filter,
                                         const ParallelFor& parallel_for = serial_for);
// prepare_dense_filter that returns false (and leaves *prepared empty) instead of throwing
// when out of memory.
[[nodiscard]] bool prepare_dense_filter_checked(int in_features, int units,
                                                const PackedWord* filter,
                                                PreparedDenseFilter* prepared,
                                                const ParallelFor& parallel_for = serial_for);

void xnor_dense(int batch, int in_features, int units, const float* input,
                const PackedWord* filter, const float* alpha, const float* bias, bool use_k,
                bool relu, float* output, const ParallelFor& parallel_for = serial_for,
                KernelPath path = KernelPath::kAuto);
[[nodiscard]] bool xnor_dense_checked(int batch, int in_features, int units, const float* input,
                                      const PackedWord* filter, const float* alpha,
                                      const float* bias, bool use_k, bool relu, float* output,
                                      const ParallelFor& parallel_for = serial_for,
                                      KernelPath path = KernelPath::kAuto);

// xnor_dense with a prepared filter: same results, bit for bit, as with the plain filter.
// Precondition: !filter.empty() && filter.matches(in_features, units) (checked; aborts with a
// message otherwise, as it is a programming error).
void xnor_dense(int batch, int in_features, int units, const float* input,
                const PreparedDenseFilter& filter, const float* alpha, const float* bias,
                bool use_k, bool relu, float* output,
                const ParallelFor& parallel_for = serial_for,
                KernelPath path = KernelPath::kAuto);
[[nodiscard]] bool xnor_dense_checked(int batch, int in_features, int units, const float* input,
                                      const PreparedDenseFilter& filter, const float* alpha,
                                      const float* bias, bool use_k, bool relu, float* output,
                                      const ParallelFor& parallel_for = serial_for,
                                      KernelPath path = KernelPath::kAuto);

}  // namespace keras_xnor

#endif  // KERAS_XNOR_CORE_XNOR_CONV2D_H_
