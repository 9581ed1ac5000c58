// keras-xnor TFLite external delegate: claims the KerasXnor* custom nodes of a .tflite and runs
// them with the core kernels (custom_ops/core) on its own thread pool.
//
// Loading: `tflite_plugin_create_delegate` / `tflite_plugin_destroy_delegate` (the external
// delegate interface used by ai_edge_litert.interpreter.load_delegate and
// tf.lite.experimental.load_delegate). Options (all optional):
//   num_threads  integer 1..256: threads of the delegate's pool (default: the interpreter's
//                num_threads when it is set, else 1). The pool is created once per delegate.
//   kernel       "auto" | "reference" | "portable" | "avx2": which core kernel runs.
//   profile      "0" | "1": when 1, time every claimed node and print a per-node summary
//                (invokes, total and mean ms, shape) to stderr when its interpreter is freed.
// Unknown keys or invalid values make creation fail with a message (no delegate is returned).
//
// Node contract (what the exporter writes; see describe() and tests/test_tflite_contract.py):
//   KerasXnorBinConv2D inputs (input f32 NHWC, filter i32 [O,KH,KW,words], alpha f32 [O],
//     bias f32 [O] optional), output f32 NHWC; custom options = FlexBuffer map with
//     strides (int[2] or NHWC int[4]), padding ("SAME"/"VALID"), dilations (optional, same form),
//     in_channels (int), use_k (bool), relu (bool). Other keys (e.g. TF type attrs) are ignored.
//   KerasXnorBinDense inputs (input f32 [N,C], filter i32 [U,words], alpha f32 [U], bias
//     optional), output f32 [N,U]; options use_k, relu, in_channels (optional check).
//   KerasXnorPackBits input f32 [..., C] -> output i32 [..., words]; no options needed.
// The adapter validates and translates only: all arithmetic is in keras_xnor::xnor_conv2d,
// xnor_dense and pack_bits. A conv whose filter is a constant (read-only) tensor gets it
// prepared once in Prepare (keras_xnor::prepare_conv2d_filter), so Invoke does no filter work;
// so does a dense layer with a batch of 2 or more (prepare_dense_filter).
//
// Runtime facts this relies on (TF 2.21 / LiteRT 2.3): the delegate sets
// kDelegateFlagsAllowDynamicTensors so the runtime does not prepare the unresolved custom ops
// before we claim them; the registration handed over by value has registration_external,
// async_kernel and inplace_operator zero; the execution plan array and node pointers are
// re-fetched after every context call that may change them.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "custom_ops/core/bitpack.h"
#include "custom_ops/core/spec.h"
#include "custom_ops/core/xnor_conv2d.h"
#include "custom_ops/tflite/flexbuffer_reader.h"
#include "custom_ops/tflite/tflite_abi.h"
#include "custom_ops/tflite/thread_pool.h"

namespace keras_xnor {
namespace {

namespace abi = tflite_abi;

constexpr int kBuiltinDelegate = 51;  // kTfLiteBuiltinDelegate
constexpr char kDelegateKernelName[] = "KerasXnorDelegate";
constexpr int kMaxThreads = 256;

struct DelegateOptions {
  int num_threads = 0;  // 0: decided at first use from the interpreter's recommendation
  KernelPath kernel = KernelPath::kAuto;
  bool profile = false;
};

struct DelegateState {
  abi::Delegate delegate{};
  DelegateOptions options;
  std::mutex pool_mutex;
  std::unique_ptr<ThreadPool> pool;

