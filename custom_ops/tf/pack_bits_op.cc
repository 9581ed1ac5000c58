// TensorFlow op KerasXnorPackBits: sign-bit packing along the last axis.
//
//   input  float [..., C]  (rank >= 1, C >= 1)
//   output int32 [..., packed_words(C)]
// Bit convention of spec.h: channel c -> bit c % 32 of word c / 32, set bit = (x < 0),
// sign(0) = +1, padding bits 0. keras_xnor.ops.pack_bits_reference is its pure-TF twin.
// No gradient (the output is integer).
#include <cstdint>

#include "custom_ops/core/bitpack.h"
#include "custom_ops/core/spec.h"
#include "custom_ops/tf/tf_adapter.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace keras_xnor {
namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

absl::Status pack_bits_shape(InferenceContext* c) {
  ShapeHandle input;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &input));
  DimensionHandle channels = c->Dim(input, -1);
  DimensionHandle words = c->UnknownDim();
  if (c->ValueKnown(channels)) {
    const std::int64_t value = c->Value(channels);
    if (value < 1) {
      return tf_adapter::invalid_argument(
          "KerasXnorPackBits: the last (channel) axis must be non-empty, got ", value);
    }
    words = c->MakeDim(packed_words(static_cast<int>(value)));
  }
  ShapeHandle output;
  TF_RETURN_IF_ERROR(c->ReplaceDim(input, -1, words, &output));
  c->set_output(0, output);
  return absl::OkStatus();
}

class PackBitsOp : public OpKernel {
 public:
  explicit PackBitsOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& input = context->input(0);
    OP_REQUIRES(context, input.dims() >= 1,
                tf_adapter::invalid_argument(
                    "KerasXnorPackBits: input must have rank >= 1 (channels last), got shape ",
                    input.shape().DebugString()));
    const std::int64_t channels = input.dim_size(input.dims() - 1);
    OP_REQUIRES(context, channels >= 1 && tf_adapter::check_in_channels(channels).empty(),
                tf_adapter::invalid_argument(
                    "KerasXnorPackBits: the last (channel) axis must be non-empty, got shape ",
                    input.shape().DebugString()));
    const std::int64_t rows = input.NumElements() / channels;
    TensorShape output_shape = input.shape();
    output_shape.set_dim(input.dims() - 1, packed_words(static_cast<int>(channels)));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, output_shape, &output));
    if (rows == 0) return;
    pack_bits(input.flat<float>().data(), rows, static_cast<int>(channels),
              output->flat<PackedWord>().data(), tf_adapter::parallel_for_from(context));
  }
};

}  // namespace

REGISTER_OP(kPackBitsOp)
    .Input("input: float")
    .Output("packed: int32")
    .SetShapeFn(pack_bits_shape)
    .Doc(R"doc(
Packs the signs of `input` along its last axis into 32-bit words (bit set = negative,
channel c -> bit c % 32 of word c / 32, sign(0) = +1, padding bits 0).
)doc");

REGISTER_KERNEL_BUILDER(Name(kPackBitsOp).Device(tensorflow::DEVICE_CPU), PackBitsOp);

}  // namespace keras_xnor
