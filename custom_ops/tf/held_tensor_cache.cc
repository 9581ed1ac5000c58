// Process-wide counters of the work the weight caches save (held_tensor_cache.h), exported
// as C functions for tests (read with ctypes from the loaded op library).
#include <atomic>
#include <cstdint>

#include "custom_ops/tf/held_tensor_cache.h"

namespace keras_xnor {
namespace tf_adapter {
namespace {

std::atomic<std::int64_t> filter_packs{0};
std::atomic<std::int64_t> filter_prepares{0};
std::atomic<std::int64_t> cache_entries{0};

}  // namespace

void count_filter_pack() { filter_packs.fetch_add(1, std::memory_order_relaxed); }
void count_filter_prepare() { filter_prepares.fetch_add(1, std::memory_order_relaxed); }
void count_cache_entries(std::int64_t delta) {
  cache_entries.fetch_add(delta, std::memory_order_relaxed);
}

WeakTensorIndex<const internal::PreparedFilterData>& prepared_filters() {
  static auto* index = new WeakTensorIndex<const internal::PreparedFilterData>;
  return *index;
}

}  // namespace tf_adapter
}  // namespace keras_xnor

// Filters packed by KerasXnorPackFilter so far (cache misses).
extern "C" __attribute__((visibility("default"))) std::int64_t keras_xnor_tf_filter_packs() {
  return keras_xnor::tf_adapter::filter_packs.load();
}

// Filters prepared by KerasXnorBinConv2D and KerasXnorBinDense so far.
extern "C" __attribute__((visibility("default"))) std::int64_t keras_xnor_tf_filter_prepares() {
  return keras_xnor::tf_adapter::filter_prepares.load();
}

// Entries all the weight caches hold now (each keeps one weight buffer alive).
extern "C" __attribute__((visibility("default"))) std::int64_t keras_xnor_tf_cache_entries() {
  return keras_xnor::tf_adapter::cache_entries.load();
}