  ThreadPool* get_pool(int recommended_threads) {
    std::lock_guard<std::mutex> lock(pool_mutex);
    if (!pool) {
      int threads = options.num_threads;
      if (threads <= 0) threads = recommended_threads > 0 ? recommended_threads : 1;
      pool = std::make_unique<ThreadPool>(std::min(threads, kMaxThreads));
    }
    return pool.get();
  }
};

enum class OpKind { kBinConv2D, kBinDense, kPackBits };

bool op_kind_from_name(const char* name, OpKind* kind) {
  if (name == nullptr) return false;
  if (std::strcmp(name, kBinConv2DOp) == 0) *kind = OpKind::kBinConv2D;
  else if (std::strcmp(name, kBinDenseOp) == 0) *kind = OpKind::kBinDense;
  else if (std::strcmp(name, kPackBitsOp) == 0) *kind = OpKind::kPackBits;
  else return false;
  return true;
}

const char* op_name(OpKind kind) {
  switch (kind) {
    case OpKind::kBinConv2D: return kBinConv2DOp;
    case OpKind::kBinDense: return kBinDenseOp;
    case OpKind::kPackBits: return kPackBitsOp;
  }
  return "?";
}

// One claimed node: its tensors and decoded attributes.
struct NodeSpec {
  OpKind kind = OpKind::kBinConv2D;
  int node_index = -1;
  std::vector<int> inputs;
  int output = -1;
  // Attributes.
  int stride_h = 1, stride_w = 1, dilation_h = 1, dilation_w = 1;
  Padding padding = Padding::kValid;
  int in_channels = -1;  // -1: not given
  bool use_k = false, relu = false;
  // Resolved in Prepare.
  Conv2DShape shape;
  // Conv or dense layer with a constant filter: prepared once in Prepare (no filter work per
  // Invoke), valid while the filter tensor's data pointer is prepared_from.
  PreparedConv2DFilter prepared;
  PreparedDenseFilter prepared_dense;
  const void* prepared_from = nullptr;
  int batch = 0, in_features = 0, units = 0;  // dense
  std::int64_t pack_rows = 0;                 // pack bits
  int pack_channels = 0;
  // Profile (option profile=1).
  std::int64_t invokes = 0;
  double seconds = 0;
  std::string shape_text;
};

// A tensor produced and consumed inside one partition: the runtime does not allocate it (its
// producer left the execution plan), so the partition owns its buffer.
struct InternalTensor {
  int type = abi::kNoType;
  std::vector<int> dims;
  std::vector<float> f32;
  std::vector<std::int32_t> i32;
  void* data() { return type == abi::kFloat32 ? static_cast<void*>(f32.data()) : i32.data(); }
};

struct TensorView {
  int type = abi::kNoType;
  std::vector<int> dims;
  void* data = nullptr;
};

// State of one delegate kernel (one partition of claimed nodes, in execution order).
struct Partition {
  DelegateState* state = nullptr;
  std::vector<NodeSpec> nodes;
  std::set<int> partition_outputs;
  std::map<int, InternalTensor> internal;
  std::string error;  // set by init, reported by prepare (init cannot fail)
  ThreadPool* pool = nullptr;
};

// The partition's pool as the core's parallel-for (serial before the pool exists).
ParallelFor parallel_for_of(const Partition* partition) {
  return partition->pool != nullptr ? partition->pool->as_parallel_for() : serial_for;
}

std::string node_prefix(const NodeSpec& node) {
  return std::string("keras-xnor delegate: node ") + std::to_string(node.node_index) + " (" +
         op_name(node.kind) + "): ";
}

std::string dims_text(const std::vector<int>& dims) {
  std::ostringstream out;
  out << "[";
  for (std::size_t i = 0; i < dims.size(); ++i) out << (i ? ", " : "") << dims[i];
  out << "]";
  return out.str();
}

// strides / dilations: [h, w] or NHWC [1, h, w, 1].
std::string parse_hw(const FlexMap& options, const char* key, bool required, int* h, int* w) {
  if (!options.has(key)) {
    if (required) return std::string("attribute '") + key + "' is missing";
    return "";
  }
  std::vector<std::int64_t> values;
  std::string error = options.get_int_vector(key, &values);
  if (!error.empty()) return error;
  std::int64_t vh = 0, vw = 0;
  if (values.size() == 2) {
    vh = values[0];
    vw = values[1];
  } else if (values.size() == 4 && values[0] == 1 && values[3] == 1) {
    vh = values[1];
    vw = values[2];
  } else {
    return std::string("attribute '") + key + "' must be [h, w] or [1, h, w, 1]";
  }
  if (vh < 1 || vw < 1 || vh > 1024 || vw > 1024) {
    return std::string("attribute '") + key + "' values must be in 1..1024";
  }
  *h = static_cast<int>(vh);
  *w = static_cast<int>(vw);
  return "";
}

std::string parse_options(const FlexMap& options, NodeSpec* node) {
  std::string error;
  if (node->kind == OpKind::kPackBits) return "";
  if (options.has(kAttrUseK) && !(error = options.get_bool(kAttrUseK, &node->use_k)).empty()) {
    return error;
  }
  if (options.has(kAttrRelu) && !(error = options.get_bool(kAttrRelu, &node->relu)).empty()) {
    return error;
  }
  if (options.has(kAttrInChannels)) {
    std::int64_t in_channels = 0;
    if (!(error = options.get_int(kAttrInChannels, &in_channels)).empty()) return error;
    if (in_channels < 1 || in_channels > (1 << 24)) return "attribute 'in_channels' out of range";
    node->in_channels = static_cast<int>(in_channels);
  }
  if (node->kind == OpKind::kBinDense) return "";
  if (!(error = parse_hw(options, kAttrStrides, true, &node->stride_h, &node->stride_w)).empty()) {
    return error;
  }
  if (!(error = parse_hw(options, kAttrDilations, false, &node->dilation_h, &node->dilation_w))
           .empty()) {
    return error;
  }
  std::string padding;
  if (!(error = options.get_string(kAttrPadding, &padding)).empty()) return error;
  if (!parse_padding(padding, &node->padding)) {
    return "attribute 'padding' is '" + padding + "', expected SAME or VALID";
  }
  return "";
}

TensorView view(abi::Context* context, Partition* partition, int index) {
  TensorView result;
  auto it = partition->internal.find(index);
  if (it != partition->internal.end()) {
    result.type = it->second.type;
    result.dims = it->second.dims;
    result.data = it->second.data();
    return result;
  }
  const abi::Tensor& tensor = context->tensors[index];
  result.type = tensor.type;
  if (tensor.dims != nullptr) result.dims.assign(tensor.dims->data, tensor.dims->data + tensor.dims->size);
  result.data = tensor.data;
  return result;
}

std::string expect(const TensorView& tensor, const char* what, int type, std::size_t rank) {
  if (tensor.type != type) {
    return std::string(what) + " must be " + (type == abi::kFloat32 ? "float32" : "int32") +
           " (TFLite type " + std::to_string(type) + "), got type " + std::to_string(tensor.type);
  }
  if (rank != 0 && tensor.dims.size() != rank) {
    return std::string(what) + " must have rank " + std::to_string(rank) + ", got shape " +
           dims_text(tensor.dims);
  }
  for (int d : tensor.dims) {
    if (d < 0) return std::string(what) + " has an unknown dimension " + dims_text(tensor.dims);
  }
  return "";
}

// alpha and bias: float32 [channels]; bias may be absent.
std::string check_scales(abi::Context* context, Partition* partition, const NodeSpec& node,
                         int channels) {
  const TensorView alpha = view(context, partition, node.inputs[2]);
  std::string error = expect(alpha, "alpha", abi::kFloat32, 1);
  if (!error.empty()) return error;
  if (alpha.dims[0] != channels) {
    return "alpha has " + std::to_string(alpha.dims[0]) + " values for " +
           std::to_string(channels) + " output channels";
  }
  if (node.inputs.size() > 3 && node.inputs[3] != abi::kOptionalTensor) {
    const TensorView bias = view(context, partition, node.inputs[3]);
    error = expect(bias, "bias", abi::kFloat32, 1);
    if (!error.empty()) return error;
    if (bias.dims[0] != channels) {
      return "bias has " + std::to_string(bias.dims[0]) + " values for " +
             std::to_string(channels) + " output channels";
    }
  }
  return "";
}

// A read-only (constant) filter is prepared in Prepare, once: Invoke then does no filter work.
// A re-Prepare (input resize) keeps a preparation that still matches (matches(*prepared)).
// prepare(prepared) returns false when out of memory: Invoke then runs on the plain filter.
bool constant_filter(abi::Context* context, Partition* partition, const NodeSpec& node,
                     const TensorView& filter) {
  const int index = node.inputs[1];
  return partition->internal.count(index) == 0 && filter.data != nullptr &&
         (context->tensors[index].allocation_type == abi::kMmapRo ||
          context->tensors[index].allocation_type == abi::kPersistentRo);
}

// A constant filter's padding bits (past the last input channel) must be 0: the kernels would
// count a set one as a channel. Filters computed in the graph (never from the exporter) are
// not read before Invoke and not checked.
std::string check_filter_padding(abi::Context* context, Partition* partition,
                                 const NodeSpec& node, const TensorView& filter, int channels) {
  if (!constant_filter(context, partition, node, filter)) return "";
  const std::int64_t words = filter.dims.back();
  std::int64_t rows = 1;
  for (std::size_t i = 0; i + 1 < filter.dims.size(); ++i) rows *= filter.dims[i];
  const std::int64_t bad_row = first_row_with_padding_bits(
      static_cast<const PackedWord*>(filter.data), words == 0 ? 0 : rows, channels);
  if (bad_row < 0) return "";
  return "filter row " + std::to_string(bad_row) + " has padding bits set past its " +
         std::to_string(channels) + " input channels; they must be 0";
}

template <typename Prepared, typename Matches, typename Prepare>
void prepare_constant_filter(abi::Context* context, Partition* partition, NodeSpec* node,
                             const TensorView& filter, Prepared* prepared, const Matches& matches,
                             const Prepare& prepare) {
  if (!constant_filter(context, partition, *node, filter)) {
    *prepared = Prepared();
    node->prepared_from = nullptr;
  } else if (!matches(*prepared) || node->prepared_from != filter.data) {
    node->prepared_from = prepare(prepared) ? filter.data : nullptr;
  }
}

// Validates a node's inputs and computes its output shape.
std::string prepare_node(abi::Context* context, Partition* partition, NodeSpec* node,
                         std::vector<int>* out_dims, int* out_type) {
  const std::size_t n_inputs = node->inputs.size();
  if (node->kind == OpKind::kPackBits) {
    if (n_inputs != 1) return "expects 1 input, got " + std::to_string(n_inputs);
    const TensorView input = view(context, partition, node->inputs[0]);
    std::string error = expect(input, "input", abi::kFloat32, 0);
    if (!error.empty()) return error;
    if (input.dims.empty()) return "input must have rank >= 1";
    node->pack_channels = input.dims.back();
    node->pack_rows = 1;
    for (std::size_t i = 0; i + 1 < input.dims.size(); ++i) node->pack_rows *= input.dims[i];
    *out_dims = input.dims;
    out_dims->back() = packed_words(node->pack_channels);
    *out_type = abi::kInt32;
    return "";
  }
  if (n_inputs < 3 || n_inputs > 4) {
    return "expects 3 or 4 inputs (input, filter, alpha[, bias]), got " + std::to_string(n_inputs);
  }
  for (int i = 0; i < 3; ++i) {
    if (node->inputs[i] == abi::kOptionalTensor) return "input " + std::to_string(i) + " is missing";
  }
  const TensorView input = view(context, partition, node->inputs[0]);
  const TensorView filter = view(context, partition, node->inputs[1]);
  std::string error;
  if (node->kind == OpKind::kBinConv2D) {
    if (!(error = expect(input, "input", abi::kFloat32, 4)).empty()) return error;
    if (!(error = expect(filter, "filter", abi::kInt32, 4)).empty()) return error;
    Conv2DShape& shape = node->shape;
    shape = Conv2DShape();
    shape.batch = input.dims[0];
    shape.in_h = input.dims[1];
    shape.in_w = input.dims[2];
    shape.in_c = input.dims[3];
    shape.out_c = filter.dims[0];
    shape.k_h = filter.dims[1];
    shape.k_w = filter.dims[2];
    shape.stride_h = node->stride_h;
    shape.stride_w = node->stride_w;
    shape.dilation_h = node->dilation_h;
    shape.dilation_w = node->dilation_w;
    shape.padding = node->padding;
    if (node->in_channels >= 0 && node->in_channels != shape.in_c) {
      return "input has " + std::to_string(shape.in_c) + " channels but the op was exported for " +
             std::to_string(node->in_channels);
    }
    if (filter.dims[3] != packed_words(shape.in_c)) {
      return "filter " + dims_text(filter.dims) + " must hold " +
             std::to_string(packed_words(shape.in_c)) + " packed words for " +
             std::to_string(shape.in_c) + " input channels";
    }
    error = check_filter_padding(context, partition, *node, filter, shape.in_c);
    if (!error.empty()) return error;
    if (!(error = check_scales(context, partition, *node, shape.out_c)).empty()) return error;
    if (!(error = resolve_conv2d_shape(&shape)).empty()) return error;
    *out_dims = {shape.batch, shape.out_h, shape.out_w, shape.out_c};
    prepare_constant_filter(
        context, partition, node, filter, &node->prepared,
        [&](const PreparedConv2DFilter& p) { return p.matches(shape); },
        [&](PreparedConv2DFilter* p) {
          return prepare_conv2d_filter_checked(shape, static_cast<const PackedWord*>(filter.data),
                                               p, parallel_for_of(partition));
        });
  } else {
    if (!(error = expect(input, "input", abi::kFloat32, 2)).empty()) return error;
    if (!(error = expect(filter, "filter", abi::kInt32, 2)).empty()) return error;
    node->batch = input.dims[0];
    node->in_features = input.dims[1];
    node->units = filter.dims[0];
    if (node->in_channels >= 0 && node->in_channels != node->in_features) {
      return "input has " + std::to_string(node->in_features) +
             " features but the op was exported for " + std::to_string(node->in_channels);
    }
    if (node->in_features < 1 || node->units < 1) return "empty input or filter";
    if (filter.dims[1] != packed_words(node->in_features)) {
      return "filter " + dims_text(filter.dims) + " must hold " +
             std::to_string(packed_words(node->in_features)) + " packed words for " +
             std::to_string(node->in_features) + " input features";
    }
    error = check_filter_padding(context, partition, *node, filter, node->in_features);
    if (!error.empty()) return error;
    if (!(error = check_scales(context, partition, *node, node->units)).empty()) return error;
    *out_dims = {node->batch, node->units};
    if (node->batch < kPreparedDenseMinBatch) {
      // The GEMV, which a prepared filter would not speed up: no prepared copy in memory.
      node->prepared_dense = PreparedDenseFilter();
      node->prepared_from = nullptr;
    } else {
      prepare_constant_filter(
          context, partition, node, filter, &node->prepared_dense,
          [&](const PreparedDenseFilter& p) { return p.matches(node->in_features, node->units); },
          [&](PreparedDenseFilter* p) {
            return prepare_dense_filter_checked(node->in_features, node->units,
                                                static_cast<const PackedWord*>(filter.data), p,
                                                parallel_for_of(partition));
          });
    }
  }
  *out_type = abi::kFloat32;
  return "";
}

// ---- Delegate kernel (one per partition) ----

void* kernel_init(abi::Context* context, const char* buffer, std::size_t /*length*/) {
  const auto* params = reinterpret_cast<const abi::DelegateParams*>(buffer);
  auto* partition = new Partition();
  if (params == nullptr || params->delegate == nullptr || params->delegate->data_ == nullptr ||
      params->nodes_to_replace == nullptr || params->output_tensors == nullptr) {
    partition->error = "keras-xnor delegate: kernel initialised without delegate parameters";
    return partition;
  }
  partition->state = static_cast<DelegateState*>(params->delegate->data_);
  for (int i = 0; i < params->output_tensors->size; ++i) {
    partition->partition_outputs.insert(params->output_tensors->data[i]);
  }
  for (int i = 0; i < params->nodes_to_replace->size; ++i) {
    NodeSpec spec;
    spec.node_index = params->nodes_to_replace->data[i];
    abi::Node* node = nullptr;
    abi::Registration* registration = nullptr;
    if (context->GetNodeAndRegistration(context, spec.node_index, &node, &registration) !=
            abi::kOk ||
        node == nullptr || registration == nullptr ||
        !op_kind_from_name(registration->custom_name, &spec.kind)) {
      partition->error = "keras-xnor delegate: node " + std::to_string(spec.node_index) +
                         " is not a KerasXnor custom op";
      return partition;
    }
    spec.inputs.assign(node->inputs->data, node->inputs->data + node->inputs->size);
    if (node->outputs->size != 1) {
      partition->error = node_prefix(spec) + "expects 1 output, got " +
                         std::to_string(node->outputs->size);
      return partition;
    }
    spec.output = node->outputs->data[0];
    FlexMap options;
    std::string error;
    if (node->custom_initial_data_size > 0) {
      error = options.parse(static_cast<const std::uint8_t*>(node->custom_initial_data),
                            static_cast<std::size_t>(node->custom_initial_data_size));
    } else if (spec.kind != OpKind::kPackBits) {
      error = "the node has no custom options (attributes); re-export the model with "
              "keras_xnor.tflite_export.convert";
    }
    if (error.empty()) error = parse_options(options, &spec);
    if (!error.empty()) {
      partition->error = node_prefix(spec) + "bad custom options: " + error;
      return partition;
    }
    partition->nodes.push_back(std::move(spec));
  }
  return partition;
}

void print_profile(const Partition& partition) {
  for (const NodeSpec& node : partition.nodes) {
    if (node.invokes == 0) continue;
    std::fprintf(stderr,
                 "keras-xnor delegate profile: node %d %s %s: %lld invokes, %.3f ms total, "
                 "%.3f ms mean\n",
                 node.node_index, op_name(node.kind), node.shape_text.c_str(),
                 static_cast<long long>(node.invokes), 1e3 * node.seconds,
                 1e3 * node.seconds / static_cast<double>(node.invokes));
  }
}

void kernel_free(abi::Context* /*context*/, void* buffer) {
  auto* partition = static_cast<Partition*>(buffer);
  if (partition != nullptr && partition->state != nullptr && partition->state->options.profile) {
    print_profile(*partition);
  }
  delete partition;
}

int kernel_prepare(abi::Context* context, abi::Node* kernel_node) {
  auto* partition = static_cast<Partition*>(kernel_node->user_data);
  if (partition == nullptr) {
    context->ReportError(context, "keras-xnor delegate: kernel has no state\n");
    return abi::kError;
  }
  if (!partition->error.empty()) {
    context->ReportError(context, "%s\n", partition->error.c_str());
    return abi::kError;
  }
  partition->pool = partition->state->get_pool(context->recommended_num_threads);
  partition->internal.clear();
  for (NodeSpec& node : partition->nodes) {
    std::vector<int> out_dims;
    int out_type = abi::kNoType;
    const std::string error = prepare_node(context, partition, &node, &out_dims, &out_type);
    if (!error.empty()) {
      context->ReportError(context, "%s%s\n", node_prefix(node).c_str(), error.c_str());
      return abi::kError;
    }
    if (partition->state->options.profile) {
      node.shape_text = dims_text(view(context, partition, node.inputs[0]).dims) + " -> " +
                        dims_text(out_dims);
    }
    if (partition->partition_outputs.count(node.output) == 0) {
      InternalTensor& internal = partition->internal[node.output];
      internal.type = out_type;
      internal.dims = out_dims;
      std::int64_t count = 1;
      for (int d : out_dims) count *= d;
      if (out_type == abi::kFloat32) internal.f32.assign(count, 0.0f);
      else internal.i32.assign(count, 0);
      continue;
    }
    abi::Tensor& output = context->tensors[node.output];
    if (output.type != out_type) {
      context->ReportError(context, "%soutput tensor has type %d, expected %d\n",
                           node_prefix(node).c_str(), output.type, out_type);
      return abi::kError;
    }
    abi::IntArray* dims = abi::new_int_array(static_cast<int>(out_dims.size()));
    if (dims == nullptr) {
      context->ReportError(context, "%sout of memory\n", node_prefix(node).c_str());
      return abi::kError;
    }
    std::copy(out_dims.begin(), out_dims.end(), dims->data);
    if (context->ResizeTensor(context, &output, dims) != abi::kOk) {  // takes ownership
      context->ReportError(context, "%scould not resize the output to %s\n",
                           node_prefix(node).c_str(), dims_text(out_dims).c_str());
      return abi::kError;
    }
  }
  return abi::kOk;
}

int kernel_invoke(abi::Context* context, abi::Node* kernel_node) {
  auto* partition = static_cast<Partition*>(kernel_node->user_data);
  if (partition == nullptr || !partition->error.empty() || partition->pool == nullptr) {
    context->ReportError(context, "keras-xnor delegate: invoke before a successful prepare\n");
    return abi::kError;
  }
  const ParallelFor parallel_for = partition->pool->as_parallel_for();
  const KernelPath path = partition->state->options.kernel;
  const bool profile = partition->state->options.profile;
  for (NodeSpec& node : partition->nodes) {
    const auto start = profile ? std::chrono::steady_clock::now()
                               : std::chrono::steady_clock::time_point();
    TensorView input = view(context, partition, node.inputs[0]);
    TensorView output = view(context, partition, node.output);
    if (input.data == nullptr || output.data == nullptr) {
      context->ReportError(context, "%sinput or output tensor has no data\n",
                           node_prefix(node).c_str());
      return abi::kError;
    }
    if (node.kind == OpKind::kPackBits) {
      pack_bits(static_cast<const float*>(input.data), node.pack_rows, node.pack_channels,
                static_cast<PackedWord*>(output.data), parallel_for);
      if (profile) {
        node.seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        ++node.invokes;
      }
      continue;
    }
    const TensorView filter = view(context, partition, node.inputs[1]);
    const TensorView alpha = view(context, partition, node.inputs[2]);
    const float* bias = nullptr;
    if (node.inputs.size() > 3 && node.inputs[3] != abi::kOptionalTensor) {
      bias = static_cast<const float*>(view(context, partition, node.inputs[3]).data);
      if (bias == nullptr) {
        context->ReportError(context, "%sbias tensor has no data\n", node_prefix(node).c_str());
        return abi::kError;
      }
    }
    if (filter.data == nullptr || alpha.data == nullptr) {
      context->ReportError(context, "%sfilter or alpha tensor has no data\n",
                           node_prefix(node).c_str());
      return abi::kError;
    }
    bool done;
    if (node.kind == OpKind::kBinConv2D && !node.prepared.empty() &&
        node.prepared_from == filter.data) {
      done = xnor_conv2d_checked(node.shape, static_cast<const float*>(input.data),
                                 node.prepared, static_cast<const float*>(alpha.data), bias,
                                 node.use_k, node.relu, static_cast<float*>(output.data),
                                 parallel_for, path);
    } else if (node.kind == OpKind::kBinConv2D) {
      done = xnor_conv2d_checked(node.shape, static_cast<const float*>(input.data),
                                 static_cast<const PackedWord*>(filter.data),
                                 static_cast<const float*>(alpha.data), bias, node.use_k,
                                 node.relu, static_cast<float*>(output.data), parallel_for, path);
    } else if (!node.prepared_dense.empty() && node.prepared_from == filter.data) {
      done = xnor_dense_checked(node.batch, node.in_features, node.units,
                                static_cast<const float*>(input.data), node.prepared_dense,
                                static_cast<const float*>(alpha.data), bias, node.use_k,
                                node.relu, static_cast<float*>(output.data), parallel_for, path);
    } else {
      done = xnor_dense_checked(node.batch, node.in_features, node.units,
                                static_cast<const float*>(input.data),
                                static_cast<const PackedWord*>(filter.data),
                                static_cast<const float*>(alpha.data), bias, node.use_k,
                                node.relu, static_cast<float*>(output.data), parallel_for, path);
    }
    if (!done) {
      context->ReportError(context, "%sout of memory for the kernel's work buffers\n",
                           node_prefix(node).c_str());
      return abi::kError;
    }
    if (profile) {
      node.seconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      ++node.invokes;
    }
  }
  return abi::kOk;
}

// ---- Delegate ----

int delegate_prepare(abi::Context* context, abi::Delegate* delegate) {
  const std::string probe = abi::probe_context(context);
  if (!probe.empty()) {
    if (context != nullptr && context->ReportError != nullptr) {
      context->ReportError(context, "%s\n", probe.c_str());
    }
    return abi::kDelegateError;
  }
  abi::IntArray* plan = nullptr;
  if (context->GetExecutionPlan(context, &plan) != abi::kOk || plan == nullptr) {
    context->ReportError(context, "keras-xnor delegate: no execution plan\n");
    return abi::kDelegateError;
  }
  // Copy: the plan array is invalidated by later context calls.
  const std::vector<int> nodes(plan->data, plan->data + plan->size);
  std::vector<int> claimed;
  for (int node_index : nodes) {
    abi::Node* node = nullptr;
    abi::Registration* registration = nullptr;
    if (context->GetNodeAndRegistration(context, node_index, &node, &registration) != abi::kOk) {
      return abi::kDelegateError;
    }
    OpKind kind;
    if (registration->builtin_code == abi::kBuiltinCustom &&
        op_kind_from_name(registration->custom_name, &kind)) {
      claimed.push_back(node_index);
    }
  }
  if (claimed.empty()) return abi::kOk;
  abi::IntArray* to_replace = abi::new_int_array(static_cast<int>(claimed.size()));
  if (to_replace == nullptr) return abi::kDelegateError;
  std::copy(claimed.begin(), claimed.end(), to_replace->data);

  abi::Registration registration;
  std::memset(&registration, 0, sizeof(registration));  // registration_external etc. stay 0
  registration.init = kernel_init;
  registration.free = kernel_free;
  registration.prepare = kernel_prepare;
  registration.invoke = kernel_invoke;
  registration.builtin_code = kBuiltinDelegate;
  registration.custom_name = kDelegateKernelName;
  registration.version = 1;
  const int status =
      context->ReplaceNodeSubsetsWithDelegateKernels(context, registration, to_replace, delegate);
  std::free(to_replace);  // ReplaceNodeSubsets... does not take ownership
  return status;
}

std::string parse_int(const std::string& text, long min_value, long max_value, long* out) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text.c_str(), &end, 10);
  // strtol skips leading blanks but stops at trailing ones: refuse blanks on either side.
  const bool blank = text.find_first_of(" \t\n\v\f\r") != std::string::npos;
  if (text.empty() || blank || end == nullptr || *end != '\0' || errno != 0 ||
      value < min_value || value > max_value) {
    return "'" + text + "' is not an integer in " + std::to_string(min_value) + ".." +
           std::to_string(max_value);
  }
  *out = value;
  return "";
}

