// Standalone benchmark of the C++ core (no TF/TFLite): binary conv time per shape for each
// kernel path at 1 and 2 threads, as ms (min and median over repeats), bit-GOPS (of the min) (one bit-MAC = one XOR +
// popcount of one bit pair) and % of the popcount roofline measured in the same run.
//
// Build and run (from the repository root):
//   mkdir -p /tmp/core_bench_obj
//   for f in custom_ops/core/*.cc; do case $f in *_avx2.cc) x="-mavx2 -mfma -mpopcnt";;
//     *_avx512.cc) x="-mavx512f -mavx512vpopcntdq";; *) x="";; esac;
//     g++ -O2 -std=c++17 -I. $x -c $f -o /tmp/core_bench_obj/$(basename $f .cc).o; done
//   g++ -O2 -std=c++17 -I. benchmarks/core_bench.cc /tmp/core_bench_obj/*.o -pthread -o /tmp/core_bench
//   /tmp/core_bench [--repeats=N] [--paths=avx2,avx2-prep,portable] [--threads=1,2] [--only=64@56]
//                   [--roofline_seconds=S] [--out_buffers=N]
// --out_buffers=N rotates N output buffers (default 1): N = 16 mimics a network, whose layers
// each write a different tensor, cold in cache (a chain of identical convs in one TF graph, as
// in bench_conv.py, gets the same output buffer back every call: one hot buffer, N = 1).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "custom_ops/core/bitpack.h"
#include "custom_ops/core/roofline.h"
#include "custom_ops/core/xnor_conv2d.h"

