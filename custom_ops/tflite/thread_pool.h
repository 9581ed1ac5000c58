// A small fixed-size std::thread pool that implements the core's ParallelFor contract
// (custom_ops/core/parallel.h) for the TFLite delegate.
//
// Contract: ThreadPool(n) runs work on n threads in total: the calling thread plus n - 1
// workers started in the constructor and joined in the destructor. parallel_for(n, cost, fn)
// splits [0, n) into disjoint contiguous blocks (guided: shorter towards the end; the caller
// claims from the back of [0, n), the workers from the front), runs them on the caller and the
// workers, and returns when every block has returned; small jobs (n * cost below a threshold)
// run inline on the caller. Calls from several threads at once are serialised (one job at a
// time), so one pool may serve several interpreters. fn must not call parallel_for on the same
// pool.
// Idle workers poll briefly (KERAS_XNOR_SPIN_MICROS, default ~64 pause instructions) before
// sleeping on a condition variable; see thread_pool.cc for why the default spin is short.
// On Linux (and Android), a job's workers are kept off the CPU its caller runs on, within the
// affinity each worker started with (see thread_pool.cc: otherwise a woken worker can share
// the caller's CPU and the job runs at one thread's speed).
#ifndef KERAS_XNOR_TFLITE_THREAD_POOL_H_
#define KERAS_XNOR_TFLITE_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "custom_ops/core/parallel.h"

namespace keras_xnor {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  void parallel_for(std::int64_t n, std::int64_t cost_per_unit, const RangeFn& fn);

  // A ParallelFor bound to this pool (the pool must outlive it).
  ParallelFor as_parallel_for();

 private:
  // What a job needs to steer one worker off the caller's CPU (Linux; unused elsewhere).
  struct Placement {
    long tid = -1;        // kernel thread id, -1 until the worker has started
    int handled_cpu = -1;  // the caller CPU its affinity was last set for, -1: none
    bool removed = false;  // whether that CPU was taken out of its affinity (to put back)
  };

  void worker_loop(int index);
  void run_blocks(GuidedRanges::End end_to_claim);
  void keep_workers_off(int cpu);  // called with mutex_ held

  std::vector<std::thread> workers_;
  std::mutex job_mutex_;  // one job at a time

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::atomic<std::uint64_t> generation_{0};  // written under mutex_, read spinning
  std::atomic<int> workers_finished_{0};
  std::atomic<bool> stop_{false};

  // The current job (valid while a generation is running).
  const RangeFn* fn_ = nullptr;
  GuidedRanges ranges_;

  std::vector<Placement> placements_;  // one per worker, under mutex_
  int registered_ = 0;                 // workers whose tid is in placements_, under mutex_
  std::condition_variable registered_cv_;
};

}  // namespace keras_xnor

#endif  // KERAS_XNOR_TFLITE_THREAD_POOL_H_