std::string parse_delegate_options(char** keys, char** values, std::size_t count,
                                   DelegateOptions* options) {
  if (count > 0 && (keys == nullptr || values == nullptr)) return "option arrays are null";
  for (std::size_t i = 0; i < count; ++i) {
    if (keys[i] == nullptr || values[i] == nullptr) return "option key or value is null";
    const std::string key = keys[i];
    const std::string value = values[i];
    if (key == "num_threads") {
      long threads = 0;
      const std::string error = parse_int(value, 1, kMaxThreads, &threads);
      if (!error.empty()) return "option num_threads: " + error;
      options->num_threads = static_cast<int>(threads);
    } else if (key == "kernel") {
      if (value == "auto") options->kernel = KernelPath::kAuto;
      else if (value == "reference") options->kernel = KernelPath::kReference;
      else if (value == "portable") options->kernel = KernelPath::kPortable;
      else if (value == "avx2") options->kernel = KernelPath::kAvx2;
      else return "option kernel: '" + value + "' is not one of auto, reference, portable, avx2";
      if (!kernel_path_available(options->kernel)) {
        return "option kernel: '" + value + "' is not available on this CPU/build";
      }
    } else if (key == "profile") {
      if (value != "0" && value != "1") return "option profile: '" + value + "' is not 0 or 1";
      options->profile = value == "1";
    } else {
      return "unknown option '" + key + "' (valid options: num_threads, kernel, profile)";
    }
  }
  return "";
}

