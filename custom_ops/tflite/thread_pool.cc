#include "custom_ops/tflite/thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__linux__)
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KERAS_XNOR_PAUSE() _mm_pause()
#else
#define KERAS_XNOR_PAUSE() std::this_thread::yield()
#endif

namespace keras_xnor {
namespace {
// Below this many "simple operations" a job is not worth waking threads for (~10 us).
constexpr std::int64_t kMinParallelCost = 20000;
// How long an idle thread polls before blocking. Default: about 64 pause instructions only.
// Longer spins (50-200 us) measured slower at 2 threads on a 2-core box: XNNPACK's own pool
// runs the float layers between our nodes and its workers compete with ours for the cores, so
// a spinning worker steals time from the thread doing the work. Tune with -D at build time.
#ifndef KERAS_XNOR_SPIN_MICROS
#define KERAS_XNOR_SPIN_MICROS 0
#endif
constexpr int kSpinMicros = KERAS_XNOR_SPIN_MICROS;

// Polls `done` for up to kSpinMicros; true if it became true.
template <typename Predicate>
bool spin_until(Predicate done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
  for (int i = 0;; ++i) {
    if (done()) return true;
    KERAS_XNOR_PAUSE();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return false;
  }
}
// The CPU the calling thread runs on, or -1 where that is unknown.
int current_cpu() {
#if defined(__linux__)
  return sched_getcpu();
#else
  return -1;
#endif
}

// The kernel id of the calling thread, or -1 where there is none.
long current_tid() {
#if defined(__linux__)
  return static_cast<long>(syscall(SYS_gettid));
#else
  return -1;
#endif
}
}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  placements_.resize(static_cast<std::size_t>(std::max(num_threads - 1, 0)));
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this, i] { worker_loop(i - 1); });
  // A worker not registered yet could not be kept off the first job's caller CPU.
  std::unique_lock<std::mutex> lock(mutex_);
  registered_cv_.wait(lock, [&] { return registered_ == static_cast<int>(workers_.size()); });
}

// Why workers are kept off the caller's CPU: a worker woken while the other CPUs look busy is
// queued on the CPU of the thread that woke it. It then only runs when the caller stops, after
// the caller has taken every block, and a job meant for two threads runs at one thread's
// speed. On VMs this is the rule after an idle spell: a vCPU that the host descheduled while
// idle counts as busy for the guest's scheduler (vcpu_is_preempted), and a woken worker then
// stays next to its caller job after job. Measured on the development VM (2 vCPUs): one 3x3
// conv 128@28 at 2 threads, invoked 20 times after 20 ms or more of idling, had its worker on
// the caller's CPU in ~all jobs, and the median invoke took 0.25 ms instead of 0.13 ms.
//
// So before waking the workers, the caller excludes its own CPU from their affinity (what
// they started with, minus that CPU; nothing when that leaves no CPU). The system call is made
// only when the caller's CPU changed since the last job, so a steady caller pays nothing.
void ThreadPool::keep_workers_off(int cpu) {
#if defined(__linux__)
  if (cpu < 0 || cpu >= CPU_SETSIZE) return;
  for (Placement& placement : placements_) {
    if (placement.tid < 0 || placement.handled_cpu == cpu) continue;
    cpu_set_t allowed;
    if (sched_getaffinity(static_cast<pid_t>(placement.tid), sizeof(allowed), &allowed) != 0) {
      continue;
    }
    if (placement.removed) CPU_SET(placement.handled_cpu, &allowed);  // as it started
    const bool remove = CPU_ISSET(cpu, &allowed) != 0 && CPU_COUNT(&allowed) > 1;
    if (remove) CPU_CLR(cpu, &allowed);
    if ((remove || placement.removed) &&
        sched_setaffinity(static_cast<pid_t>(placement.tid), sizeof(allowed), &allowed) != 0) {
      continue;
    }
    placement.handled_cpu = cpu;
    placement.removed = remove;
  }
#else
  (void)cpu;
#endif
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

// Guided blocks (GuidedRanges, custom_ops/core/parallel.h), as in the TF op's adapter: the
// caller claims from the back, the workers from the front.
void ThreadPool::run_blocks(GuidedRanges::End end_to_claim) {
  std::int64_t begin, end;
  while (ranges_.claim(&begin, &end, end_to_claim)) (*fn_)(begin, end);
}

void ThreadPool::worker_loop(int index) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    placements_[static_cast<std::size_t>(index)].tid = current_tid();
    ++registered_;
  }
  registered_cv_.notify_all();
  std::uint64_t seen = 0;
  for (;;) {
    auto ready = [&] { return stop_.load() || generation_.load() != seen; };
    if (!spin_until(ready)) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, ready);
    }
    if (stop_.load()) return;
    seen = generation_.load();
    run_blocks(GuidedRanges::End::kFront);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      workers_finished_.fetch_add(1);
    }
    done_.notify_one();
  }
}

void ThreadPool::parallel_for(std::int64_t n, std::int64_t cost_per_unit, const RangeFn& fn) {
  if (n <= 0) return;
  const std::int64_t cost = std::max<std::int64_t>(cost_per_unit, 1);
  if (workers_.empty() || n == 1 || n * cost < kMinParallelCost) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> job_lock(job_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = &fn;
    ranges_.reset(n, num_threads());
    workers_finished_.store(0);
    keep_workers_off(current_cpu());
    generation_.fetch_add(1);  // publishes the job (seq_cst, after the fields above)
  }
  wake_.notify_all();
  run_blocks(GuidedRanges::End::kBack);
  // Every worker sees every generation exactly once; waiting for all of them guarantees no
  // worker still touches fn_ (which lives on our caller's stack) after we return.
  const int workers = static_cast<int>(workers_.size());
  auto all_done = [&] { return workers_finished_.load() == workers; };
  if (!spin_until(all_done)) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, all_done);
  }
  fn_ = nullptr;
}

ParallelFor ThreadPool::as_parallel_for() {
  return [this](std::int64_t n, std::int64_t cost, const RangeFn& fn) { parallel_for(n, cost, fn); };
}

}  // namespace keras_xnor
