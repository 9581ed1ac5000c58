// A small cache keyed by the identity of an input tensor's buffer, for values derived from
// weights that stay the same across calls: the conv op's prepared filter, the packed filter of
// KerasXnorPackFilter.
//
// Why identity is enough: TensorFlow never changes the contents of a buffer that more than one
// Tensor refers to. Ops that update in place (variable assignments and optimizer updates,
// forwarded outputs) do so only when the buffer's reference count is one, and otherwise write
// a new buffer (copy on write). An entry holds a Tensor referring to the input's buffer, so
// while the entry lives that buffer cannot be updated in place nor freed and reused: a later
// input with the same buffer address and shape has the same contents. A weight variable that
// the optimizer updates therefore gets a new buffer at its first update after being cached
// (one copy), and the next call misses and recomputes.
// The exceptions are the raw ops documented as unsafe for shared buffers (InplaceUpdate and
// its kin) and TF1 reference variables; KERAS_XNOR_TF_WEIGHT_CACHE=0 in the environment (read
// once, when the first op runs) turns every cache off for such programs. So do tensors that
// share memory with another framework's array (tf.experimental.dlpack.from_dlpack of a NumPy
// or PyTorch array that its owner changes in place): TF cannot see those writes. (TF marks
// such memory as not its own, but it marks the memory of tf.constant(numpy_array) so too, and
// those weights must stay cached.)
//
// An entry whose buffer nothing but the entry refers to any more (the weight moved to a new
// buffer, or was freed) can never be hit again: it is dropped at the next lookup, so the
// cache never keeps old weights alive, and its capacity can be large. It has to be: eager
// mode runs all the calls with the same attributes (every layer of a network) on one kernel,
// in the same order every time, which least-recently-used eviction turns into a miss on
// every call as soon as the layers outnumber the entries.
//
// How often the ops did the work a cache saves (packed a filter, prepared a conv filter) is
// counted process-wide and readable through the C functions of held_tensor_cache.cc, so tests
// can check that unchanged weights are processed once.
//
// One cache per OpKernel. In graph mode every node has its own kernel; eager mode shares one
// kernel between all calls with the same attributes, hence many entries (least recently used
// evicted when full). Thread-safe: Compute may run concurrently.
#ifndef KERAS_XNOR_TF_HELD_TENSOR_CACHE_H_
#define KERAS_XNOR_TF_HELD_TENSOR_CACHE_H_

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "custom_ops/core/xnor_conv2d.h"
#include "tensorflow/core/common_runtime/dma_helper.h"
#include "tensorflow/core/framework/tensor.h"

namespace keras_xnor {
namespace tf_adapter {

// False when KERAS_XNOR_TF_WEIGHT_CACHE=0.
inline bool weight_cache_enabled() {
  static const bool enabled = [] {
    const char* text = std::getenv("KERAS_XNOR_TF_WEIGHT_CACHE");
    return text == nullptr || std::strcmp(text, "0") != 0;
  }();
  return enabled;
}

// Counters of work done (not of cache hits), and of the entries all caches hold; see
// held_tensor_cache.cc.
void count_filter_pack();
void count_filter_prepare();
void count_cache_entries(std::int64_t delta);

template <typename Value>
class HeldTensorCache {
 public:
  explicit HeldTensorCache(int capacity) : capacity_(capacity) {}
  ~HeldTensorCache() { count_cache_entries(-static_cast<std::int64_t>(entries_.size())); }
  HeldTensorCache(const HeldTensorCache&) = delete;
  HeldTensorCache& operator=(const HeldTensorCache&) = delete;

  // The value stored for `key`'s buffer and shape, if any (copied out under the lock).
  bool find(const tensorflow::Tensor& key, Value* value) {
    if (!weight_cache_enabled()) return false;
    absl::MutexLock lock(&mu_);
    drop_unreferenced();
    for (Entry& e : entries_) {
      if (same_buffer(e.held, key)) {
        e.last_use = ++clock_;
        *value = e.value;
        return true;
      }
    }
    return false;
  }

  // Whether an entry holds `key`'s buffer (which then cannot have changed since it was seen).
  bool holds(const tensorflow::Tensor& key) {
    if (!weight_cache_enabled()) return false;
    absl::MutexLock lock(&mu_);
    for (const Entry& e : entries_) {
      if (same_buffer(e.held, key)) return true;
    }
    return false;
  }

  // Stores `value` for `key` (replacing an entry for the same buffer, else evicting the least
  // recently used entry when full). Holds a reference to key's buffer from now on.
  void insert(const tensorflow::Tensor& key, Value value) {
    if (!weight_cache_enabled()) return;
    absl::MutexLock lock(&mu_);
    drop_unreferenced();
    Entry* slot = nullptr;
    for (Entry& e : entries_) {
      if (same_buffer(e.held, key)) slot = &e;
    }
    if (slot == nullptr && static_cast<int>(entries_.size()) < capacity_) {
      entries_.emplace_back();
      count_cache_entries(1);
      slot = &entries_.back();
    }
    if (slot == nullptr) {
      slot = &entries_.front();
      for (Entry& e : entries_) {
        if (e.last_use < slot->last_use) slot = &e;
      }
    }
    slot->held = key;  // shares the buffer (a reference, not a copy)
    slot->value = std::move(value);
    slot->last_use = ++clock_;
  }

