// Public entry points of the binary conv / dense core: shape resolution, run-time choice of
// the kernel path, dispatch. The arithmetic lives in xnor_conv2d_{reference,portable}.cc and
// the *_avx2.cc files.
#include "custom_ops/core/xnor_conv2d.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>

#include "custom_ops/core/roofline.h"
#include "custom_ops/core/xnor_kernels.h"

namespace keras_xnor {
namespace {

// Largest supported spatial/channel extent; keeps every index product far from overflow.
constexpr std::int64_t kMaxExtent = std::int64_t{1} << 24;

std::string check_range(const char* name, std::int64_t value, std::int64_t lo, std::int64_t hi) {
  if (value < lo || value > hi) {
    return std::string(name) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
           "], got " + std::to_string(value);
  }
  return "";
}

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") &&
           __builtin_cpu_supports("fma");
  }();
  return has;
#else
  return false;
#endif
}

}  // namespace

std::string resolve_conv2d_shape(Conv2DShape* s) {
  if (s == nullptr) return "shape is null";
  std::string err;
  if (!(err = check_range("batch", s->batch, 1, kMaxExtent)).empty()) return err;
  if (!(err = check_range("input height", s->in_h, 1, kMaxExtent)).empty()) return err;
  if (!(err = check_range("input width", s->in_w, 1, kMaxExtent)).empty()) return err;
  if (!(err = check_range("input channels", s->in_c, 1, kMaxExtent)).empty()) return err;
  if (!(err = check_range("output channels (filters)", s->out_c, 1, kMaxExtent)).empty()) return err;
  if (!(err = check_range("kernel height", s->k_h, 1, kMaxKernelSize)).empty()) return err;
  if (!(err = check_range("kernel width", s->k_w, 1, kMaxKernelSize)).empty()) return err;
  if (!(err = check_range("stride height", s->stride_h, 1, kMaxExtent)).empty()) return err;
  if (!(err = check_range("stride width", s->stride_w, 1, kMaxExtent)).empty()) return err;
  if (!(err = check_range("dilation height", s->dilation_h, 1, kMaxExtent)).empty()) return err;
  if (!(err = check_range("dilation width", s->dilation_w, 1, kMaxExtent)).empty()) return err;
  const std::int64_t span_h = static_cast<std::int64_t>(s->k_h - 1) * s->dilation_h + 1;
  const std::int64_t span_w = static_cast<std::int64_t>(s->k_w - 1) * s->dilation_w + 1;
  std::int64_t out_h, out_w, pad_top = 0, pad_left = 0;
  if (s->padding == Padding::kValid) {
    if (span_h > s->in_h || span_w > s->in_w) {
      return "VALID padding needs an input of at least the dilated kernel size " +
             std::to_string(span_h) + "x" + std::to_string(span_w) + ", got " +
             std::to_string(s->in_h) + "x" + std::to_string(s->in_w) +
             " (use SAME padding or a larger input)";
    }
    out_h = (s->in_h - span_h) / s->stride_h + 1;
    out_w = (s->in_w - span_w) / s->stride_w + 1;
  } else if (s->padding == Padding::kSame) {
    out_h = (s->in_h + s->stride_h - 1) / s->stride_h;
    out_w = (s->in_w + s->stride_w - 1) / s->stride_w;
    const std::int64_t total_h = (out_h - 1) * s->stride_h + span_h - s->in_h;
    const std::int64_t total_w = (out_w - 1) * s->stride_w + span_w - s->in_w;
    pad_top = total_h > 0 ? total_h / 2 : 0;
    pad_left = total_w > 0 ? total_w / 2 : 0;
  } else {
    return "padding must be SAME or VALID";
  }
  if (out_h < 1 || out_w < 1) return "the output would be empty";
  s->out_h = static_cast<int>(out_h);
  s->out_w = static_cast<int>(out_w);
  s->pad_top = static_cast<int>(pad_top);
  s->pad_left = static_cast<int>(pad_left);
  return "";
}

bool parse_padding(const std::string& text, Padding* padding) {
  if (text == kPaddingSame) {
    *padding = Padding::kSame;
    return true;
  }
  if (text == kPaddingValid) {
    *padding = Padding::kValid;
    return true;
  }
  return false;
}

bool kernel_path_available(KernelPath path) {
  switch (path) {
    case KernelPath::kAuto:
    case KernelPath::kReference:
    case KernelPath::kPortable:
      return true;
    case KernelPath::kAvx2:
      return cpu_has_avx2();
  }
  return false;
}

