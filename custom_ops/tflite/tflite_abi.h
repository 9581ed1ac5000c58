// The part of the TFLite C ABI the keras-xnor delegate uses, declared once, here.
//
// Why our own declarations: no wheel ships TFLite's C headers and neither TensorFlow's nor
// LiteRT's runtime exports TfLite* symbols, so an external delegate can only talk to the
// runtime through the struct layouts and function pointers it is handed. The layouts below
// follow tensorflow/lite/core/c/common.h as of TF 2.21 / LiteRT 2.3 (the two share one layout).
// That header promises the field order is "semi-ABI stable": new fields only at the end.
//
// Contract:
//  * Only the leading fields we use are declared for TfLiteContext; the other structs are
//    declared in full so that sizeof() matches and arrays (context->tensors) can be indexed.
//  * static_asserts pin sizes and offsets on LP64 (x86-64, aarch64) at compile time;
//    probe_context() checks at run time that the runtime we were loaded into hands us values
//    that make sense under this layout, and returns a readable error if not (the delegate then
//    refuses to run instead of reading garbage).
//  * Nothing here allocates or calls into the runtime; it is plain declarations plus checks.
#ifndef KERAS_XNOR_TFLITE_TFLITE_ABI_H_
#define KERAS_XNOR_TFLITE_TFLITE_ABI_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace keras_xnor {
namespace tflite_abi {

// TfLiteStatus.
enum Status : int { kOk = 0, kError = 1, kDelegateError = 2 };

// TfLiteType codes used by the delegate (the same codes the converter writes for `type` attrs).
enum Type : int { kNoType = 0, kFloat32 = 1, kInt32 = 2, kUInt8 = 3, kInt64 = 4, kBool = 6,
                  kInt8 = 9, kLastKnownType = 20 };

// TfLiteAllocationType.
enum AllocationType : int { kMemNone = 0, kMmapRo = 1, kArenaRw = 2, kArenaRwPersistent = 3,
                            kDynamic = 4, kPersistentRo = 5, kCustom = 6, kVariantObject = 7 };

// TfLiteBuiltinOperator value of every custom op.
inline constexpr int kBuiltinCustom = 32;
// Index used in node input lists for an omitted optional input.
inline constexpr int kOptionalTensor = -1;

// TfLiteDelegateFlags.
inline constexpr std::int64_t kDelegateFlagsAllowDynamicTensors = 1;

struct IntArray {  // TfLiteIntArray: size, then `size` ints (flexible array member).
  int size;
  int data[1];
};

struct Delegate;
struct Context;
struct Node;

struct QuantizationParams {  // TfLiteQuantizationParams
  float scale;
  std::int32_t zero_point;
};

struct Quantization {  // TfLiteQuantization
  int type;
  void* params;
};

struct Tensor {  // TfLiteTensor
  int type;                      // Type
  void* data;                    // TfLitePtrUnion
  IntArray* dims;
  QuantizationParams params;
  int allocation_type;           // AllocationType
  std::size_t bytes;
  const void* allocation;
  const char* name;
  Delegate* delegate;
  int buffer_handle;
  bool data_is_stale;
  bool is_variable;
  Quantization quantization;
  void* sparsity;
  const IntArray* dims_signature;
};

struct Node {  // TfLiteNode
  IntArray* inputs;
  IntArray* outputs;
  IntArray* intermediates;
  IntArray* temporaries;
  void* user_data;
  const void* builtin_data;
  const void* custom_initial_data;
  int custom_initial_data_size;
  Delegate* delegate;
  bool might_have_side_effect;
};

struct Registration {  // TfLiteRegistration (passed BY VALUE to ReplaceNodeSubsets...)
  void* (*init)(Context* context, const char* buffer, std::size_t length);
  void (*free)(Context* context, void* buffer);
  int (*prepare)(Context* context, Node* node);
  int (*invoke)(Context* context, Node* node);
  const char* (*profiling_string)(const Context* context, const Node* node);
  std::int32_t builtin_code;
  const char* custom_name;
  int version;
  void* registration_external;  // must be null for a legacy (non-opaque) kernel
  void* (*async_kernel)(Context* context, Node* node);  // must be null
  std::uint64_t inplace_operator;                        // must be 0
};

struct Context {  // TfLiteContext, leading fields only (we never allocate or copy one)
  std::size_t tensors_size;
  int (*GetExecutionPlan)(Context* context, IntArray** execution_plan);
  Tensor* tensors;
  void* impl_;
  int (*ResizeTensor)(Context* context, Tensor* tensor, IntArray* new_size);  // takes ownership
  void (*ReportError)(Context* context, const char* format, ...);
  int (*AddTensors)(Context* context, int tensors_to_add, int* first_new_tensor_index);
  int (*GetNodeAndRegistration)(Context* context, int node_index, Node** node,
                                Registration** registration);
  int (*ReplaceNodeSubsetsWithDelegateKernels)(Context* context, Registration registration,
                                               const IntArray* nodes_to_replace,
                                               Delegate* delegate);
  int recommended_num_threads;
};

struct Delegate {  // TfLiteDelegate
  void* data_;
  int (*Prepare)(Context* context, Delegate* delegate);
  int (*CopyFromBufferHandle)(Context* context, Delegate* delegate, int buffer_handle,
                              Tensor* tensor);
  int (*CopyToBufferHandle)(Context* context, Delegate* delegate, int buffer_handle,
                            Tensor* tensor);
  void (*FreeBufferHandle)(Context* context, Delegate* delegate, int* handle);
  std::int64_t flags;
  void* opaque_delegate_builder;  // must be null: we are a classic (non-opaque) delegate
};

struct DelegateParams {  // TfLiteDelegateParams: the `buffer` given to a delegate kernel's init
  Delegate* delegate;
  IntArray* nodes_to_replace;
  IntArray* input_tensors;
  IntArray* output_tensors;
};

#if defined(__LP64__) || defined(_WIN64)
static_assert(sizeof(Tensor) == 112, "TfLiteTensor layout changed");
static_assert(offsetof(Tensor, dims) == 16 && offsetof(Tensor, bytes) == 40 &&
                  offsetof(Tensor, dims_signature) == 104,
              "TfLiteTensor field offsets changed");
static_assert(sizeof(Node) == 80, "TfLiteNode layout changed");
static_assert(offsetof(Node, custom_initial_data) == 48 && offsetof(Node, delegate) == 64,
              "TfLiteNode field offsets changed");
static_assert(sizeof(Registration) == 88, "TfLiteRegistration layout changed");
static_assert(offsetof(Registration, builtin_code) == 40 &&
                  offsetof(Registration, custom_name) == 48 &&
                  offsetof(Registration, registration_external) == 64,
              "TfLiteRegistration field offsets changed");
static_assert(offsetof(Context, ReplaceNodeSubsetsWithDelegateKernels) == 64 &&
                  offsetof(Context, recommended_num_threads) == 72,
              "TfLiteContext field offsets changed");
static_assert(sizeof(Delegate) == 56 && offsetof(Delegate, flags) == 40,
              "TfLiteDelegate layout changed");
#endif

// Number of elements of a tensor (product of dims); -1 when dims are missing or invalid.
std::int64_t num_elements(const Tensor& tensor);

// Run-time check that `context` looks like a TfLiteContext of the layout above: the function
// pointers we call are set, the tensor table is plausible, and every node of the execution plan
// has sane input/output lists and registrations. Returns "" when it does, else a message that
// says what looked wrong and what to do. Cheap: one pass over the execution plan.
std::string probe_context(Context* context);

// Allocates a TfLiteIntArray with malloc (ResizeTensor takes ownership and frees it with free()).
IntArray* new_int_array(int size);

}  // namespace tflite_abi
}  // namespace keras_xnor

#endif  // KERAS_XNOR_TFLITE_TFLITE_ABI_H_
