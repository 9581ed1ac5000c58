// TensorFlow op KerasXnorBinDense: XNOR-Net binary fully connected layer on the core
// (custom_ops/core/xnor_conv2d.h, xnor_dense): a conv whose kernel covers the whole input.
//
//   input   float [N, C]                 real-valued; binarized and packed by the core
//   filter  int32 [O, packed_words(C)]   sign bits of the [C, O] kernel, transposed (spec.h)
//   alpha   float [O], bias float [O]    (ones / zeros when the layer has none)
//   output  float [N, O]
//   out = dot * alpha * K + bias (ReLU if `relu`), K[n] = mean_c |input[n, c]| (1 when not
//   `use_k`), dot = C - 2 * popcount(packed(input) XOR filter).
//
// Attributes (also the TFLite custom op's FlexBuffer keys; spec.h): in_channels, use_k, relu.
// Every malformed input is an InvalidArgument error. The gradient is registered in Python.
//
// Filter preparation as in KerasXnorBinConv2D, for batches of 2 rows or more (one row runs the
// GEMV on the plain filter): a filter buffer seen twice (inference) gets a
// PreparedDenseFilter, with which the batch runs on the channel-lane table tile; a filter new
// at every call (training) runs on the plain filter.
#include <cstdint>
#include <string>

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

constexpr tf_adapter::OperandNouns kNouns = {"features", "unit", "unit"};
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

struct DenseAttrs {
  std::int64_t in_channels = 0;
  bool use_k = true, relu = false;
};

template <typename Context>
absl::Status read_attrs(Context* c, DenseAttrs* attrs) {
  TF_RETURN_IF_ERROR(c->GetAttr(kAttrInChannels, &attrs->in_channels));
  TF_RETURN_IF_ERROR(c->GetAttr(kAttrUseK, &attrs->use_k));
  TF_RETURN_IF_ERROR(c->GetAttr(kAttrRelu, &attrs->relu));
  const std::string message = tf_adapter::check_in_channels(attrs->in_channels);
  if (!message.empty()) return invalid_argument(kBinDenseOp, ": ", message);
  return absl::OkStatus();
}

absl::Status bin_dense_shape(InferenceContext* c) {
  DenseAttrs attrs;
  TF_RETURN_IF_ERROR(read_attrs(c, &attrs));
  ShapeHandle input, filter, alpha, bias;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &input));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &filter));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &alpha));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &bias));
  TF_RETURN_IF_ERROR(tf_adapter::check_channel_dims(c, kBinDenseOp, input, filter,
                                                    static_cast<int>(attrs.in_channels), kNouns));
  DimensionHandle units;
  TF_RETURN_IF_ERROR(
      tf_adapter::merge_output_dims(c, kBinDenseOp, filter, alpha, bias, kNouns, &units));
  if (c->ValueKnown(units) && c->Value(units) == 0) {
    return invalid_argument(kBinDenseOp, ": the filter must have at least one unit");
  }
  c->set_output(0, c->MakeShape({c->Dim(input, 0), units}));
  return absl::OkStatus();
}

