// Tests of GuidedRanges (custom_ops/core/parallel.h), the split both adapters' pools use: the
// ranges cover [0, n) exactly once whichever end each claim takes, in whatever interleaving,
// with real threads too; front claims run upwards from 0 and back claims downwards from n.
#include <atomic>
#include <cstdint>
#include <thread>
#include <utility>
#include <vector>

#include "custom_ops/core/parallel.h"
#include "custom_ops/core/tests/harness.h"

namespace keras_xnor {
namespace testing {
namespace {

using End = GuidedRanges::End;

// Claims until none is left, each claim's end drawn at random; checks every range's size and
// where it sits, then that the ranges cover [0, n) exactly once.
void check_one_job(Rng& rng, std::int64_t n, int threads, std::int64_t fixed) {
  GuidedRanges ranges;
  ranges.reset(n, threads, fixed);
  const std::int64_t min_units = ranges.min_units();
  KX_CHECK(min_units >= 1, "n %lld: min_units %lld", static_cast<long long>(n),
           static_cast<long long>(min_units));
  if (fixed > 0) KX_CHECK(min_units == fixed, "fixed %lld", static_cast<long long>(fixed));
  std::vector<int> hits(static_cast<std::size_t>(n), 0);
  std::int64_t front = 0, back = n, count = 0, begin = -1, end = -1;
  for (;;) {
    const End side = uniform_int(rng, 0, 1) == 0 ? End::kFront : End::kBack;
    if (!ranges.claim(&begin, &end, side)) break;
    ++count;
    KX_CHECK(begin >= 0 && begin < end && end <= n, "n %lld: range [%lld, %lld)",
             static_cast<long long>(n), static_cast<long long>(begin),
             static_cast<long long>(end));
    if (!(begin >= 0 && begin < end && end <= n)) return;
    const bool last = end - begin == back - front;
    KX_CHECK(last || end - begin >= min_units, "n %lld: range of %lld < min %lld",
             static_cast<long long>(n), static_cast<long long>(end - begin),
             static_cast<long long>(min_units));
    if (fixed > 0) KX_CHECK(last || end - begin == fixed, "fixed range %lld",
                            static_cast<long long>(end - begin));
    if (side == End::kFront) {
      KX_CHECK(begin == front, "front claim starts at %lld, expected %lld",
               static_cast<long long>(begin), static_cast<long long>(front));
      front = end;
    } else {
      KX_CHECK(end == back, "back claim ends at %lld, expected %lld",
               static_cast<long long>(end), static_cast<long long>(back));
      back = begin;
    }
    for (std::int64_t u = begin; u < end; ++u) ++hits[static_cast<std::size_t>(u)];
  }
  KX_CHECK(!ranges.claim(&begin, &end, End::kFront) && !ranges.claim(&begin, &end, End::kBack),
           "a claim succeeded after the job ran out");
  KX_CHECK(front == back || n == 0, "n %lld: ends met at %lld / %lld",
           static_cast<long long>(n), static_cast<long long>(front),
           static_cast<long long>(back));
  KX_CHECK(count <= (n + min_units - 1) / min_units, "n %lld: %lld ranges, min %lld",
           static_cast<long long>(n), static_cast<long long>(count),
           static_cast<long long>(min_units));
  for (std::int64_t u = 0; u < n; ++u) {
    KX_CHECK(hits[static_cast<std::size_t>(u)] == 1, "n %lld: unit %lld claimed %d times",
             static_cast<long long>(n), static_cast<long long>(u),
             hits[static_cast<std::size_t>(u)]);
  }
}

void test_single_thread_claims(Rng& rng) {
  for (std::int64_t n : {0, 1, 2, 3, 7, 16, 31, 100, 1000, 12345}) {
    for (int threads : {1, 2, 3, 8}) {
      for (std::int64_t fixed : {0, 1, 3, 64}) {
        for (int repeat = 0; repeat < 4; ++repeat) check_one_job(rng, n, threads, fixed);
      }
    }
  }
}

// One thread claims from the front and the others from the back, as in the adapters; every
// unit must be run exactly once, and the object is reused job after job.
void test_real_threads() {
  constexpr std::int64_t kUnits = 20000;
  constexpr int kThreads = 4;
  GuidedRanges ranges;
  std::vector<std::atomic<int>> hits(kUnits);
  for (int job = 0; job < 40; ++job) {
    for (auto& h : hits) h.store(0, std::memory_order_relaxed);
    ranges.reset(kUnits, kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&ranges, &hits, t] {
        std::int64_t begin, end;
        while (ranges.claim(&begin, &end, t == 0 ? End::kFront : End::kBack)) {
          for (std::int64_t u = begin; u < end; ++u) {
            hits[static_cast<std::size_t>(u)].fetch_add(1, std::memory_order_relaxed);
          }
        }
      });
    }
    for (auto& thread : threads) thread.join();
    int wrong = 0;
    for (auto& h : hits) wrong += h.load() != 1;
    KX_CHECK(wrong == 0, "job %d: %d units not run exactly once", job, wrong);
  }
}

// Jobs of 2^32 units or more do not fit the two 32-bit ends: every claim then takes the next
// range from the front, whichever end it asks for, and the ranges still tile [0, n).
void test_huge_job() {
  const std::int64_t n = (std::int64_t{1} << 32) + 12345;
  GuidedRanges ranges;
  ranges.reset(n, 2);
  std::int64_t next = 0, begin = -1, end = -1;
  int count = 0;
  while (ranges.claim(&begin, &end, count % 2 == 0 ? End::kFront : End::kBack)) {
    KX_CHECK(begin == next && end > begin && end <= n, "range [%lld, %lld) after %lld",
             static_cast<long long>(begin), static_cast<long long>(end),
             static_cast<long long>(next));
    next = end;
    ++count;
  }
  KX_CHECK(next == n, "covered up to %lld of %lld", static_cast<long long>(next),
           static_cast<long long>(n));
  KX_CHECK(count <= 32, "%d ranges", count);
  // The largest two-ended job.
  const std::int64_t largest = 0xffffffff;
  ranges.reset(largest, 2);
  KX_CHECK(ranges.claim(&begin, &end, End::kBack) && end == largest,
           "back claim of the largest two-ended job ends at %lld", static_cast<long long>(end));
}

}  // namespace
}  // namespace testing
}  // namespace keras_xnor

int main() {
  keras_xnor::testing::Rng rng(99);
  keras_xnor::testing::test_single_thread_claims(rng);
  keras_xnor::testing::test_real_threads();
  keras_xnor::testing::test_huge_job();
  return keras_xnor::testing::finish("parallel_test");
}