const char* auto_kernel_path_name() {
  if (!cpu_has_avx2()) return "portable";
  return internal::popcount_avx512_available() ? "avx2+avx512" : "avx2";
}

namespace {

// kAuto -> the best available path; an unavailable explicit request falls back to portable
// (never to an illegal instruction).
KernelPath resolve_path(KernelPath path) {
  if (path == KernelPath::kAuto) return cpu_has_avx2() ? KernelPath::kAvx2 : KernelPath::kPortable;
  if (path == KernelPath::kAvx2 && !cpu_has_avx2()) return KernelPath::kPortable;
  return path;
}

}  // namespace

namespace {

internal::LayerOperands operands(const float* input, const PackedWord* filter,
                                 const float* alpha, const float* bias, bool use_k, bool relu,
                                 float* output) {
  internal::LayerOperands o;
  o.input = input;
  o.filter = filter;
  o.alpha = alpha;
  o.bias = bias;
  o.use_k = use_k;
  o.relu = relu;
  o.output = output;
  return o;
}

internal::ConvArgs conv_args(const Conv2DShape& shape, const float* input,
                             const PackedWord* filter, const float* alpha, const float* bias,
                             bool use_k, bool relu, float* output) {
  internal::ConvArgs args{operands(input, filter, alpha, bias, use_k, relu, output)};
  args.shape = shape;
  return args;
}

// Runs one job on the resolved path. False when out of memory (a path's scratch, the
// reference's std::vector, or anything the calling thread allocates on the way); never throws.
template <typename Args>
bool run_path(const Args& args, const ParallelFor& parallel_for, KernelPath path,
              bool (*avx2)(const Args&, const ParallelFor&),
              bool (*portable)(const Args&, const ParallelFor&), void (*reference)(const Args&)) {
  try {
    switch (resolve_path(path)) {
      case KernelPath::kAvx2:
        return avx2(args, parallel_for);
      case KernelPath::kPortable:
        return portable(args, parallel_for);
      default:
        reference(args);
        return true;
    }
  } catch (const std::bad_alloc&) {
    return false;
  }
}

bool run_conv(const internal::ConvArgs& args, const ParallelFor& parallel_for, KernelPath path) {
  return run_path(args, parallel_for, path, internal::conv2d_avx2, internal::conv2d_portable,
                  internal::conv2d_reference);
}

}  // namespace

bool xnor_conv2d_checked(const Conv2DShape& shape, const float* input, const PackedWord* filter,
                         const float* alpha, const float* bias, bool use_k, bool relu,
                         float* output, const ParallelFor& parallel_for, KernelPath path) {
  return run_conv(conv_args(shape, input, filter, alpha, bias, use_k, relu, output), parallel_for,
                  path);
}

void xnor_conv2d(const Conv2DShape& shape, const float* input, const PackedWord* filter,
                 const float* alpha, const float* bias, bool use_k, bool relu, float* output,
                 const ParallelFor& parallel_for, KernelPath path) {
  if (!xnor_conv2d_checked(shape, input, filter, alpha, bias, use_k, relu, output, parallel_for,
                           path)) {
    throw std::bad_alloc();
  }
}

namespace internal {

PreparedFilterData::~PreparedFilterData() { std::free(buffer); }

}  // namespace internal

namespace {

// d->buffer (64-byte aligned) for a uint32 filter layout of `layout_words` followed by
// `tap_words` int32 tap popcounts; false when out of memory.
bool allocate_word_layout(internal::PreparedFilterData* d, std::size_t layout_words,
                          std::size_t tap_words, std::uint32_t** layout, std::int32_t** taps) {
  d->buffer = std::aligned_alloc(64, ((layout_words + tap_words) * 4 + 63) / 64 * 64);
  if (d->buffer == nullptr) return false;
  *layout = static_cast<std::uint32_t*>(d->buffer);
  *taps = reinterpret_cast<std::int32_t*>(*layout + layout_words);
  return true;
}

}  // namespace

bool PreparedConv2DFilter::matches(const Conv2DShape& shape) const {
  return data != nullptr && data->in_c == shape.in_c && data->out_c == shape.out_c &&
         data->k_h == shape.k_h && data->k_w == shape.k_w;
}

