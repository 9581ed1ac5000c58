// C++ tests of the delegate's framework-free parts: the FlexBuffer map reader (valid buffer,
// every truncation, byte corruptions), the TFLite ABI probe on fabricated contexts, and the
// thread pool's ParallelFor contract. No gtest: exits non-zero on the first failure.
//
// Built and run by tests/test_tflite_cpp.py (g++ -std=c++17 -I. this file + the tflite sources).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#include "custom_ops/tflite/flexbuffer_reader.h"
#include "custom_ops/tflite/tflite_abi.h"
#include "custom_ops/tflite/thread_pool.h"

namespace {

int failures = 0;

#define CHECK(cond)                                                       \
  do {                                                                    \
    if (!(cond)) {                                                        \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                         \
    }                                                                     \
  } while (0)

// flatbuffers.flexbuffers.Dumps({'padding': 'SAME', 'strides': [1, 2], 'in_channels': 300,
//                                'use_k': True, 'scale': 0.5}) (the reference encoder).
const std::uint8_t kMap[] = {
    0x70, 0x61, 0x64, 0x64, 0x69, 0x6e, 0x67, 0x00, 0x04, 0x53, 0x41, 0x4d, 0x45, 0x00, 0x73,
    0x74, 0x72, 0x69, 0x64, 0x65, 0x73, 0x00, 0x02, 0x01, 0x02, 0x04, 0x04, 0x69, 0x6e, 0x5f,
    0x63, 0x68, 0x61, 0x6e, 0x6e, 0x65, 0x6c, 0x73, 0x00, 0x75, 0x73, 0x65, 0x5f, 0x6b, 0x00,
    0x73, 0x63, 0x61, 0x6c, 0x65, 0x00, 0x05, 0x19, 0x35, 0x09, 0x29, 0x11, 0x00, 0x00, 0x00,
    0x08, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x2c, 0x01, 0x00,
    0x00, 0x43, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3f, 0x3d, 0x00, 0x00, 0x00, 0x01, 0x00,
    0x00, 0x00, 0x06, 0x14, 0x0e, 0x28, 0x6a, 0x19, 0x26, 0x01};

void test_flexbuffer_valid() {
  keras_xnor::FlexMap map;
  CHECK(map.parse(kMap, sizeof(kMap)).empty());
  std::string padding;
  CHECK(map.get_string("padding", &padding).empty() && padding == "SAME");
  std::vector<std::int64_t> strides;
  CHECK(map.get_int_vector("strides", &strides).empty() && strides.size() == 2 &&
        strides[0] == 1 && strides[1] == 2);
  std::int64_t channels = 0;
  CHECK(map.get_int("in_channels", &channels).empty() && channels == 300);
  bool use_k = false;
  CHECK(map.get_bool("use_k", &use_k).empty() && use_k);
  CHECK(!map.get_int("padding", &channels).empty());  // wrong kind: an error, not a value
  CHECK(map.get_int("missing", &channels).find("missing") != std::string::npos);
  CHECK(!map.get_bool("in_channels", &use_k).empty());  // 300 is not a bool
}

void test_flexbuffer_truncated_and_corrupt() {
  keras_xnor::FlexMap map;
  for (std::size_t n = 0; n < sizeof(kMap); ++n) {
    std::vector<std::uint8_t> prefix(kMap, kMap + n);  // exact-size heap copy: ASan-friendly
    CHECK(!map.parse(prefix.data(), prefix.size()).empty());
  }
  std::mt19937 rng(1);
  int parsed = 0;
  for (int trial = 0; trial < 200000; ++trial) {
    std::vector<std::uint8_t> data(kMap, kMap + sizeof(kMap));
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) data[rng() % data.size()] = static_cast<std::uint8_t>(rng());
    parsed += map.parse(data.data(), data.size()).empty();
  }
  CHECK(parsed > 0);  // some corruptions only change values: still a valid map
  CHECK(!map.parse(nullptr, 5).empty());
  CHECK(!map.parse(nullptr, 0).empty());
}

namespace abi = keras_xnor::tflite_abi;

struct FakeRuntime {
  std::vector<abi::Tensor> tensors;
  std::vector<abi::Node> nodes;
  std::vector<abi::Registration> registrations;
  std::vector<int> plan_storage;
  abi::IntArray* plan = nullptr;
  abi::IntArray* list = nullptr;
  abi::Context context{};
  ~FakeRuntime() {
    std::free(plan);
    std::free(list);
  }
};

FakeRuntime* current = nullptr;

int fake_plan(abi::Context*, abi::IntArray** plan) {
  *plan = current->plan;
  return abi::kOk;
}
int fake_node(abi::Context*, int index, abi::Node** node, abi::Registration** registration) {
  if (index < 0 || index >= static_cast<int>(current->nodes.size())) return abi::kError;
  *node = &current->nodes[index];
  *registration = &current->registrations[index];
  return abi::kOk;
}
int fake_resize(abi::Context*, abi::Tensor*, abi::IntArray* dims) {
  std::free(dims);
  return abi::kOk;
}
void fake_report(abi::Context*, const char*, ...) {}
int fake_replace(abi::Context*, abi::Registration, const abi::IntArray*, abi::Delegate*) {
  return abi::kOk;
}

