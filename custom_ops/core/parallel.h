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
#include <thread>

namespace keras_xnor {

using RangeFn = std::function<void(std::int64_t begin, std::int64_t end)>;
using ParallelFor =
    std::function<void(std::int64_t n, std::int64_t cost_per_unit, const RangeFn& fn)>;

// Runs everything on the calling thread, as one range.
inline void serial_for(std::int64_t n, std::int64_t /*cost_per_unit*/, const RangeFn& fn) {
  if (n > 0) fn(0, n);
}

// How the adapters' pools (the TF op's and the delegate's) split a job among their threads:
// guided ranges claimed from the two ends of [0, n). The calling thread claims from the back,
// the pool's threads from the front, so each thread's ranges are contiguous and the ends meet
// once, as with static halves: an input row one thread packs is read by the other near that
// meeting point only. Claimed from one end, the ranges alternated between the threads: 2-3 us
// slower on 128@28 and 64@56 at 2 threads in core_bench (alternated runs), 1-3% slower through
// the TF op on the four ResNet-18 3x3 convs (one process, the splits alternated). The
// caller takes the back because in the delegate it was as fast or faster than the other way
// round (128@28 there: median 0.099-0.100 ms against 0.101-0.111 with the caller at the front
// and 0.103 from one end); through the TF op it was as fast or slightly faster (docs/SPEED.md).
// A claim takes 1 / (2 * threads) of the units still unclaimed, so the first ranges are long
// (few claims) and the last ones short, and a thread that starts late or runs slower delays
// the end by a short range only (TF op, 2 threads, 256@14: 0.096 -> 0.090 ms against 4 fixed
// chunks per thread). At least 1 / (16 * threads) of the job: single-unit ranges alternating
// between threads at the end cost more than they balance (delegate, 64@56: +3 us without that
// minimum). With `fixed` > 0 every range is `fixed` units long instead (a testing hook). Jobs
// of 2^32 units or more are claimed from the front only.
// reset() must not run while another thread claims; publishing the job to the other threads
// (the pool's own synchronisation) orders it before their claims.
class GuidedRanges {
 public:
  enum class End { kFront, kBack };

  void reset(std::int64_t n, int threads, std::int64_t fixed = 0) {
    n = std::max<std::int64_t>(n, 0);
    fixed_ = fixed > 0;
    const std::int64_t t = std::max(threads, 1);
    divisor_ = 2 * t;
    min_units_ = fixed_ ? fixed : std::max<std::int64_t>(1, n / (16 * t));
    two_ended_ = n <= kMaxTwoEnded;
    if (two_ended_) {
      ends_.store(pack(0, n), std::memory_order_relaxed);
    } else {
      n_ = n;
      next_.store(0, std::memory_order_relaxed);
    }
  }
  // The shortest range a claim returns (but the last one): at most ceil(n / min_units())
  // ranges in all.
  std::int64_t min_units() const { return min_units_; }
  // Claims the next range at `end` of the unclaimed units into [*begin, *end_out); false when
  // every unit is claimed.
  bool claim(std::int64_t* begin, std::int64_t* end_out, End end) {
    if (!two_ended_) return claim_front_only(begin, end_out);
    std::uint64_t ends = ends_.load(std::memory_order_relaxed);
    for (;;) {
      const std::int64_t front = static_cast<std::int64_t>(ends & kLow);
      const std::int64_t back = static_cast<std::int64_t>(ends >> 32);
      if (front >= back) return false;
      const std::int64_t size = std::min(back - front, range_size(back - front));
      const bool from_back = end == End::kBack;
      const std::int64_t b = from_back ? back - size : front;
      const std::uint64_t next = from_back ? pack(front, b) : pack(front + size, back);
      if (ends_.compare_exchange_weak(ends, next, std::memory_order_relaxed)) {
        *begin = b;
        *end_out = b + size;
        return true;
      }
    }
  }

 private:
  static constexpr std::uint64_t kLow = 0xffffffffu;
  static constexpr std::int64_t kMaxTwoEnded = 0xffffffff;
  static std::uint64_t pack(std::int64_t front, std::int64_t back) {
    return static_cast<std::uint64_t>(front) | (static_cast<std::uint64_t>(back) << 32);
  }
  std::int64_t range_size(std::int64_t unclaimed) const {
    return fixed_ ? min_units_ : std::max(min_units_, unclaimed / divisor_);
  }
  bool claim_front_only(std::int64_t* begin, std::int64_t* end) {
    std::int64_t b = next_.load(std::memory_order_relaxed);
    for (;;) {
      if (b >= n_) return false;
      const std::int64_t e = std::min(n_, b + range_size(n_ - b));
      if (next_.compare_exchange_weak(b, e, std::memory_order_relaxed)) {
        *begin = b;
        *end = e;
        return true;
      }
    }
  }

  std::atomic<std::uint64_t> ends_{0};  // first unclaimed unit | (one past the last) << 32
  std::atomic<std::int64_t> next_{0};   // first unclaimed unit (jobs too large for ends_)
  std::int64_t n_ = 0, divisor_ = 1, min_units_ = 1;
  bool fixed_ = false, two_ended_ = true;
};

// One step of a spin-wait: the CPU's pause hint where there is one.
inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Runs make() unless `state` says it ran: 0 not made, 1 being made (by the thread that claimed
// it, which makes it at once, so the wait is short and cannot deadlock), 2 made. The release
// store / acquire load order what make() wrote before any read of it by a waiting thread.
template <typename Make>
inline void make_once(std::atomic<std::uint8_t>& state, const Make& make) {
  if (state.load(std::memory_order_acquire) == 2) return;
  std::uint8_t expected = 0;
  if (state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
    make();
    state.store(2, std::memory_order_release);
    return;
  }
  // Spin (a row is made in microseconds), then yield, in case the making thread was preempted.
  for (int spins = 0; state.load(std::memory_order_acquire) != 2; ++spins) {
    if (spins < 4096) {
      spin_pause();
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace keras_xnor

#endif  // KERAS_XNOR_CORE_PARALLEL_H_