bool prepare_conv2d_filter_checked(const Conv2DShape& shape, const PackedWord* filter,
                                   PreparedConv2DFilter* prepared,
                                   const ParallelFor& parallel_for) {
  prepared->data.reset();
  try {
    auto d = std::make_shared<internal::PreparedFilterData>();
    d->in_c = shape.in_c;
    d->out_c = shape.out_c;
    d->k_h = shape.k_h;
    d->k_w = shape.k_w;
    const std::size_t words =
        static_cast<std::size_t>(shape.out_c) * shape.k_h * shape.k_w * packed_words(shape.in_c);
    d->packed.resize(words);  // allocate before reading the filter
    std::copy(filter, filter + words, d->packed.begin());
    if (cpu_has_avx2() && internal::popcount_avx512_available()) {
      // The VPOPCNTD driver's layout: that driver replaces the AVX2 channel-lane one (whose
      // layouts are then not made); the pixel-lane driver and the GEMV read `packed`.
      if (!allocate_word_layout(d.get(), internal::vpopcnt_filter_words(shape),
                                internal::vpopcnt_tap_pop_words(shape), &d->vpopcnt_filter,
                                &d->vpopcnt_tap_pop)) {
        return false;
      }
      internal::prepare_vpopcnt_filter_avx512(shape, d->packed.data(), d->vpopcnt_filter,
                                             d->vpopcnt_tap_pop, parallel_for);
    } else if (cpu_has_avx2()) {
      // The channel-lane driver's filter layout: the table tile's nibble bytes when the shape
      // allows that tile (it then always runs it), else the nibble-planar words.
      if (internal::channel_table_supported(shape)) {
        const std::size_t nibble_bytes = (internal::channel_table_filter_bytes(shape) + 63) / 64 * 64;
        const std::size_t tap_bytes = internal::channel_table_tap_pop_words(shape) * 4;
        d->buffer = std::aligned_alloc(64, nibble_bytes + (tap_bytes + 63) / 64 * 64);
        if (d->buffer == nullptr) return false;
        d->nibble_filter = static_cast<std::uint8_t*>(d->buffer);
        d->nibble_tap_pop = reinterpret_cast<std::int32_t*>(d->nibble_filter + nibble_bytes);
        internal::prepare_channel_table_filter_avx2(shape, d->packed.data(), d->nibble_filter,
                                                    d->nibble_tap_pop, parallel_for);
      } else {
        if (!allocate_word_layout(d.get(), internal::channel_lanes_filter_words(shape),
                                  internal::channel_lanes_tap_pop_words(shape), &d->lanes_filter,
                                  &d->lanes_tap_pop)) {
          return false;
        }
        internal::prepare_channel_lanes_filter_avx2(shape, d->packed.data(), d->lanes_filter,
                                                    d->lanes_tap_pop, parallel_for);
      }
    }
    prepared->data = std::move(d);
    return true;
  } catch (const std::bad_alloc&) {
    return false;
  }
}

PreparedConv2DFilter prepare_conv2d_filter(const Conv2DShape& shape, const PackedWord* filter,
                                           const ParallelFor& parallel_for) {
  PreparedConv2DFilter out;
  if (!prepare_conv2d_filter_checked(shape, filter, &out, parallel_for)) throw std::bad_alloc();
  return out;
}

bool xnor_conv2d_checked(const Conv2DShape& shape, const float* input,
                         const PreparedConv2DFilter& filter, const float* alpha,
                         const float* bias, bool use_k, bool relu, float* output,
                         const ParallelFor& parallel_for, KernelPath path) {
  if (!filter.matches(shape)) {
    std::fprintf(stderr,
                 "keras_xnor::xnor_conv2d: the prepared filter does not match the conv shape "
                 "(in_c %d, out_c %d, kernel %dx%d); prepare it with this shape\n",
                 shape.in_c, shape.out_c, shape.k_h, shape.k_w);
    std::abort();
  }
  internal::ConvArgs args = conv_args(shape, input, filter.data->packed.data(), alpha, bias,
                                      use_k, relu, output);
  internal::copy_prepared_layouts(*filter.data, &args);
  return run_conv(args, parallel_for, path);
}

void xnor_conv2d(const Conv2DShape& shape, const float* input,
                 const PreparedConv2DFilter& filter, const float* alpha, const float* bias,
                 bool use_k, bool relu, float* output, const ParallelFor& parallel_for,
                 KernelPath path) {
  if (!xnor_conv2d_checked(shape, input, filter, alpha, bias, use_k, relu, output, parallel_for,
                           path)) {
    throw std::bad_alloc();
  }
}

