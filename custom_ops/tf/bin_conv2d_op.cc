// TensorFlow op KerasXnorBinConv2D: XNOR-Net binary convolution (Rastegari et al. 2016, eq. 11)
// on the framework-neutral core (custom_ops/core/xnor_conv2d.h).
//
//   input   float NHWC [N, H, W, C]             real-valued; binarized and packed by the core
//   filter  int32 [O, KH, KW, packed_words(C)]  OHWI sign bits (spec.h), 1 <= KH, KW <= 11
//   alpha   float [O]                           per-filter scale (ones when scaling is off)
//   bias    float [O]                           zeros when the layer has no bias
//   output  float NHWC [N, OH, OW, O]
//   out = dot * alpha * K + bias (ReLU if `relu`), K = box filter over mean_c |input|
//   (1 when not `use_k`), TF's SAME/VALID output size, padded taps add 0 to dot and K.
//
// Attributes (also the keys of the TFLite custom op's FlexBuffer options; spec.h):
//   strides [sh, sw], padding "SAME" | "VALID", dilations [dh, dw], in_channels C,
//   use_k, relu.
// Every malformed input is an InvalidArgument error. The gradient is registered in Python
// (keras_xnor/ops.py).
//
// Filter preparation: the AVX2 kernel wants the filter transposed into its own layout, which
// a PreparedConv2DFilter holds. The kernel keeps one per filter buffer it has seen twice
// (held_tensor_cache.h): inference on a constant or an unchanged variable (through
// KerasXnorPackFilter, which returns the same packed tensor while the weights are unchanged)
// prepares once, while a filter that is new at every call (training) never pays for it.
// Kernels given the same filter buffer share one prepared copy (prepared_filters()).
#include <cstdint>
#include <string>
#include <vector>

#include "custom_ops/core/spec.h"
#include "custom_ops/core/xnor_conv2d.h"
#include "custom_ops/tf/held_tensor_cache.h"
#include "custom_ops/tf/tf_adapter.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace keras_xnor {
namespace {

constexpr tf_adapter::OperandNouns kNouns = {"channels", "tap", "filter"};
// Filter buffers remembered per kernel (eager mode shares a kernel between layers).
constexpr int kFilterCacheEntries = 256;

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tf_adapter::invalid_argument;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// The op's attributes, validated.
struct Conv2DAttrs {
  std::vector<std::int32_t> strides, dilations;
  std::string padding_text;
  Padding padding = Padding::kValid;
  std::int64_t in_channels = 0;
  bool use_k = true, relu = false;
};

// Reads and checks the attributes from a shape-inference or kernel-construction context.
template <typename Context>
absl::Status read_attrs(Context* c, Conv2DAttrs* attrs) {
  TF_RETURN_IF_ERROR(c->GetAttr(kAttrStrides, &attrs->strides));
  TF_RETURN_IF_ERROR(c->GetAttr(kAttrDilations, &attrs->dilations));
  TF_RETURN_IF_ERROR(c->GetAttr(kAttrPadding, &attrs->padding_text));
  TF_RETURN_IF_ERROR(c->GetAttr(kAttrInChannels, &attrs->in_channels));
  TF_RETURN_IF_ERROR(c->GetAttr(kAttrUseK, &attrs->use_k));
  TF_RETURN_IF_ERROR(c->GetAttr(kAttrRelu, &attrs->relu));
  const std::string prefix = std::string(kBinConv2DOp) + ": ";
  std::string message = tf_adapter::check_pair(kAttrStrides, attrs->strides);
  if (message.empty()) message = tf_adapter::check_pair(kAttrDilations, attrs->dilations);
  if (message.empty()) message = tf_adapter::check_padding(attrs->padding_text, &attrs->padding);
  if (message.empty()) message = tf_adapter::check_in_channels(attrs->in_channels);
  if (!message.empty()) return invalid_argument(prefix, message);
  return absl::OkStatus();
}

// Output size of one spatial axis for shape inference (unknown stays unknown).
absl::Status output_dim(InferenceContext* c, DimensionHandle in, DimensionHandle k, int stride,
                        int dilation, Padding padding, DimensionHandle* out) {
  if (!c->ValueKnown(in) || (padding == Padding::kValid && !c->ValueKnown(k))) {
    *out = c->UnknownDim();
    return absl::OkStatus();
  }
  const int k_value = c->ValueKnown(k) ? static_cast<int>(c->Value(k)) : 1;
  const std::int64_t size =
      tf_adapter::conv_output_size(c->Value(in), k_value, stride, dilation, padding);
  if (size <= 0 && padding == Padding::kValid) {  // SAME: 0 only for an empty input
    return invalid_argument(kBinConv2DOp, ": the output would be empty (input size ",
                            c->Value(in), ", kernel ", k_value, ", dilation ", dilation,
                            ", padding VALID); use a smaller kernel or SAME padding");
  }
  *out = c->MakeDim(size);
  return absl::OkStatus();
}

absl::Status bin_conv2d_shape(InferenceContext* c) {
  Conv2DAttrs attrs;
  TF_RETURN_IF_ERROR(read_attrs(c, &attrs));
  ShapeHandle input, filter, alpha, bias;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &input));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &filter));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &alpha));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &bias));
  TF_RETURN_IF_ERROR(tf_adapter::check_channel_dims(c, kBinConv2DOp, input, filter,
                                                    static_cast<int>(attrs.in_channels), kNouns));
  DimensionHandle out_c;
  TF_RETURN_IF_ERROR(
      tf_adapter::merge_output_dims(c, kBinConv2DOp, filter, alpha, bias, kNouns, &out_c));
  DimensionHandle k_h = c->Dim(filter, 1), k_w = c->Dim(filter, 2);
  if (c->ValueKnown(k_h) && c->ValueKnown(k_w)) {
    const std::string message = tf_adapter::check_kernel_size(c->Value(k_h), c->Value(k_w));
    if (!message.empty()) return invalid_argument(kBinConv2DOp, ": ", message);
  }
  DimensionHandle out_h, out_w;
  TF_RETURN_IF_ERROR(output_dim(c, c->Dim(input, 1), k_h, attrs.strides[0],
                                attrs.dilations[0], attrs.padding, &out_h));
  TF_RETURN_IF_ERROR(output_dim(c, c->Dim(input, 2), k_w, attrs.strides[1],
                                attrs.dilations[1], attrs.padding, &out_w));
  c->set_output(0, c->MakeShape({c->Dim(input, 0), out_h, out_w, out_c}));
  return absl::OkStatus();
}