std::string describe_json() {
  std::ostringstream out;
  out << "{\"spec_version\": " << kSpecVersion << ", \"bits_per_word\": " << kBitsPerWord
      << ", \"negative_bit\": " << kNegativeBit << ", \"bit_order\": \"" << kBitOrder << "\""
      << ", \"ops\": {"
      << "\"" << kBinConv2DOp << "\": {\"inputs\": [\"input\", \"filter\", \"alpha\", \"bias?\"], "
      << "\"filter_layout\": \"OHWI_packed\", \"attrs\": {\"" << kAttrStrides << "\": \"int[2|4]\", \""
      << kAttrPadding << "\": \"string\", \"" << kAttrDilations << "\": \"int[2|4]?\", \""
      << kAttrInChannels << "\": \"int?\", \"" << kAttrUseK << "\": \"bool?\", \"" << kAttrRelu
      << "\": \"bool?\"}}, "
      << "\"" << kBinDenseOp << "\": {\"inputs\": [\"input\", \"filter\", \"alpha\", \"bias?\"], "
      << "\"filter_layout\": \"OI_packed\", \"attrs\": {\"" << kAttrInChannels << "\": \"int?\", \""
      << kAttrUseK << "\": \"bool?\", \"" << kAttrRelu << "\": \"bool?\"}}, "
      << "\"" << kPackBitsOp << "\": {\"inputs\": [\"input\"], \"attrs\": {}}}, "
      << "\"paddings\": [\"" << kPaddingSame << "\", \"" << kPaddingValid << "\"], "
      << "\"abi\": {\"tensor\": " << sizeof(abi::Tensor) << ", \"node\": " << sizeof(abi::Node)
      << ", \"registration\": " << sizeof(abi::Registration)
      << ", \"delegate\": " << sizeof(abi::Delegate) << "}, "
      << "\"kernel\": \"" << auto_kernel_path_name() << "\"}";
  return out.str();
}

}  // namespace
}  // namespace keras_xnor