std::string check_dense_shape(int batch, int in_features, int units) {
  std::string err;
  if (!(err = check_range("dense batch", batch, 1, kMaxExtent)).empty()) return err;
  if (!(err = check_range("dense input features", in_features, 1, kMaxExtent)).empty()) return err;
  if (!(err = check_range("dense units", units, 1, kMaxExtent)).empty()) return err;
  return "";
}

namespace {

internal::DenseArgs dense_args(int batch, int in_features, int units, const float* input,
                               const PackedWord* filter, const float* alpha, const float* bias,
                               bool use_k, bool relu, float* output) {
  internal::DenseArgs args{operands(input, filter, alpha, bias, use_k, relu, output)};
  args.batch = batch;
  args.in_features = in_features;
  args.units = units;
  return args;
}

bool run_dense(const internal::DenseArgs& args, const ParallelFor& parallel_for, KernelPath path) {
  return run_path(args, parallel_for, path, internal::dense_avx2, internal::dense_portable,
                  internal::dense_reference);
}

// The 1x1 conv whose filter layout a dense filter shares.
Conv2DShape dense_conv_shape(int in_features, int units) {
  Conv2DShape shape;
  shape.batch = shape.in_h = shape.in_w = 1;
  shape.in_c = in_features;
  shape.out_c = units;
  shape.k_h = shape.k_w = 1;
  shape.out_h = shape.out_w = 1;
  return shape;
}

}  // namespace

bool xnor_dense_checked(int batch, int in_features, int units, const float* input,
                        const PackedWord* filter, const float* alpha, const float* bias,
                        bool use_k, bool relu, float* output, const ParallelFor& parallel_for,
                        KernelPath path) {
  return run_dense(dense_args(batch, in_features, units, input, filter, alpha, bias, use_k, relu,
                              output),
                   parallel_for, path);
}

void xnor_dense(int batch, int in_features, int units, const float* input,
                const PackedWord* filter, const float* alpha, const float* bias, bool use_k,
                bool relu, float* output, const ParallelFor& parallel_for, KernelPath path) {
  if (!xnor_dense_checked(batch, in_features, units, input, filter, alpha, bias, use_k, relu,
                          output, parallel_for, path)) {
    throw std::bad_alloc();
  }
}

bool PreparedDenseFilter::matches(int in_features, int units) const {
  return data != nullptr && data->in_c == in_features && data->out_c == units && data->k_h == 1 &&
         data->k_w == 1;
}

bool prepare_dense_filter_checked(int in_features, int units, const PackedWord* filter,
                                  PreparedDenseFilter* prepared, const ParallelFor& parallel_for) {
  PreparedConv2DFilter conv;
  const bool done = prepare_conv2d_filter_checked(dense_conv_shape(in_features, units), filter,
                                                  &conv, parallel_for);
  prepared->data = std::move(conv.data);
  return done;
}

PreparedDenseFilter prepare_dense_filter(int in_features, int units, const PackedWord* filter,
                                         const ParallelFor& parallel_for) {
  PreparedDenseFilter out;
  if (!prepare_dense_filter_checked(in_features, units, filter, &out, parallel_for)) {
    throw std::bad_alloc();
  }
  return out;
}

bool xnor_dense_checked(int batch, int in_features, int units, const float* input,
                        const PreparedDenseFilter& filter, const float* alpha, const float* bias,
                        bool use_k, bool relu, float* output, const ParallelFor& parallel_for,
                        KernelPath path) {
  if (!filter.matches(in_features, units)) {
    std::fprintf(stderr,
                 "keras_xnor::xnor_dense: the prepared filter does not match the dense layer "
                 "(%d input features, %d units); prepare it with these sizes\n",
                 in_features, units);
    std::abort();
  }
  internal::DenseArgs args = dense_args(batch, in_features, units, input,
                                        filter.data->packed.data(), alpha, bias, use_k, relu,
                                        output);
  internal::copy_prepared_layouts(*filter.data, &args);
  return run_dense(args, parallel_for, path);
}

void xnor_dense(int batch, int in_features, int units, const float* input,
                const PreparedDenseFilter& filter, const float* alpha, const float* bias,
                bool use_k, bool relu, float* output, const ParallelFor& parallel_for,
                KernelPath path) {
  if (!xnor_dense_checked(batch, in_features, units, input, filter, alpha, bias, use_k, relu,
                          output, parallel_for, path)) {
    throw std::bad_alloc();
  }
}

}  // namespace keras_xnor
