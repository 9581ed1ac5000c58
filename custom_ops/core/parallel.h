// Parallel-for supplied by the adapter (TF's thread pool in the TF op, the delegate's own pool
// in TFLite). The core never creates threads itself.
//
// Contract: parallel_for(n, cost, fn) calls fn(begin, end) on disjoint ranges that cover
// [0, n) exactly once, possibly concurrently, and returns when all calls have returned.
// `cost_per_unit` is a hint (roughly the number of simple operations per unit) that a pool may
// use to choose its block size. Kernels must give identical results for any split.
#ifndef KERAS_XNOR_CORE_PARALLEL_H_
#define KERAS_XNOR_CORE_PARALLEL_H_

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

}  // namespace keras_xnor

#endif  // KERAS_XNOR_CORE_PARALLEL_H_
