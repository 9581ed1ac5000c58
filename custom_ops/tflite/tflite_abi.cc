#include "custom_ops/tflite/tflite_abi.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace keras_xnor {
namespace tflite_abi {
namespace {

// Generous plausibility bounds: a layout mismatch shows up as pointers read as counts (huge)
// or counts read as pointers, far outside these.
constexpr int kMaxListSize = 1 << 16;
constexpr int kMaxRank = 16;
constexpr std::size_t kMaxTensors = std::size_t{1} << 28;
constexpr int kMaxBuiltinCode = 1024;
constexpr std::size_t kMaxCustomNameLength = 256;

std::string mismatch(const std::string& what) {
  return "keras-xnor delegate: the TFLite runtime it was loaded into does not use the C ABI "
         "layout it was built for (tensorflow/lite/core/c/common.h of TF 2.21 / LiteRT 2.3): " +
         what +
         ". Use a matching runtime (ai-edge-litert 2.3 or tensorflow 2.21) or rebuild the "
         "delegate against your runtime's common.h (custom_ops/tflite/tflite_abi.h).";
}

bool plausible_list(const IntArray* list, std::size_t tensors_size, bool allow_optional) {
  if (list == nullptr) return false;
  if (list->size < 0 || list->size > kMaxListSize) return false;
  for (int i = 0; i < list->size; ++i) {
    const int index = list->data[i];
    if (allow_optional && index == kOptionalTensor) continue;
    if (index < 0 || static_cast<std::size_t>(index) >= tensors_size) return false;
  }
  return true;
}

}  // namespace

std::int64_t num_elements(const Tensor& tensor) {
  if (tensor.dims == nullptr || tensor.dims->size < 0 || tensor.dims->size > kMaxRank) return -1;
  std::int64_t count = 1;
  for (int i = 0; i < tensor.dims->size; ++i) {
    if (tensor.dims->data[i] < 0) return -1;
    count *= tensor.dims->data[i];
  }
  return count;
}

IntArray* new_int_array(int size) {
  auto* array = static_cast<IntArray*>(std::malloc(sizeof(int) * (1 + (size > 0 ? size : 0))));
  if (array != nullptr) array->size = size;
  return array;
}

std::string probe_context(Context* context) {
  if (context == nullptr) return mismatch("the context is null");
  if (context->GetExecutionPlan == nullptr || context->ResizeTensor == nullptr ||
      context->ReportError == nullptr || context->GetNodeAndRegistration == nullptr ||
      context->ReplaceNodeSubsetsWithDelegateKernels == nullptr) {
    return mismatch("a context function the delegate needs is null");
  }
  if (context->tensors_size > kMaxTensors || (context->tensors_size > 0 && !context->tensors)) {
    return mismatch("implausible tensor table (" + std::to_string(context->tensors_size) +
                    " tensors)");
  }
  for (std::size_t t = 0; t < context->tensors_size; ++t) {
    const Tensor& tensor = context->tensors[t];
    if (tensor.type < 0 || tensor.type > 64 || tensor.allocation_type < 0 ||
        tensor.allocation_type > 16 ||
        (tensor.dims != nullptr && (tensor.dims->size < 0 || tensor.dims->size > kMaxRank))) {
      return mismatch("tensor " + std::to_string(t) + " has an implausible type/rank");
    }
  }
  IntArray* plan = nullptr;
  if (context->GetExecutionPlan(context, &plan) != kOk || plan == nullptr ||
      plan->size < 0 || plan->size > kMaxListSize) {
    return mismatch("GetExecutionPlan returned no plausible plan");
  }
  const int plan_size = plan->size;
  for (int i = 0; i < plan_size; ++i) {
    // The plan array may be invalidated by other context calls: re-fetch it each time.
    if (context->GetExecutionPlan(context, &plan) != kOk || plan == nullptr ||
        plan->size != plan_size) {
      return mismatch("the execution plan changed while probing");
    }
    Node* node = nullptr;
    Registration* registration = nullptr;
    if (context->GetNodeAndRegistration(context, plan->data[i], &node, &registration) != kOk ||
        node == nullptr || registration == nullptr) {
      return mismatch("GetNodeAndRegistration failed for node " + std::to_string(plan->data[i]));
    }
    if (!plausible_list(node->inputs, context->tensors_size, true) ||
        !plausible_list(node->outputs, context->tensors_size, false)) {
      return mismatch("node " + std::to_string(plan->data[i]) +
                      " has implausible input/output lists");
    }
    if (registration->builtin_code < 0 || registration->builtin_code > kMaxBuiltinCode) {
      return mismatch("node " + std::to_string(plan->data[i]) + " has builtin code " +
                      std::to_string(registration->builtin_code));
    }
    if (registration->builtin_code == kBuiltinCustom) {
      if (registration->custom_name == nullptr ||
          strnlen(registration->custom_name, kMaxCustomNameLength) == kMaxCustomNameLength) {
        return mismatch("custom node " + std::to_string(plan->data[i]) + " has no readable name");
      }
      if (node->custom_initial_data_size < 0 ||
          (node->custom_initial_data_size > 0 && node->custom_initial_data == nullptr)) {
        return mismatch("custom node " + std::to_string(plan->data[i]) +
                        " has implausible custom options");
      }
    }
  }
  return "";
}

}  // namespace tflite_abi
}  // namespace keras_xnor
