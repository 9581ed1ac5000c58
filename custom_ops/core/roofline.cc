#include "custom_ops/core/roofline.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "custom_ops/core/xnor_conv2d.h"

namespace keras_xnor {
namespace internal {

// Scalar fallback: 64-bit XOR + popcount, 2 x 3 tile, operands opaque to the compiler.
double roofline_loop_scalar(long long iterations, unsigned long long* sink) {
  std::uint64_t a0 = 0x123456789abcdef0ull, a1 = 0x0f1e2d3c4b5a6978ull;
  std::uint64_t w0 = 0x7a6b5c4d3e2f1001ull, w1 = 0x0123456789abcdefull, w2 = 0xfedcba9876543210ull;
  std::uint64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0, c4 = 0, c5 = 0;
  for (long long i = 0; i < iterations; ++i) {
    __asm__ volatile("" : "+r"(a0), "+r"(a1), "+r"(w0), "+r"(w1), "+r"(w2));
    c0 += __builtin_popcountll(a0 ^ w0);
    c1 += __builtin_popcountll(a0 ^ w1);
    c2 += __builtin_popcountll(a0 ^ w2);
    c3 += __builtin_popcountll(a1 ^ w0);
    c4 += __builtin_popcountll(a1 ^ w1);
    c5 += __builtin_popcountll(a1 ^ w2);
  }
  *sink += c0 + c1 + c2 + c3 + c4 + c5;
  return static_cast<double>(iterations) * 6.0 * 64.0;
}

bool popcount_avx512_available() {
#if defined(__x86_64__) || defined(__i386__)
  // libgcc's CPU check also requires the OS to save the zmm and mask registers (XGETBV).
  // KERAS_XNOR_AVX512=0 turns the AVX-512 code off (A/B benchmarks against the AVX2 driver).
  static const bool has = [] {
    const char* env = std::getenv("KERAS_XNOR_AVX512");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
  }();
  return has;
#else
  return false;
#endif
}

}  // namespace internal
}  // namespace keras_xnor

extern "C" double keras_xnor_popcount_roofline(int num_threads, double min_seconds) {
  using Clock = std::chrono::steady_clock;
  using keras_xnor::internal::roofline_loop_avx2_broadcast;
  using keras_xnor::internal::roofline_loop_avx2_dual;
  using keras_xnor::internal::roofline_loop_avx2_planar;
  using keras_xnor::internal::roofline_loop_avx2_planar_mixed;
  using keras_xnor::internal::roofline_loop_avx2_registers;
  using keras_xnor::internal::roofline_loop_avx2_pair;
  using keras_xnor::internal::roofline_loop_avx2_pair128;
  using keras_xnor::internal::roofline_loop_avx2_table;
  using keras_xnor::internal::roofline_loop_avx512_vpopcnt;
  using keras_xnor::internal::roofline_loop_scalar;
  const int threads = std::max(1, num_threads);
  const bool avx2 = keras_xnor::kernel_path_available(keras_xnor::KernelPath::kAvx2);
  double (*loop)(long long, unsigned long long*) = roofline_loop_scalar;
  // One trial: every thread runs `iterations` steps; the rate is total work / wall time.
  auto trial = [&](long long iterations) {
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<double> work(threads, 0.0);
    std::vector<unsigned long long> sinks(threads, 0);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        ready.fetch_add(1);
        while (!go.load(std::memory_order_acquire)) {
        }
        work[t] = loop(iterations, &sinks[t]);
      });
    }
    while (ready.load() < threads) {
    }
    const auto start = Clock::now();
    go.store(true, std::memory_order_release);
    for (auto& th : pool) th.join();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    double total = 0.0;
    for (double w : work) total += w;
    return std::make_pair(total / std::max(seconds, 1e-9), seconds);
  };
  // For each loop variant: calibrate to ~20 ms trials, then keep the best trial until its
  // share of min_seconds has passed.
  std::vector<double (*)(long long, unsigned long long*)> loops;
  if (avx2) {
    loops = {roofline_loop_avx2_registers, roofline_loop_avx2_broadcast,
             roofline_loop_avx2_planar, roofline_loop_avx2_planar_mixed, roofline_loop_avx2_table,
             roofline_loop_avx2_pair, roofline_loop_avx2_pair128, roofline_loop_avx2_dual};
    if (keras_xnor::internal::popcount_avx512_available()) {
      loops.push_back(roofline_loop_avx512_vpopcnt);
    }
  } else {
    loops = {roofline_loop_scalar};
  }
  double best = 0.0;
  for (auto variant : loops) {
    loop = variant;
    long long iterations = avx2 ? 31 * 1000 : 100000;
    for (;;) {
      const auto r = trial(iterations);
      best = std::max(best, r.first);
      if (r.second >= 0.02) break;
      iterations *= 2;
    }
    const auto deadline = Clock::now() + std::chrono::duration<double>(
                                             std::max(0.0, min_seconds) / loops.size());
    while (Clock::now() < deadline) best = std::max(best, trial(iterations).first);
  }
  return best;
}

extern "C" const char* keras_xnor_core_kernel_path() {
  return keras_xnor::auto_kernel_path_name();
}