class BinDenseOp : public OpKernel {
 public:
  explicit BinDenseOp(OpKernelConstruction* context)
      : OpKernel(context), filter_cache_(kFilterCacheEntries) {
    OP_REQUIRES_OK(context, read_attrs(context, &attrs_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& input = context->input(0);
    const Tensor& filter = context->input(1);
    const Tensor& alpha = context->input(2);
    const Tensor& bias = context->input(3);
    const char* const op = kBinDenseOp;  // for messages (no std::string built per call)
    OP_REQUIRES(context, input.dims() == 2,
                invalid_argument(op, ": input must be 2-D [batch, features], got shape ",
                                 input.shape().DebugString()));
    OP_REQUIRES(context, filter.dims() == 2,
                invalid_argument(op, ": filter must be 2-D [units, packed features], got shape ",
                                 filter.shape().DebugString()));
    OP_REQUIRES(context, alpha.dims() == 1 && bias.dims() == 1,
                invalid_argument(op, ": alpha and bias must be 1-D [units], got shapes ",
                                 alpha.shape().DebugString(), " and ",
                                 bias.shape().DebugString()));
    const int in_channels = static_cast<int>(attrs_.in_channels);
    OP_REQUIRES_OK(context, tf_adapter::check_channel_sizes(kBinDenseOp, input, filter,
                                                            in_channels, kNouns));
    if (!filter_cache_.holds(filter)) {
      OP_REQUIRES_OK(context,
                     tf_adapter::check_filter_padding(kBinDenseOp, filter, in_channels, kNouns));
    }
    const std::int64_t units = filter.dim_size(0);
    OP_REQUIRES(context, units >= 1 && tf_adapter::fits_int(units),
                invalid_argument(op, ": the filter must have at least one unit, got shape ",
                                 filter.shape().DebugString()));
    OP_REQUIRES_OK(context,
                   tf_adapter::check_output_sizes(kBinDenseOp, filter, alpha, bias, kNouns));
    OP_REQUIRES(context, tf_adapter::fits_int(input.dim_size(0)),
                invalid_argument(op, ": batch ", input.dim_size(0), " is too large"));

    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, TensorShape({input.dim_size(0), units}), &output));
    if (input.dim_size(0) == 0) return;
    const int batch = static_cast<int>(input.dim_size(0));
    const ParallelFor parallel_for = tf_adapter::parallel_for_from(context);
    const PackedWord* filter_data = filter.flat<PackedWord>().data();
    const PreparedDenseFilter prepared =
        batch < kPreparedDenseMinBatch
            ? PreparedDenseFilter{}  // the GEMV, which a prepared filter would not speed up
            : tf_adapter::find_or_prepare(
                  &filter_cache_, filter,
                  [&](const PreparedDenseFilter& p) {
                    return p.matches(in_channels, static_cast<int>(units));
                  },
                  [&](PreparedDenseFilter* p) {
                    return prepare_dense_filter_checked(in_channels, static_cast<int>(units),
                                                        filter_data, p, parallel_for);
                  });
    const bool done =
        prepared.empty()
            ? xnor_dense_checked(batch, in_channels, static_cast<int>(units),
                                 input.flat<float>().data(), filter_data,
                                 alpha.flat<float>().data(), bias.flat<float>().data(),
                                 attrs_.use_k, attrs_.relu, output->flat<float>().data(),
                                 parallel_for)
            : xnor_dense_checked(batch, in_channels, static_cast<int>(units),
                                 input.flat<float>().data(), prepared, alpha.flat<float>().data(),
                                 bias.flat<float>().data(), attrs_.use_k, attrs_.relu,
                                 output->flat<float>().data(), parallel_for);
    OP_REQUIRES(context, done,
                tf_adapter::resource_exhausted(
                    op, ": out of memory for the work buffers of the dense layer (input ",
                    input.shape().DebugString(), ", filter ", filter.shape().DebugString(), ")"));
  }

 private:
  DenseAttrs attrs_;
  tf_adapter::HeldTensorCache<PreparedDenseFilter> filter_cache_;
};

}  // namespace

REGISTER_OP(kBinDenseOp)
    .Input("input: float")
    .Input("filter: int32")
    .Input("alpha: float")
    .Input("bias: float")
    .Output("output: float")
    .Attr(tf_adapter::attr_spec(kAttrInChannels, "int"))
    .Attr(tf_adapter::attr_spec(kAttrUseK, "bool"))
    .Attr(tf_adapter::attr_spec(kAttrRelu, "bool"))
    .SetShapeFn(bin_dense_shape)
    .Doc(R"doc(
XNOR-Net binary fully connected layer: out = dot(sign(input), filter) * alpha * K + bias,
optionally followed by ReLU. `filter` holds packed sign bits, [units, packed features].
)doc");

REGISTER_KERNEL_BUILDER(Name(kBinDenseOp).Device(tensorflow::DEVICE_CPU), BinDenseOp);

}  // namespace keras_xnor