namespace {

using keras_xnor::Conv2DShape;
using keras_xnor::KernelPath;
using keras_xnor::Padding;

// Persistent pool: fn ranges are contiguous chunks, chunk 0 on the caller. Workers spin on an
// atomic generation counter (then yield), like the spinning phase of TF's and TFLite's pools;
// back-to-back benchmark calls never sleep.
class Pool {
 public:
  explicit Pool(int threads) : threads_(threads) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    stop_.store(true);
    generation_.fetch_add(1, std::memory_order_release);
    for (auto& t : workers_) t.join();
  }
  void run(std::int64_t n, std::int64_t, const keras_xnor::RangeFn& fn) {
    if (n <= 0) return;
    if (threads_ == 1 || n == 1) {
      fn(0, n);
      return;
    }
    fn_ = &fn;
    n_ = n;
    pending_.store(threads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    fn(0, n / threads_);
    int spins = 0;
    while (pending_.load(std::memory_order_acquire) != 0) {
      if (++spins > 20000) std::this_thread::yield();
    }
  }
  keras_xnor::ParallelFor parallel_for() {
    return [this](std::int64_t n, std::int64_t c, const keras_xnor::RangeFn& fn) { run(n, c, fn); };
  }

 private:
  void loop(int index) {
    std::uint64_t seen = 0;
    for (;;) {
      std::uint64_t g;
      int spins = 0;
      while ((g = generation_.load(std::memory_order_acquire)) == seen) {
        if (++spins > 20000) std::this_thread::yield();
      }
      seen = g;
      if (stop_.load()) return;
      const std::int64_t n = n_;
      const std::int64_t b = n * index / threads_, e = n * (index + 1) / threads_;
      if (b < e) (*fn_)(b, e);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }
  int threads_;
  std::vector<std::thread> workers_;
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  const keras_xnor::RangeFn* fn_ = nullptr;
  std::int64_t n_ = 0;
  std::atomic<int> pending_{0};
};

struct Case {
  const char* name;
  int size, in_c, out_c, k, stride;
  Padding padding;
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Min and median seconds of `reps` calls of run().
template <typename Run>
std::pair<double, double> min_and_median(Run& run, int reps) {
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now();
    run();
    times.push_back(now() - t0);
  }
  std::sort(times.begin(), times.end());
  return {times.front(), times[times.size() / 2]};
}

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> v;
  std::size_t pos = 0;
  while (pos < s.size()) {
    v.push_back(std::atoi(s.c_str() + pos));
    const std::size_t comma = s.find(',', pos);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  int repeats = 200;
  std::string paths_arg = "avx2,avx2-prep,portable";
  std::vector<int> thread_counts = {1, 2};
  double roofline_seconds = 1.0;
  std::string only;
  int out_buffers = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--repeats=", 0) == 0) repeats = std::atoi(a.c_str() + 10);
    else if (a.rfind("--paths=", 0) == 0) paths_arg = a.substr(8);
    else if (a.rfind("--threads=", 0) == 0) thread_counts = parse_list(a.substr(10));
    else if (a.rfind("--roofline_seconds=", 0) == 0) roofline_seconds = std::atof(a.c_str() + 19);
    else if (a.rfind("--only=", 0) == 0) only = a.substr(7);
    else if (a.rfind("--out_buffers=", 0) == 0) out_buffers = std::max(1, std::atoi(a.c_str() + 14));
  }
  const Case cases[] = {
      {"resnet18 64@56 3x3", 56, 64, 64, 3, 1, Padding::kSame},
      {"resnet18 128@28 3x3", 28, 128, 128, 3, 1, Padding::kSame},
      {"resnet18 256@14 3x3", 14, 256, 256, 3, 1, Padding::kSame},
      {"resnet18 512@7 3x3", 7, 512, 512, 3, 1, Padding::kSame},
      {"resnet18 64->128 3x3/2@56", 56, 64, 128, 3, 2, Padding::kSame},
      {"resnet18 256->512 3x3/2@14", 14, 256, 512, 3, 2, Padding::kSame},
      {"resnet18 64->128 1x1/2@56", 56, 64, 128, 1, 2, Padding::kSame},
      {"alexnet conv2 96->256 5x5@27", 27, 96, 256, 5, 1, Padding::kSame},
      {"alexnet conv3 256->384 3x3@13", 13, 256, 384, 3, 1, Padding::kSame},
      {"alexnet conv4 384->384 3x3@13", 13, 384, 384, 3, 1, Padding::kSame},
      {"alexnet conv5 384->256 3x3@13", 13, 384, 256, 3, 1, Padding::kSame},
  };
  std::printf("core kernel path (auto): %s\n", keras_xnor_core_kernel_path());
  std::vector<double> roof(3, 0.0);
  for (int t : thread_counts) {
    roof[t] = keras_xnor_popcount_roofline(t, roofline_seconds);
    std::printf("popcount roofline, %d thread(s): %.1f GOPS\n", t, roof[t] / 1e9);
  }
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::printf("%-32s %-9s %3s %9s %9s %9s %8s\n", "shape", "path", "thr", "ms(min)", "ms(med)",
              "GOPS", "%roof");
  for (const Case& c : cases) {
    if (!only.empty() && std::string(c.name).find(only) == std::string::npos) continue;
    Conv2DShape s;
    s.batch = 1;
    s.in_h = s.in_w = c.size;
    s.in_c = c.in_c;
    s.out_c = c.out_c;
    s.k_h = s.k_w = c.k;
    s.stride_h = s.stride_w = c.stride;
    s.padding = c.padding;
    const std::string err = keras_xnor::resolve_conv2d_shape(&s);
    if (!err.empty()) {
      std::printf("%s: %s\n", c.name, err.c_str());
      return 1;
    }
    std::vector<float> input(static_cast<std::size_t>(s.in_h) * s.in_w * s.in_c);
    for (float& x : input) x = u(rng);
    std::vector<float> weights(static_cast<std::size_t>(s.out_c) * s.k_h * s.k_w * s.in_c);
    for (float& x : weights) x = u(rng);
    std::vector<keras_xnor::PackedWord> filter(static_cast<std::size_t>(s.out_c) * s.k_h * s.k_w *
                                               keras_xnor::packed_words(s.in_c));
    keras_xnor::pack_bits(weights.data(), static_cast<std::int64_t>(s.out_c) * s.k_h * s.k_w, s.in_c,
                          filter.data());
    std::vector<float> alpha(s.out_c, 0.5f), bias(s.out_c, 0.1f);
    std::vector<float> out(static_cast<std::size_t>(s.out_h) * s.out_w * s.out_c);
    std::vector<float> ref(out.size());
    keras_xnor::xnor_conv2d(s, input.data(), filter.data(), alpha.data(), bias.data(), true, true,
                            ref.data(), keras_xnor::serial_for, KernelPath::kReference);
    const double ops = static_cast<double>(s.out_h) * s.out_w * s.out_c * s.k_h * s.k_w * s.in_c;
    // avx2-prep: the AVX2 path with a PreparedConv2DFilter (what the TFLite delegate runs).
    const keras_xnor::PreparedConv2DFilter prepared = keras_xnor::prepare_conv2d_filter(s, filter.data());
    for (const std::string& pname :
         {std::string("avx2"), std::string("avx2-prep"), std::string("portable")}) {
      if (("," + paths_arg + ",").find("," + pname + ",") == std::string::npos) continue;
      const KernelPath path = pname == "portable" ? KernelPath::kPortable : KernelPath::kAvx2;
      const bool use_prepared = pname == "avx2-prep";
      if (!keras_xnor::kernel_path_available(path)) continue;
      for (int t : thread_counts) {
        Pool pool(t);
        const keras_xnor::ParallelFor pf = pool.parallel_for();
        std::vector<std::vector<float>> spare(static_cast<std::size_t>(out_buffers - 1),
                                              std::vector<float>(out.size()));
        int call = 0;
        auto run = [&] {
          const int b = call++ % out_buffers;
          float* const o = b == 0 ? out.data() : spare[static_cast<std::size_t>(b - 1)].data();
          if (use_prepared) {
            keras_xnor::xnor_conv2d(s, input.data(), prepared, alpha.data(), bias.data(), true,
                                    true, o, pf, path);
          } else {
            keras_xnor::xnor_conv2d(s, input.data(), filter.data(), alpha.data(), bias.data(), true,
                                    true, o, pf, path);
          }
        };
        run();
        double max_err = 0.0;
        for (std::size_t i = 0; i < out.size(); ++i)
          max_err = std::max(max_err, static_cast<double>(std::fabs(out[i] - ref[i])) /
                                          (1.0 + std::fabs(ref[i])));
        const int reps = pname == "portable" ? std::max(3, repeats / 10) : repeats;
        const auto [best, median] = min_and_median(run, reps);
        std::printf("%-32s %-9s %3d %9.4f %9.4f %9.1f %7.1f%%%s\n", c.name, pname.c_str(), t,
                    best * 1e3, median * 1e3, ops / best / 1e9,
                    t < 3 && roof[t] > 0 ? 100.0 * ops / best / roof[t] : 0.0,
                    max_err > 1e-4 ? "  MISMATCH vs reference" : "");
        std::fflush(stdout);
      }
    }
  }
  // Dense layers (batch 1 is a GEMV: bound by streaming the packed weights; from batch 2 a
  // prepared filter runs the channel-lane table tile on a 1 x batch image).
  struct DenseCase {
    const char* name;
    int batch, in_f, units;
  };
  const DenseCase dense_cases[] = {
      {"alexnet fc6 9216->4096 N=1", 1, 9216, 4096},
      {"alexnet fc7 4096->4096 N=1", 1, 4096, 4096},
      {"alexnet fc7 4096->4096 N=4", 4, 4096, 4096},
      {"alexnet fc7 4096->4096 N=16", 16, 4096, 4096},
      {"alexnet fc7 4096->4096 N=64", 64, 4096, 4096},
      {"alexnet fc6 9216->4096 N=16", 16, 9216, 4096},
      {"resnet18 fc 512->1000 N=1", 1, 512, 1000},
      {"resnet18 fc 512->1000 N=16", 16, 512, 1000},
  };
  for (const DenseCase& c : dense_cases) {
    if (!only.empty() && std::string(c.name).find(only) == std::string::npos) continue;
    std::vector<float> input(static_cast<std::size_t>(c.batch) * c.in_f);
    for (float& x : input) x = u(rng);
    std::vector<float> weights(static_cast<std::size_t>(c.units) * c.in_f);
    for (float& x : weights) x = u(rng);
    std::vector<keras_xnor::PackedWord> filter(static_cast<std::size_t>(c.units) *
                                               keras_xnor::packed_words(c.in_f));
    keras_xnor::pack_bits(weights.data(), c.units, c.in_f, filter.data());
    std::vector<float> alpha(c.units, 0.5f), bias(c.units, 0.1f);
    std::vector<float> out(static_cast<std::size_t>(c.batch) * c.units), ref(out.size());
    keras_xnor::xnor_dense(c.batch, c.in_f, c.units, input.data(), filter.data(), alpha.data(),
                           bias.data(), true, false, ref.data(), keras_xnor::serial_for,
                           KernelPath::kReference);
    const double ops = static_cast<double>(c.batch) * c.in_f * c.units;
    // avx2-prep: with a PreparedDenseFilter (the delegate's constant filters).
    const keras_xnor::PreparedDenseFilter prepared =
        keras_xnor::prepare_dense_filter(c.in_f, c.units, filter.data());
    for (const std::string& pname :
         {std::string("avx2"), std::string("avx2-prep"), std::string("portable")}) {
      if (("," + paths_arg + ",").find("," + pname + ",") == std::string::npos) continue;
      const KernelPath path = pname == "portable" ? KernelPath::kPortable : KernelPath::kAvx2;
      const bool use_prepared = pname == "avx2-prep";
      if (!keras_xnor::kernel_path_available(path)) continue;
      for (int t : thread_counts) {
        Pool pool(t);
        const keras_xnor::ParallelFor pf = pool.parallel_for();
        auto run = [&] {
          if (use_prepared) {
            keras_xnor::xnor_dense(c.batch, c.in_f, c.units, input.data(), prepared, alpha.data(),
                                   bias.data(), true, false, out.data(), pf, path);
          } else {
            keras_xnor::xnor_dense(c.batch, c.in_f, c.units, input.data(), filter.data(),
                                   alpha.data(), bias.data(), true, false, out.data(), pf, path);
          }
        };
        run();
        double max_err = 0.0;
        for (std::size_t i = 0; i < out.size(); ++i)
          max_err = std::max(max_err, static_cast<double>(std::fabs(out[i] - ref[i])) /
                                          (1.0 + std::fabs(ref[i])));
        const auto [best, median] = min_and_median(run, repeats);
        std::printf("%-32s %-9s %3d %9.4f %9.4f %9.1f %7.1f%%%s\n", c.name, pname.c_str(), t,
                    best * 1e3, median * 1e3, ops / best / 1e9,
                    t < 3 && roof[t] > 0 ? 100.0 * ops / best / roof[t] : 0.0,
                    max_err > 1e-4 ? "  MISMATCH vs reference" : "");
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
