// Parallel-for supplied by the adapter (TF's thread pool in the TF op, the delegate's own pool
// in TFLite). The core never creates threads itself.
//
// Contract: parallel_for(n, cost, fn) calls fn(begin, end) on disjoint ranges that cover
// [0, n) exactly once, possibly concurrently, and returns when all calls have returned.
// `cost_per_unit` is a hint (roughly the number of simple operations per unit) that a pool may
// use to choose its block size. Kernels must give identical results for any split.
#ifndef KERAS_XNOR_CORE_PARALLEL_H_
#define KERAS_XNOR_CORE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>

namespace keras_xnor {

using RangeFn = std::function<void(std::int64_t begin, std::int64_t end)>;
using ParallelFor =
    std::function<void(std::int64_t n, std::int64_t cost_per_unit, const RangeFn& fn)>;

// Runs everything on the calling thread, as one range.
inline void serial_for(std::int64_t n, std::int64_t /*cost_per_unit*/, const RangeFn& fn) {
  if (n > 0) fn(0, n);
}

// How the adapters' pools (the TF op's and the delegate's) split a job among their threads:
// [0, n) handed out through one atomic counter in guided ranges. A claim takes 1 / (2 *
// threads) of the units still unclaimed, so the first ranges are long (few claims) and the
// last ones short, and a thread that starts late or runs slower delays the end by a short
// range only (TF op, 2 threads, 256@14: 0.096 -> 0.090 ms against 4 fixed chunks per thread).
// At least 1 / (16 * threads) of the job: single-unit ranges alternating between threads at
// the end cost more than they balance (delegate, 64@56: +3 us without that minimum). With
// `fixed` > 0 every range is `fixed` units long instead (a testing hook).
// reset() must not run while another thread claims; publishing the job to the other threads
// (the pool's own synchronisation) orders it before their claims.
class GuidedRanges {
 public:
  void reset(std::int64_t n, int threads, std::int64_t fixed = 0) {
    n_ = n;
    fixed_ = fixed > 0;
    const std::int64_t t = std::max(threads, 1);
    divisor_ = 2 * t;
    min_units_ = fixed_ ? fixed : std::max<std::int64_t>(1, n / (16 * t));
    next_.store(0, std::memory_order_relaxed);
  }
  // The shortest range a claim returns (but the last one): at most ceil(n / min_units())
  // ranges in all.
  std::int64_t min_units() const { return min_units_; }
  // Claims the next range into [*begin, *end); false when every unit is claimed.
  bool claim(std::int64_t* begin, std::int64_t* end) {
    std::int64_t b = next_.load(std::memory_order_relaxed);
    for (;;) {
      if (b >= n_) return false;
      const std::int64_t size = fixed_ ? min_units_ : std::max(min_units_, (n_ - b) / divisor_);
      const std::int64_t e = std::min(n_, b + size);
      if (next_.compare_exchange_weak(b, e, std::memory_order_relaxed)) {
        *begin = b;
        *end = e;
        return true;
      }
    }
  }

 private:
  std::atomic<std::int64_t> next_{0};  // first unclaimed unit
  std::int64_t n_ = 0, divisor_ = 1, min_units_ = 1;
  bool fixed_ = false;
};

}  // namespace keras_xnor

#endif  // KERAS_XNOR_CORE_PARALLEL_H_