class BinConv2DOp : public OpKernel {
 public:
  explicit BinConv2DOp(OpKernelConstruction* context)
      : OpKernel(context), filter_cache_(kFilterCacheEntries) {
    OP_REQUIRES_OK(context, read_attrs(context, &attrs_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& input = context->input(0);
    const Tensor& filter = context->input(1);
    const Tensor& alpha = context->input(2);
    const Tensor& bias = context->input(3);
    const char* const op = kBinConv2DOp;  // for messages (no std::string built per call)
    OP_REQUIRES(context, input.dims() == 4,
                invalid_argument(op, ": input must be 4-D NHWC, got shape ",
                                 input.shape().DebugString()));
    OP_REQUIRES(context, filter.dims() == 4,
                invalid_argument(op, ": filter must be 4-D [out_c, k_h, k_w, packed in_c] ",
                                 "(OHWI, packed), got shape ", filter.shape().DebugString()));
    OP_REQUIRES(context, alpha.dims() == 1 && bias.dims() == 1,
                invalid_argument(op, ": alpha and bias must be 1-D [out_c], got shapes ",
                                 alpha.shape().DebugString(), " and ",
                                 bias.shape().DebugString()));
    const int in_channels = static_cast<int>(attrs_.in_channels);
    OP_REQUIRES_OK(context, tf_adapter::check_channel_sizes(kBinConv2DOp, input, filter,
                                                            in_channels, kNouns));
    if (!filter_cache_.holds(filter)) {
      OP_REQUIRES_OK(context,
                     tf_adapter::check_filter_padding(kBinConv2DOp, filter, in_channels, kNouns));
    }
    OP_REQUIRES_OK(context,
                   tf_adapter::check_output_sizes(kBinConv2DOp, filter, alpha, bias, kNouns));
    const std::int64_t out_c = filter.dim_size(0);
    const std::string kernel_message =
        tf_adapter::check_kernel_size(filter.dim_size(1), filter.dim_size(2));
    OP_REQUIRES(context, kernel_message.empty(), invalid_argument(op, ": ", kernel_message));
    for (int d = 0; d < 3; ++d) {
      OP_REQUIRES(context, tf_adapter::fits_int(input.dim_size(d)),
                  invalid_argument(op, ": input shape ", input.shape().DebugString(),
                                   " is too large"));
    }
    OP_REQUIRES(context, out_c >= 1 && tf_adapter::fits_int(out_c),
                invalid_argument(op, ": the filter must have at least one output channel, got ",
                                 "shape ", filter.shape().DebugString()));

    Conv2DShape shape;
    // An empty batch is valid (as in tf.nn.conv2d), and so is an empty height or width with
    // SAME padding (an empty output); the core sees 1 for the checks. With VALID padding an
    // empty spatial axis makes the output empty, which the core reports, as the shape
    // function does.
    const bool same = attrs_.padding == Padding::kSame;
    const bool empty_input = input.dim_size(0) == 0 ||
                             (same && (input.dim_size(1) == 0 || input.dim_size(2) == 0));
    const auto core_extent = [&](int d) {
      const std::int64_t n = input.dim_size(d);
      return n == 0 && (d == 0 || same) ? 1 : static_cast<int>(n);
    };
    shape.batch = core_extent(0);
    shape.in_h = core_extent(1);
    shape.in_w = core_extent(2);
    shape.in_c = in_channels;
    shape.out_c = static_cast<int>(out_c);
    shape.k_h = static_cast<int>(filter.dim_size(1));
    shape.k_w = static_cast<int>(filter.dim_size(2));
    shape.stride_h = attrs_.strides[0];
    shape.stride_w = attrs_.strides[1];
    shape.dilation_h = attrs_.dilations[0];
    shape.dilation_w = attrs_.dilations[1];
    shape.padding = attrs_.padding;
    const std::string message = resolve_conv2d_shape(&shape);
    OP_REQUIRES(context, message.empty(),
                invalid_argument(op, ": ", message, " (input ", input.shape().DebugString(),
                                 ", filter ", filter.shape().DebugString(), ", padding ",
                                 attrs_.padding_text, ")"));
    OP_REQUIRES(context, shape.out_h > 0 && shape.out_w > 0,
                invalid_argument(op, ": the output would be empty (input ",
                                 input.shape().DebugString(), ", filter ",
                                 filter.shape().DebugString(), ", padding ",
                                 attrs_.padding_text, ")"));

    Tensor* output = nullptr;
    const std::int64_t out_h = input.dim_size(1) == 0 ? 0 : shape.out_h;
    const std::int64_t out_w = input.dim_size(2) == 0 ? 0 : shape.out_w;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, TensorShape({input.dim_size(0), out_h, out_w, out_c}), &output));
    if (empty_input) return;
    const ParallelFor parallel_for = tf_adapter::parallel_for_from(context);
    const PackedWord* filter_data = filter.flat<PackedWord>().data();
    const PreparedConv2DFilter prepared = tf_adapter::find_or_prepare(
        &filter_cache_, filter,
        [&](const PreparedConv2DFilter& p) { return p.matches(shape); },
        [&](PreparedConv2DFilter* p) {
          return prepare_conv2d_filter_checked(shape, filter_data, p, parallel_for);
        });
    const bool done =
        prepared.empty()
            ? xnor_conv2d_checked(shape, input.flat<float>().data(), filter_data,
                                  alpha.flat<float>().data(), bias.flat<float>().data(),
                                  attrs_.use_k, attrs_.relu, output->flat<float>().data(),
                                  parallel_for)
            : xnor_conv2d_checked(shape, input.flat<float>().data(), prepared,
                                  alpha.flat<float>().data(), bias.flat<float>().data(),
                                  attrs_.use_k, attrs_.relu, output->flat<float>().data(),
                                  parallel_for);
    OP_REQUIRES(context, done,
                tf_adapter::resource_exhausted(
                    op, ": out of memory for the work buffers of the convolution (input ",
                    input.shape().DebugString(), ", filter ", filter.shape().DebugString(), ")"));
  }

