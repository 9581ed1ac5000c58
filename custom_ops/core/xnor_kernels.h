// Internal interface between the public entry points (xnor_conv2d.cc) and the per-path
// implementations (reference, portable, AVX2). Not part of the public API.
//
// Every implementation receives a validated, resolved Conv2DShape (resolve_conv2d_shape
// returned "") and non-null input/filter/alpha/output pointers; bias may be null. Layouts and
// the bit convention are those of xnor_conv2d.h and spec.h. Implementations are thread-safe
// and give identical results for any split chosen by `parallel_for`.
#ifndef KERAS_XNOR_CORE_XNOR_KERNELS_H_
#define KERAS_XNOR_CORE_XNOR_KERNELS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "custom_ops/core/parallel.h"
#include "custom_ops/core/spec.h"
#include "custom_ops/core/xnor_conv2d.h"

namespace keras_xnor {
namespace internal {

// The operands of a conv or dense call and its output stage's flags: what ConvArgs and
// DenseArgs share, so that a dense layer run as a 1x1 conv takes them in one copy.
struct LayerOperands {
  const float* input = nullptr;
  const PackedWord* filter = nullptr;
  const float* alpha = nullptr;
  const float* bias = nullptr;
  bool use_k = false;
  bool relu = false;
  float* output = nullptr;
  // Optional, from a prepared filter: the channel-lane filter layout (see
  // prepare_channel_lanes_filter_avx2); when set, the channel-lane driver skips the transpose.
  const std::uint32_t* lanes_filter = nullptr;
  const std::int32_t* lanes_tap_pop = nullptr;
  // Optional, from a prepared filter: the channel-lane table tile's filter layout (see
  // prepare_channel_table_filter_avx2), else the driver makes it per call. A prepared dense
  // filter holds its 1x1 conv layouts; with the table layout, batches of 2 or more run as one
  // 1 x batch image on the channel-lane driver, as no call transposes the filter.
  const std::uint8_t* nibble_filter = nullptr;
  const std::int32_t* nibble_tap_pop = nullptr;
  // Optional, from a prepared filter on AVX-512 CPUs: the VPOPCNTD driver's filter layout (see
  // prepare_vpopcnt_filter_avx512), else that driver makes it per call.
  const std::uint32_t* vpopcnt_filter = nullptr;
  const std::int32_t* vpopcnt_tap_pop = nullptr;
};

struct ConvArgs : LayerOperands {
  Conv2DShape shape;
  // Tests: the channel-lane driver runs the nibble-planar tile even where the table tile could.
  bool planar_tile = false;
};

// What a PreparedConv2DFilter holds (xnor_conv2d.h). Not copyable.
struct PreparedFilterData {
  int in_c = 0, out_c = 0, k_h = 0, k_w = 0;
  std::vector<PackedWord> packed;          // OHWI copy of the filter (the other drivers, paths)
  // AVX2 only, in `buffer` (64-byte aligned): the table tile's layout when
  // channel_table_supported, else the planar tile's (the other pair is null).
  std::uint32_t* lanes_filter = nullptr;
  std::int32_t* lanes_tap_pop = nullptr;
  std::uint8_t* nibble_filter = nullptr;
  std::int32_t* nibble_tap_pop = nullptr;
  // AVX512F + AVX512_VPOPCNTDQ CPUs: the VPOPCNTD driver's layout instead of the two above.
  std::uint32_t* vpopcnt_filter = nullptr;
  std::int32_t* vpopcnt_tap_pop = nullptr;
  void* buffer = nullptr;                  // std::aligned_alloc, freed by the destructor
  PreparedFilterData() = default;
  PreparedFilterData(const PreparedFilterData&) = delete;
  PreparedFilterData& operator=(const PreparedFilterData&) = delete;
  ~PreparedFilterData();
};

struct DenseArgs : LayerOperands {
  int batch = 0, in_features = 0, units = 0;
};

// Copies the prepared filter layouts (lanes_filter, lanes_tap_pop, nibble_filter,
// nibble_tap_pop, vpopcnt_filter, vpopcnt_tap_pop) from a PreparedFilterData into `to`.
inline void copy_prepared_layouts(const PreparedFilterData& from, LayerOperands* to) {
  to->lanes_filter = from.lanes_filter;
  to->lanes_tap_pop = from.lanes_tap_pop;
  to->nibble_filter = from.nibble_filter;
  to->nibble_tap_pop = from.nibble_tap_pop;
  to->vpopcnt_filter = from.vpopcnt_filter;
  to->vpopcnt_tap_pop = from.vpopcnt_tap_pop;
}

// The oracle: plain loops, no blocking, serial (ignores parallel_for). Its buffers are
// std::vectors (std::bad_alloc when out of memory).
void conv2d_reference(const ConvArgs& args);
void dense_reference(const DenseArgs& args);

// Fast paths. The AVX2 ones live in *_avx2.cc files and may only be called after
// kernel_path_available(KernelPath::kAvx2) returned true. They return false when a work buffer
// could not be allocated (the output is then unspecified), true otherwise.
bool conv2d_portable(const ConvArgs& args, const ParallelFor& parallel_for);
bool dense_portable(const DenseArgs& args, const ParallelFor& parallel_for);
bool conv2d_avx2(const ConvArgs& args, const ParallelFor& parallel_for);
bool dense_avx2(const DenseArgs& args, const ParallelFor& parallel_for);

// The two AVX2 conv drivers behind conv2d_avx2 (which sign-packs the input first): pixels in
// vector lanes (filter used in place, any size) or output channels in vector lanes (filter
// transposed per call; the default unless there are few output pixels, see
// channel_lanes_preferred).
// On CPUs with AVX512F + AVX512_VPOPCNTDQ (popcount_avx512_available(), roofline.h) kAuto
// runs the VPOPCNTD driver (xnor_conv2d_vpopcnt_avx512.cc) wherever it would run the
// channel-lane one; kVpopcnt512 forces it (ignored, i.e. kAuto, on other CPUs).
bool channel_lanes_preferred(const Conv2DShape& shape);
enum class Avx2Driver { kAuto, kPixelLanes, kChannelLanes, kVpopcnt512 };
// conv2d_avx2 with the driver forced (tests cover each on every shape).
bool conv2d_avx2_driver(const ConvArgs& args, const ParallelFor& parallel_for, Avx2Driver driver);
// Packs the input into `bits` / `mean_abs` (null without K) itself, inside the conv pass: each
// input row is packed by the first task that reads it (one pool dispatch per call with a
// prepared filter; one more for the per-call filter transpose without).
bool conv2d_channel_lanes_avx2(const ConvArgs& args, const ParallelFor& parallel_for,
                               std::uint32_t* bits, float* mean_abs);

// The AVX-512 channel-lane driver: output channels in zmm lanes, VPOPCNTD tiles of 6 pixels x
// 64 channels on a zero-padded packed input read in place; bitwise the same output as
// conv2d_channel_lanes_avx2 (same packing, K order and output stage). Only after
// popcount_avx512_available() returned true. Packs the input itself (one parallel pass, with
// the per-call filter layout when not prepared), then one conv pass.
bool conv2d_vpopcnt_avx512(const ConvArgs& args, const ParallelFor& parallel_for);
// Its filter layout, made per call or once by prepare_conv2d_filter: words
// [ceil(out_c / 64)][k_h * k_w][packed_words(in_c)][64] (channels past out_c are 0), and
// tap_pop int32 [k_h * k_w][ceil(out_c / 64) * 64], the popcount of each (tap, channel)
// weight, for the SAME-padding correction. Sizes in 4-byte words:
inline std::size_t vpopcnt_filter_words(const Conv2DShape& s) {
  return static_cast<std::size_t>((s.out_c + 63) / 64) * 64 * s.k_h * s.k_w * packed_words(s.in_c);
}
inline std::size_t vpopcnt_tap_pop_words(const Conv2DShape& s) {
  return static_cast<std::size_t>((s.out_c + 63) / 64) * 64 * s.k_h * s.k_w;
}
// Fills both (layout 64-byte aligned); uses in_c, out_c, k_h, k_w of `shape`. AVX-512 only.
void prepare_vpopcnt_filter_avx512(const Conv2DShape& shape, const PackedWord* filter,
                                   std::uint32_t* layout, std::int32_t* tap_pop,
                                   const ParallelFor& parallel_for);

// The channel-lane driver's filter layout, made per call or once by prepare_conv2d_filter:
// nibble-planar words [ceil(out_c / 16)][k_h * k_w * 2 * packed_words(in_c)][16] (channels
// past out_c are 0), and tap_pop int32 [k_h * k_w][ceil(out_c / 16) * 16]: popcount of each
// (tap, channel) weight, for the SAME-padding correction. Sizes in 4-byte words:
inline std::size_t channel_lanes_filter_words(const Conv2DShape& s) {
  return static_cast<std::size_t>((s.out_c + 15) / 16) * 16 * s.k_h * s.k_w * 2 *
         packed_words(s.in_c);
}
inline std::size_t channel_lanes_tap_pop_words(const Conv2DShape& s) {
  return static_cast<std::size_t>((s.out_c + 15) / 16) * 16 * s.k_h * s.k_w;
}
// Fills both (lanes_filter 32-byte aligned); uses in_c, out_c, k_h, k_w of `shape`.
void prepare_channel_lanes_filter_avx2(const Conv2DShape& shape, const PackedWord* filter,
                                       std::uint32_t* lanes_filter, std::int32_t* tap_pop,
                                       const ParallelFor& parallel_for);

// The channel-lane driver's TABLE tile (xnor_gemm_tile_avx2.h, gemm_tile_pair_x64) filter
// layout, made once by prepare_conv2d_filter: bytes [ceil(out_c / 64)][k_h * k_w * 8 *
// packed_words(in_c)][64], byte (n, c) = nibble n of channel c's OHWI packed row (nibbles
// 8k .. 8k + 3: the low nibbles of bytes 0..3 of packed word k, 8k + 4 .. 8k + 7 the high
// ones, i.e. the bytes of nibble-planar words 2k, 2k + 1; channels past out_c are 0), and tap_pop int32
// [k_h * k_w][ceil(out_c / 64) * 64]. The tile sums popcounts in uint16, so it needs
// 32 * k_h * k_w * packed_words(in_c) < 65536 (channel_table_supported).
bool channel_table_supported(const Conv2DShape& s);
inline std::size_t channel_table_filter_bytes(const Conv2DShape& s) {
  return static_cast<std::size_t>((s.out_c + 63) / 64) * 64 * s.k_h * s.k_w * 8 * packed_words(s.in_c);
}
inline std::size_t channel_table_tap_pop_words(const Conv2DShape& s) {
  return static_cast<std::size_t>((s.out_c + 63) / 64) * 64 * s.k_h * s.k_w;
}
// Fills both (nibble_filter 64-byte aligned); uses in_c, out_c, k_h, k_w of `shape`.
void prepare_channel_table_filter_avx2(const Conv2DShape& shape, const PackedWord* filter,
                                       std::uint8_t* nibble_filter, std::int32_t* tap_pop,
                                       const ParallelFor& parallel_for);

// Sign-packs `pixels` rows of `in_c` floats (bitpack.h layout) and, when mean_abs is not null,
// stores mean_c |x| of each row: the A of eq. 11 before the box filter.
void pack_rows_portable(const float* input, std::int64_t pixels, int in_c, PackedWord* bits,
                        float* mean_abs, const ParallelFor& parallel_for);
void pack_rows_avx2(const float* input, std::int64_t pixels, int in_c, PackedWord* bits,
                    float* mean_abs, const ParallelFor& parallel_for);
// pack_rows_avx2 of rows [begin, end) on the calling thread.
void pack_rows_range_avx2(const float* input, std::int64_t begin, std::int64_t end, int in_c,
                          PackedWord* bits, float* mean_abs);

// Work decomposition of a conv into independent tasks: `blocks` blocks of consecutive units
// (output pixels, flattened n, oh, ow, or a driver's slots; as many per block as the caller
// of plan_tiling asked for, which it keeps) times `oc_chunks` chunks of `oc_chunk`
// output channels. Task t covers block t / oc_chunks and chunk t % oc_chunks, so consecutive
// tasks share a block (its im2col is built once per range). Depends only on the shape, never
// on the thread count, so results are identical for any split.
struct ConvTiling {
  std::int64_t blocks = 0;
  int oc_chunk = 0;
  int oc_chunks = 0;
  std::int64_t tasks = 0;
};
// Channel chunks are added until there are about `target_tasks` tasks. plan_tiling splits
// `units` (pixels, or whatever a driver's blocks are made of) into blocks of `block_units`;
// plan_conv_tiling does it for the shape's output pixels (block_pixels of them per block).
ConvTiling plan_tiling(std::int64_t units, int block_units, int out_c, int oc_multiple,
                       std::int64_t target_tasks);
ConvTiling plan_conv_tiling(const Conv2DShape& shape, int block_pixels, int oc_multiple,
                            std::int64_t target_tasks = 32);

// Per-thread scratch memory, 64-byte aligned, reused across calls (grows, never shrinks):
// `slot` names independent buffers (kScratch*). Contents are unspecified on return. Returns
// nullptr when the allocation fails (never throws, never aborts): callers report it (the conv
// and dense paths return false, the worker ranges set a shared flag and return).
enum ScratchSlot { kScratchPacked = 0, kScratchMeanAbs, kScratchPatches, kScratchMasks, kScratchTile,
                   kScratchTapPop, kScratchFilterT, kScratchPlanar, kScratchMeanAbsPadded, kScratchRuns, kScratchRowsRead, kScratchPadClasses,
                   kScratchVerticalPairs,
                   kScratchCount };
void* thread_scratch(std::size_t bytes, int slot);

}  // namespace internal
}  // namespace keras_xnor

#endif  // KERAS_XNOR_CORE_XNOR_KERNELS_H_