 private:
  struct Entry {
    tensorflow::Tensor held;
    Value value;
    std::uint64_t last_use = 0;
  };

  // Drops the entries only the entry itself refers to (see the header comment).
  void drop_unreferenced() {
    const auto end = std::remove_if(entries_.begin(), entries_.end(),
                                    [](const Entry& e) { return only_held_here(e.held); });
    count_cache_entries(-static_cast<std::int64_t>(entries_.end() - end));
    entries_.erase(end, entries_.end());
  }

  // Whether nothing but `held` refers to its buffer. (Tensor::RefCountIsOne also asks that
  // TF own the memory, which it does not say of tf.constant(numpy_array).)
  static bool only_held_here(const tensorflow::Tensor& held) {
    const tensorflow::TensorBuffer* buffer = tensorflow::DMAHelper::buffer(&held);
    if (buffer == nullptr) return true;
    auto* root = const_cast<tensorflow::TensorBuffer*>(buffer)->root_buffer();
    return buffer->RefCountIsOne() && root->RefCountIsOne();
  }

  static bool same_buffer(const tensorflow::Tensor& held, const tensorflow::Tensor& key) {
    return held.IsInitialized() && held.dtype() == key.dtype() && held.shape() == key.shape() &&
           held.tensor_data().data() == key.tensor_data().data();
  }

  const int capacity_;
  absl::Mutex mu_;
  std::vector<Entry> entries_;
  std::uint64_t clock_ = 0;
};

// Process-wide index of derived values that some kernel's HeldTensorCache holds, so that
// kernels seeing the same weight buffer share one value (one prepared filter for a weight that
// eager mode, several tf.functions or a chain of nodes all use) instead of one each. Entries
// are weak: a value lives as long as a kernel's cache entry holds it, and that entry also holds
// the key buffer, so while lookup() can lock the value the buffer cannot have been updated in
// place or reused (the argument of the header comment).
template <typename Shared>
class WeakTensorIndex {
 public:
  std::shared_ptr<Shared> lookup(const tensorflow::Tensor& key) {
    absl::MutexLock lock(&mu_);
    for (const Entry& e : entries_) {
      if (e.data == key.tensor_data().data() && e.dtype == key.dtype() && e.shape == key.shape()) {
        if (std::shared_ptr<Shared> value = e.value.lock()) return value;
      }
    }
    return nullptr;
  }

  void add(const tensorflow::Tensor& key, const std::shared_ptr<Shared>& value) {
    absl::MutexLock lock(&mu_);
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                  [](const Entry& e) { return e.value.expired(); }),
                   entries_.end());
    entries_.push_back(Entry{key.tensor_data().data(), key.dtype(), key.shape(), value});
  }

 private:
  struct Entry {
    const void* data;
    tensorflow::DataType dtype;
    tensorflow::TensorShape shape;
    std::weak_ptr<Shared> value;
  };
  absl::Mutex mu_;
  std::vector<Entry> entries_;
};

// Prepared filters held by any kernel, by filter buffer (the conv and the dense op's): kernels
// given the same weights (eager and graph calls of one layer, several functions, a chain of
// nodes) share one prepared copy, which also keeps it warm in the CPU caches.
WeakTensorIndex<const internal::PreparedFilterData>& prepared_filters();

// The prepared form of a filter (PreparedConv2DFilter, PreparedDenseFilter) for a kernel's
// cache and prepared_filters(): a buffer seen for the first time is only remembered (training
// gives a new one every step, which never pays for preparing); at its second sighting the
// filter is prepared, or another kernel's preparation of the same buffer reused, and cached.
// matches(p) tells whether p fits this call's sizes; prepare(&p) makes p and returns false
// when out of memory (p then stays empty, the caller runs on the plain filter and the next
// call tries again). Returns an empty value when the call should use the plain filter.
template <typename Prepared, typename Matches, typename Prepare>
Prepared find_or_prepare(HeldTensorCache<Prepared>* cache, const tensorflow::Tensor& filter,
                         const Matches& matches, const Prepare& prepare) {
  auto* index = &prepared_filters();
  Prepared prepared;
  if (!cache->find(filter, &prepared)) {
    cache->insert(filter, Prepared{});
    return Prepared{};
  }
  if (matches(prepared)) return prepared;
  prepared.data = index->lookup(filter);  // another kernel's, same buffer
  if (!matches(prepared)) {
    count_filter_prepare();
    if (prepare(&prepared)) {
      index->add(filter, prepared.data);
    } else {
      prepared = Prepared{};
    }
  }
  cache->insert(filter, prepared);
  return prepared;
}

}  // namespace tf_adapter
}  // namespace keras_xnor

#endif  // KERAS_XNOR_TF_HELD_TENSOR_CACHE_H_