 private:
  Conv2DAttrs attrs_;
  tf_adapter::HeldTensorCache<PreparedConv2DFilter> filter_cache_;
};

}  // namespace

REGISTER_OP(kBinConv2DOp)
    .Input("input: float")
    .Input("filter: int32")
    .Input("alpha: float")
    .Input("bias: float")
    .Output("output: float")
    .Attr(tf_adapter::attr_spec(kAttrStrides, "list(int)"))
    .Attr(tf_adapter::attr_spec(kAttrPadding, "string"))
    .Attr(tf_adapter::attr_spec(kAttrDilations, "list(int)"))
    .Attr(tf_adapter::attr_spec(kAttrInChannels, "int"))
    .Attr(tf_adapter::attr_spec(kAttrUseK, "bool"))
    .Attr(tf_adapter::attr_spec(kAttrRelu, "bool"))
    .SetShapeFn(bin_conv2d_shape)
    .Doc(R"doc(
XNOR-Net binary convolution (eq. 11): out = dot(sign(input), filter) * alpha * K + bias,
optionally followed by ReLU. `filter` holds packed sign bits, OHWI.
)doc");

REGISTER_KERNEL_BUILDER(Name(kBinConv2DOp).Device(tensorflow::DEVICE_CPU), BinConv2DOp);

}  // namespace keras_xnor