extern "C" {

__attribute__((visibility("default"))) void* tflite_plugin_create_delegate(
    char** options_keys, char** options_values, std::size_t num_options,
    void (*report_error)(const char*)) {
  using keras_xnor::DelegateState;
  keras_xnor::DelegateOptions options;
  // Python's load_delegate passes the count as a C int: only the low 32 bits are meaningful.
  num_options = static_cast<std::uint32_t>(num_options);
  const std::string error =
      keras_xnor::parse_delegate_options(options_keys, options_values, num_options, &options);
  if (!error.empty()) {
    const std::string message = "keras-xnor delegate: " + error;
    if (report_error != nullptr) report_error(message.c_str());
    return nullptr;
  }
  auto* state = new DelegateState();
  state->options = options;
  state->delegate.data_ = state;
  state->delegate.Prepare = keras_xnor::delegate_prepare;
  state->delegate.flags = keras_xnor::tflite_abi::kDelegateFlagsAllowDynamicTensors;
  state->delegate.opaque_delegate_builder = nullptr;
  return &state->delegate;
}

__attribute__((visibility("default"))) void tflite_plugin_destroy_delegate(void* delegate) {
  if (delegate == nullptr) return;
  auto* abi_delegate = static_cast<keras_xnor::tflite_abi::Delegate*>(delegate);
  delete static_cast<keras_xnor::DelegateState*>(abi_delegate->data_);
}

// JSON description of the op names, inputs, attribute keys and bit layout this delegate reads
// (pinned against keras_xnor/spec.py and the exporter by tests/test_tflite_contract.py).
__attribute__((visibility("default"))) const char* keras_xnor_delegate_describe() {
  static const std::string description = keras_xnor::describe_json();
  return description.c_str();
}

// Parses a FlexBuffer map with the delegate's reader; writes its dump (or the error) into
// `out` (NUL-terminated, truncated to out_size). Returns 0 when it parsed, 1 otherwise.
// For tests of the reader on valid, truncated and corrupt buffers.
__attribute__((visibility("default"))) int keras_xnor_flexbuffer_dump(const std::uint8_t* data,
                                                                       std::size_t size,
                                                                       char* out,
                                                                       std::size_t out_size) {
  keras_xnor::FlexMap map;
  const std::string error = map.parse(data, size);
  const std::string text = error.empty() ? map.to_string() : error;
  if (out != nullptr && out_size > 0) {
    const std::size_t n = std::min(out_size - 1, text.size());
    std::memcpy(out, text.data(), n);
    out[n] = '\0';
  }
  return error.empty() ? 0 : 1;
}

}  // extern "C"