void test_probe() {
  FakeRuntime runtime;
  current = &runtime;
  runtime.tensors.resize(2);
  for (abi::Tensor& t : runtime.tensors) {
    std::memset(&t, 0, sizeof(t));
    t.type = abi::kFloat32;
  }
  runtime.nodes.resize(1);
  std::memset(runtime.nodes.data(), 0, sizeof(abi::Node));
  runtime.list = abi::new_int_array(1);
  runtime.list->data[0] = 0;
  runtime.nodes[0].inputs = runtime.list;
  runtime.nodes[0].outputs = runtime.list;
  runtime.registrations.resize(1);
  std::memset(runtime.registrations.data(), 0, sizeof(abi::Registration));
  runtime.registrations[0].builtin_code = 3;
  runtime.plan = abi::new_int_array(1);
  runtime.plan->data[0] = 0;
  abi::Context& context = runtime.context;
  std::memset(&context, 0, sizeof(context));
  CHECK(abi::probe_context(&context).find("C ABI") != std::string::npos);  // null functions
  CHECK(!abi::probe_context(nullptr).empty());
  context.tensors_size = runtime.tensors.size();
  context.tensors = runtime.tensors.data();
  context.GetExecutionPlan = fake_plan;
  context.GetNodeAndRegistration = fake_node;
  context.ResizeTensor = fake_resize;
  context.ReportError = fake_report;
  context.ReplaceNodeSubsetsWithDelegateKernels = fake_replace;
  CHECK(abi::probe_context(&context).empty());
  runtime.list->size = 1 << 20;  // a pointer read as a count, say
  CHECK(!abi::probe_context(&context).empty());
  runtime.list->size = 1;
  runtime.list->data[0] = 7;  // tensor index out of range
  CHECK(!abi::probe_context(&context).empty());
  runtime.list->data[0] = 0;
  runtime.registrations[0].builtin_code = abi::kBuiltinCustom;  // custom op without a name
  CHECK(!abi::probe_context(&context).empty());
  runtime.registrations[0].custom_name = "KerasXnorBinDense";
  CHECK(abi::probe_context(&context).empty());
  runtime.tensors[1].type = 1000;
  CHECK(!abi::probe_context(&context).empty());
  current = nullptr;
}

void test_thread_pool() {
  for (int threads = 1; threads <= 4; ++threads) {
    keras_xnor::ThreadPool pool(threads);
    CHECK(pool.num_threads() == threads);
    for (std::int64_t n : {0, 1, 2, 3, 7, 64, 1000, 100003}) {
      for (std::int64_t cost : {1, 100000}) {
        std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
        for (auto& h : hits) h.store(0);
        pool.parallel_for(n, cost, [&](std::int64_t begin, std::int64_t end) {
          CHECK(0 <= begin && begin < end && end <= n);
          for (std::int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
        });
        for (auto& h : hits) CHECK(h.load() == 1);
      }
    }
    // Two callers at once are serialised, and each sees its own job complete.
    std::atomic<std::int64_t> total{0};
    auto caller = [&] {
      for (int rep = 0; rep < 200; ++rep) {
        pool.parallel_for(1000, 1000, [&](std::int64_t b, std::int64_t e) { total += e - b; });
      }
    };
    std::thread a(caller), b(caller);
    a.join();
    b.join();
    CHECK(total.load() == 2 * 200 * 1000);
  }
}

#if defined(__linux__)
// Workers are kept off the caller's CPU during a job (thread_pool.cc), also when the caller
// moves. This checks the property only: the scheduler's choice that makes it matter (a woken
// worker queued on its caller's CPU, as on a VM after an idle spell) cannot be forced here.
void test_thread_pool_placement() {
  cpu_set_t started;
  CHECK(sched_getaffinity(0, sizeof(started), &started) == 0);
  if (CPU_COUNT(&started) < 2) {
    std::printf("test_thread_pool_placement: one CPU allowed, nothing to check\n");
    return;
  }
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &started)) cpus.push_back(c);
  }
  keras_xnor::ThreadPool pool(2);
  const std::thread::id caller = std::this_thread::get_id();
  for (int pick : {0, 1, 0}) {  // the caller moves: the worker must follow the change
    const int caller_cpu = cpus[static_cast<std::size_t>(pick)];
    cpu_set_t only;
    CPU_ZERO(&only);
    CPU_SET(caller_cpu, &only);
    CHECK(sched_setaffinity(0, sizeof(only), &only) == 0);
    std::atomic<int> worker_blocks{0}, worker_on_caller_cpu{0};
    // 16 blocks of ~1 ms each: the worker surely takes some.
    pool.parallel_for(16, 1000000, [&](std::int64_t begin, std::int64_t end) {
      if (std::this_thread::get_id() != caller) {
        worker_blocks += static_cast<int>(end - begin);
        if (sched_getcpu() == caller_cpu) ++worker_on_caller_cpu;
      }
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(end - begin);
      while (std::chrono::steady_clock::now() < until) {
      }
    });
    CHECK(worker_blocks.load() > 0);
    CHECK(worker_on_caller_cpu.load() == 0);
  }
  CHECK(sched_setaffinity(0, sizeof(started), &started) == 0);
}
#endif

}  // namespace

int main() {
  test_flexbuffer_valid();
  test_flexbuffer_truncated_and_corrupt();
  test_probe();
  test_thread_pool();
#if defined(__linux__)
  test_thread_pool_placement();
#endif
  if (failures != 0) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("delegate_parts_test: all checks passed\n");
  return 0;
}
