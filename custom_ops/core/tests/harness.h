// A tiny test harness for the core's C++ tests (no gtest): CHECK macros that count failures,
// a fixed-seed RNG, and ParallelFor implementations that split ranges the way real pools do
// (and some ways they do not), to prove results do not depend on the split.
#ifndef KERAS_XNOR_CORE_TESTS_HARNESS_H_
#define KERAS_XNOR_CORE_TESTS_HARNESS_H_

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

#include "custom_ops/core/parallel.h"

namespace keras_xnor {
namespace testing {

inline int& failure_count() {
  static int count = 0;
  return count;
}

#define KX_CHECK(cond, ...)                                                  \
  do {                                                                       \
    if (!(cond)) {                                                           \
      if (++::keras_xnor::testing::failure_count() <= 20) {                  \
        std::fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
        std::fprintf(stderr, __VA_ARGS__);                                   \
        std::fprintf(stderr, "\n");                                          \
      }                                                                      \
    }                                                                        \
  } while (0)

inline int finish(const char* name) {
  if (failure_count() != 0) {
    std::fprintf(stderr, "%s: %d check(s) FAILED\n", name, failure_count());
    return 1;
  }
  std::printf("%s: all checks passed\n", name);
  return 0;
}

using Rng = std::mt19937_64;

inline int uniform_int(Rng& rng, int lo, int hi) {  // inclusive
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

// Floats with a good share of exact zeros (+0 and -0), small and large magnitudes.
inline void fill_inputs(Rng& rng, std::vector<float>* v) {
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  for (float& x : *v) {
    const int kind = uniform_int(rng, 0, 15);
    if (kind == 0) x = 0.0f;
    else if (kind == 1) x = -0.0f;
    else x = u(rng);
  }
}

// Splits [0, n) into irregular pieces (1, 2, 3, 5, ... units) and runs them in reverse order.
inline void odd_split_for(std::int64_t n, std::int64_t, const RangeFn& fn) {
  std::vector<std::pair<std::int64_t, std::int64_t>> ranges;
  std::int64_t begin = 0, step = 1;
  while (begin < n) {
    const std::int64_t end = std::min(n, begin + step);
    ranges.emplace_back(begin, end);
    begin = end;
    step = step * 2 + 1;
  }
  for (auto it = ranges.rbegin(); it != ranges.rend(); ++it) fn(it->first, it->second);
}

// Two uneven halves, as two "threads" run one after the other.
inline void two_piece_for(std::int64_t n, std::int64_t, const RangeFn& fn) {
  if (n <= 0) return;
  const std::int64_t mid = n / 3;
  if (mid > 0) fn(0, mid);
  fn(mid, n);
}

// Real threads: `threads` contiguous chunks, one std::thread each (the last on the caller).
inline ParallelFor thread_for(int threads) {
  return [threads](std::int64_t n, std::int64_t, const RangeFn& fn) {
    if (n <= 0) return;
    const std::int64_t t = std::min<std::int64_t>(threads, n);
    std::vector<std::thread> pool;
    for (std::int64_t i = 0; i + 1 < t; ++i) {
      pool.emplace_back([&fn, i, n, t] { fn(n * i / t, n * (i + 1) / t); });
    }
    fn(n * (t - 1) / t, n);
    for (auto& th : pool) th.join();
  };
}

}  // namespace testing
}  // namespace keras_xnor

#endif  // KERAS_XNOR_CORE_TESTS_HARNESS_H_
