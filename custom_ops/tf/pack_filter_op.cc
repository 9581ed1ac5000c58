// TensorFlow op KerasXnorPackFilter: a Keras float kernel packed straight into the filter
// layout of KerasXnorBinConv2D / KerasXnorBinDense (custom_ops/core/filter_pack.h).
//
//   filter    float [..., C, O]  (rank >= 2: HWIO conv kernel or [C, units] dense kernel)
//   packed    int32 [O, ..., packed_words(C)]  (OHWI packed along I, or [units, words])
//   mean_abs  float [O]: mean |w| of each output filter, eq. 6's alpha (computed in the same
//             pass, in double; tf.reduce_mean may differ in the last bit)
//
// Equal to KerasXnorPackBits(transpose(filter, [r-1, 0, ..., r-2])) without the transposed float
// copy. The result is cached per filter buffer (held_tensor_cache.h): called again on the same
// unchanged weights (a variable read, a constant) the op returns the packed tensor it made
// before, so inference packs the weights once and the conv op's prepared-filter cache, which
// is keyed on this output, hits too. Attribute `cache` = false turns this off for weights that
// are new at every call (the training path), which would only fill the cache.
// No gradient (the output is integer).
#include <cstdint>
#include <limits>

#include "custom_ops/core/filter_pack.h"
#include "custom_ops/core/spec.h"
#include "custom_ops/tf/held_tensor_cache.h"
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
using tf_adapter::invalid_argument;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// Entries per kernel: one per layer sharing the kernel in eager mode is the common worst case.
constexpr int kCacheEntries = 256;

absl::Status pack_filter_shape(InferenceContext* c) {
  ShapeHandle filter;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 2, &filter));
  const int rank = c->Rank(filter);
  DimensionHandle channels = c->Dim(filter, rank - 2);
  DimensionHandle words = c->UnknownDim();
  if (c->ValueKnown(channels)) {
    const std::int64_t value = c->Value(channels);
    const std::string message = tf_adapter::check_in_channels(value);
    if (!message.empty()) {
      return invalid_argument(kPackFilterOp, ": the input-channel axis (second to last): ",
                              message);
    }
    words = c->MakeDim(packed_words(static_cast<int>(value)));
  }
  std::vector<DimensionHandle> dims = {c->Dim(filter, rank - 1)};
  for (int d = 0; d < rank - 2; ++d) dims.push_back(c->Dim(filter, d));
  dims.push_back(words);
  c->set_output(0, c->MakeShape(dims));
  c->set_output(1, c->Vector(c->Dim(filter, rank - 1)));
  return absl::OkStatus();
}

class PackFilterOp : public OpKernel {
 public:
  explicit PackFilterOp(OpKernelConstruction* context)
      : OpKernel(context), cache_(kCacheEntries) {
    OP_REQUIRES_OK(context, context->GetAttr("cache", &use_cache_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& filter = context->input(0);
    const int rank = filter.dims();
    OP_REQUIRES(context, rank >= 2,
                invalid_argument(kPackFilterOp, ": filter must have rank >= 2 ([..., in_channels, ",
                                 "out_channels]: HWIO or [in, units]), got shape ",
                                 filter.shape().DebugString()));
    const std::int64_t in_c = filter.dim_size(rank - 2);
    const std::int64_t out_c = filter.dim_size(rank - 1);
    OP_REQUIRES(context, tf_adapter::check_in_channels(in_c).empty(),
                invalid_argument(kPackFilterOp, ": the input-channel axis (second to last) must ",
                                 "be non-empty, got shape ", filter.shape().DebugString()));
    OP_REQUIRES(context, tf_adapter::fits_int(out_c),
                invalid_argument(kPackFilterOp, ": filter shape ", filter.shape().DebugString(),
                                 " is too large"));
    Packed cached;
    if (use_cache_ && cache_.find(filter, &cached)) {
      context->set_output(0, cached.packed);
      context->set_output(1, cached.mean_abs);
      return;
    }
    TensorShape packed_shape({out_c});
    std::int64_t taps = 1;
    for (int d = 0; d < rank - 2; ++d) {
      packed_shape.AddDim(filter.dim_size(d));
      taps *= filter.dim_size(d);
    }
    packed_shape.AddDim(packed_words(static_cast<int>(in_c)));
    Tensor* packed = nullptr;
    Tensor* mean_abs = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, packed_shape, &packed));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({out_c}), &mean_abs));
    if (packed->NumElements() == 0) {
      // No output filters, or a zero-sized tap axis (then mean |w| of no weights: NaN, as
      // tf.reduce_mean gives).
      mean_abs->flat<float>().setConstant(std::numeric_limits<float>::quiet_NaN());
      return;
    }
    tf_adapter::count_filter_pack();
    pack_filter(filter.flat<float>().data(), taps, static_cast<int>(in_c),
                static_cast<int>(out_c), packed->flat<PackedWord>().data(),
                mean_abs->flat<float>().data(), tf_adapter::parallel_for_from(context));
    if (use_cache_) cache_.insert(filter, Packed{*packed, *mean_abs});
  }

 private:
  struct Packed {
    Tensor packed, mean_abs;
  };
  bool use_cache_ = true;
  tf_adapter::HeldTensorCache<Packed> cache_;
};

}  // namespace

REGISTER_OP(kPackFilterOp)
    .Input("filter: float")
    .Output("packed: int32")
    .Output("mean_abs: float")
    .Attr("cache: bool = true")
    .SetShapeFn(pack_filter_shape)
    .Doc(R"doc(
Packs the signs of a float kernel [..., C, O] along C into 32-bit words and moves O first:
HWIO -> OHWI packed (conv), [C, units] -> [units, words] (dense); also mean |w| per output
filter (the alpha of XNOR-Net eq. 6). Bit convention of
KerasXnorPackBits. With `cache`, the result is kept per input buffer: unchanged weights are
packed once.
)doc");

REGISTER_KERNEL_BUILDER(Name(kPackFilterOp).Device(tensorflow::DEVICE_CPU), PackFilterOp);

}  // namespace keras_xnor
