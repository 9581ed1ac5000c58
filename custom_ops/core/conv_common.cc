// Pieces shared by the portable and AVX2 paths, compiled for the baseline ISA: work
// decomposition, per-thread scratch, and the portable sign-packing pass.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "custom_ops/core/xnor_kernels.h"

namespace keras_xnor {
namespace internal {

ConvTiling plan_tiling(std::int64_t units, int block_units, int out_c, int oc_multiple,
                       std::int64_t target_tasks) {
  // Enough tasks for a pool of a few threads to balance, few enough that each task amortises
  // its per-block work (im2col, pixel description) over many output channels.
  ConvTiling t;
  t.blocks = (units + block_units - 1) / block_units;
  const int oc_groups = (out_c + oc_multiple - 1) / oc_multiple;
  int chunks = 1;
  if (t.blocks < target_tasks) {
    chunks = static_cast<int>(std::min<std::int64_t>((target_tasks + t.blocks - 1) / t.blocks, oc_groups));
  }
  const int groups_per_chunk = (oc_groups + chunks - 1) / chunks;
  t.oc_chunk = groups_per_chunk * oc_multiple;
  t.oc_chunks = (out_c + t.oc_chunk - 1) / t.oc_chunk;
  t.tasks = t.blocks * t.oc_chunks;
  return t;
}

ConvTiling plan_conv_tiling(const Conv2DShape& s, int block_pixels, int oc_multiple,
                            std::int64_t target_tasks) {
  return plan_tiling(static_cast<std::int64_t>(s.batch) * s.out_h * s.out_w, block_pixels, s.out_c,
                     oc_multiple, target_tasks);
}

namespace {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

struct Scratch {
  std::unique_ptr<void, FreeDeleter> data;
  std::size_t bytes = 0;
};

}  // namespace

void* thread_scratch(std::size_t bytes, int slot) {
  thread_local Scratch scratch[kScratchCount];
  Scratch& s = scratch[slot];
  if (bytes > s.bytes) {
    // Round up so a slowly growing sequence of shapes does not reallocate every call; the
    // extra 64 bytes let kernels over-read one vector past the end.
    const std::size_t want = ((std::max(bytes, s.bytes * 3 / 2) + 63) / 64) * 64 + 64;
    void* p = std::aligned_alloc(64, want);
    if (p == nullptr) return nullptr;  // the old buffer stays; the caller reports the failure
    s.data.reset(p);
    s.bytes = want - 64;
  }
  return s.data.get();
}

void pack_rows_portable(const float* input, std::int64_t pixels, int in_c, PackedWord* bits,
                        float* mean_abs, const ParallelFor& parallel_for) {
  const int words = packed_words(in_c);
  parallel_for(pixels, 3 * in_c, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t p = begin; p < end; ++p) {
      const float* x = input + p * in_c;
      PackedWord* out = bits + p * words;
      float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int w = 0; w < words; ++w) {
        const int first = w * kBitsPerWord;
        const int count = std::min(kBitsPerWord, in_c - first);
        std::uint32_t word = 0;
        for (int b = 0; b < count; ++b) {
          const float v = x[first + b];
          word |= static_cast<std::uint32_t>(v < 0.0f) << b;
          lanes[b & 7] += std::fabs(v);
        }
        out[w] = static_cast<PackedWord>(word);
      }
      if (mean_abs != nullptr) {
        const float sum = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) +
                          ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
        mean_abs[p] = sum / static_cast<float>(in_c);
      }
    }
  });
}

}  // namespace internal
}  // namespace keras_xnor
