// AVX2 conv driver with output channels in vector lanes (the default for convs with at least
// a few dozen output pixels): the filter is transposed once per call (or once ever, with a
// PreparedConv2DFilter) into channel blocks; the input is sign-packed into a zero-padded image
// that the tiles read in place (no im2col: a receptive field is a fixed list of runs from its
// corner); the output stage is fused into each tile and writes 8 contiguous NHWC channels per
// store. SAME borders: a padded tap has input bits 0, and the output stage removes what its
// weights' popcount added (per padding class, or per padded tap).
// Two tiles (xnor_gemm_tile_avx2.h): the PAIR TABLE tile (the default: 64-channel blocks of
// weight nibble bytes, the input as pair-table offsets, two output pixels per lookup, run on
// two blocks at once, one slot and one 63-step segment at a time, when there are more than 64
// output channels and uint16 sums; see custom_ops/core/README.md) and the nibble-planar 4 x 16
// tile (receptive fields too deep for the table tile's uint16 sums, or forced by tests):
// packed word k of a pixel or filter row becomes planar words 2k (low nibbles) and 2k + 1
// (high nibbles), made once per operand.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>

#include "custom_ops/core/xnor_gemm_tile_avx2.h"
#include "custom_ops/core/xnor_kernels.h"

namespace keras_xnor {
namespace internal {
namespace {

constexpr int kBlock = 16;         // pixels per block, planar tile (large outputs)
constexpr int kLanes = 16;         // channels per weight block, planar tile (two vectors)
constexpr int kTableSlots = 3;     // slots (pixel pairs) per table tile
constexpr int kTableBlock = 24;    // pixels per block, table tile (large outputs)
constexpr int kTableLanes = 64;    // channels per weight block, table tile
constexpr int kMaxBlock = 24;
constexpr int kTableMinPixelsPerCall = 32;  // see conv2d_channel_lanes_avx2
// Tasks per call: 64 balances 2 threads better than 32 (128@28, 256@14: 33 blocks would be
// 33 tasks, 16 against 17; measured 2-3% at 2 threads) at no cost at 1 thread.
constexpr std::int64_t kTargetTasks = 64;

constexpr int kMaxTaps = kMaxKernelSize * kMaxKernelSize;  // spec.h
constexpr int kMaxClasses = 64;  // padding classes (see InputGeometry::dot_base)

// A block of consecutive output pixels (flattened n, oh, ow): per pixel, the corner of its
// receptive field in the padded planar input, K, the number of real products, and the taps
// that fall in the padding.
struct PixelBlock {
  std::int64_t first = 0;
  int count = 0;
  const void* base[kMaxBlock];     // pixel's corner in the padded image
  std::int64_t corner[kMaxBlock];  // padded pixel index of the receptive field's corner
  alignas(32) float k[kMaxBlock + 8];
  std::int32_t n_valid[kMaxBlock];
  const float* dot_base[kMaxBlock];  // table tile: the pixel's padding class row (see below)
  // Padded taps of the pixel and their list; with padding-class rows (dot_base set) only
  // 0 / 1 (has some) and no list.
  int padded_taps[kMaxBlock];
  unsigned char padded_tap[kMaxBlock][kMaxTaps];
  // Table tile: the block's slots (pair tile inputs) in order: a pixel (position in the block)
  // and its partner (position, or -1 for a pixel alone); with vertical slots, the slot's base
  // in the padded pair image (horizontal: the partner is the next pixel of the row) or in the
  // vertical pair image (the partner is the pixel below; see conv2d_channel_lanes_avx2).
  int slots = 0;
  int slot_pixel[kMaxBlock];
  int slot_partner[kMaxBlock];
  const void* slot_base[kMaxBlock];
  // Blocks with vertical slots (table tile): the flattened output index (n, oh, ow) of each
  // pixel, listed in slot order (other blocks: pixel j is first + j, and this is not set).
  std::int64_t pixel[kMaxBlock];
};

// The block's horizontal pair-tile slots: from its first pixel (an even output column, as
// blocks start at slot boundaries), each pixel with the next one when both are in the same
// output row.
void make_slots(PixelBlock* blk, int out_w) {
  int ow = static_cast<int>(blk->first % out_w);
  int n = 0;
  for (int j = 0; j < blk->count;) {
    const bool pair = ow + 1 < out_w && j + 1 < blk->count;
    blk->slot_pixel[n] = j;
    blk->slot_partner[n++] = pair ? j + 1 : -1;
    j += pair ? 2 : 1;
    ow += pair ? 2 : 1;
    if (ow >= out_w) ow = 0;
  }
  blk->slots = n;
}

// Popcount of each 32-bit lane.
inline __m256i popcount_epi32(__m256i x) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                       2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i bytes =
      _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x, low)),
                      _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low)));
  return _mm256_madd_epi16(_mm256_maddubs_epi16(bytes, _mm256_set1_epi8(1)), _mm256_set1_epi16(1));
}

// In place: r[j] lane i (row j, column i) -> r[i] lane j.
inline void transpose8x8(__m256i r[8]) {
  const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
  const __m256i t4 = _mm256_unpacklo_epi32(r[4], r[5]), t5 = _mm256_unpackhi_epi32(r[4], r[5]);
  const __m256i t6 = _mm256_unpacklo_epi32(r[6], r[7]), t7 = _mm256_unpackhi_epi32(r[6], r[7]);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
  const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
  r[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
  r[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
  r[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
  r[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
  r[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
  r[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
  r[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
  r[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

// Nibble planes of n packed words: dst[2k] = src[k] & 0x0f0f0f0f, dst[2k + 1] = (src[k] >> 4)
// & 0x0f0f0f0f.
inline void make_nibble_planes(const std::uint32_t* src, std::int64_t n, std::uint32_t* dst) {
  const __m256i low = _mm256_set1_epi8(0x0f);
  std::int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k));
    const __m256i lo = _mm256_and_si256(x, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
    // In-lane interleave gives words {0,0',1,1' | 4,4',5,5'} and {2,2',3,3' | 6,6',7,7'}.
    const __m256i u0 = _mm256_unpacklo_epi32(lo, hi), u1 = _mm256_unpackhi_epi32(lo, hi);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * k),
                        _mm256_permute2x128_si256(u0, u1, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * k + 8),
                        _mm256_permute2x128_si256(u0, u1, 0x31));
  }
  for (; k < n; ++k) {
    dst[2 * k] = src[k] & 0x0f0f0f0fu;
    dst[2 * k + 1] = (src[k] >> 4) & 0x0f0f0f0fu;
  }
}

// Table-tile input: for packed word k of a pixel, entries 8k .. 8k + 3 are 32 * the low
// nibbles of its bytes 0..3 and entries 8k + 4 .. 8k + 7 those of the high nibbles (the order
// of the nibble-planar words 2k, 2k + 1, byte by byte), for n packed words. make_pair_offsets
// then turns each 32 * a into the pair table offset 32 * (16 a + b) (kPairTables).
inline void make_nibble_offsets(const std::uint32_t* src, std::int64_t n, std::uint16_t* dst) {
  const __m128i low = _mm_set1_epi8(0x0f);
  std::int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k));
    const __m128i lo = _mm_and_si128(x, low);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(x, 4), low);
    // Words 0, 1 then 2, 3, each as its 4 low nibbles then its 4 high nibbles.
    const __m128i n0 = _mm_unpacklo_epi32(lo, hi), n1 = _mm_unpackhi_epi32(lo, hi);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 8 * k),
                        _mm256_slli_epi16(_mm256_cvtepu8_epi16(n0), 5));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 8 * k + 16),
                        _mm256_slli_epi16(_mm256_cvtepu8_epi16(n1), 5));
  }
  for (; k < n; ++k) {
    for (int b = 0; b < 4; ++b) {
      dst[8 * k + b] = static_cast<std::uint16_t>(((src[k] >> (8 * b)) & 15u) * 32);
      dst[8 * k + 4 + b] = static_cast<std::uint16_t>(((src[k] >> (8 * b + 4)) & 15u) * 32);
    }
  }
}

// In place over n uint16 table offsets (one padded row of the table tile's input, 32 * a
// nibble each): e[i] = 16 * e[i] + e[i + d] (0 past the end), i.e. the pair table offset of
// the nibble and the one d entries on (the same nibble of the pixel a stride to the right).
// Ascending, each vector loaded before it is stored, so every e[i + d] read is still original.
inline void make_pair_offsets(std::uint16_t* e, std::int64_t n, std::int64_t d) {
  std::int64_t i = 0;
  for (; i + 16 <= n - d; i += 16) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e + i));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e + i + d));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(e + i), _mm256_add_epi16(_mm256_slli_epi16(a, 4), b));
  }
  for (; i < n; ++i) e[i] = static_cast<std::uint16_t>(16 * e[i] + (i + d < n ? e[i + d] : 0));
}

// Writes taps [t0, t1) of 64-channel block b64 of the table-tile filter layout
// (channel_table_filter_bytes) and their weight popcounts (tap_pop [tap][oc_pad64]). Eight
// packed words (64 steps) at a time: per 8-channel group, a transpose8x8 (lanes = channels),
// the nibble split, and a byte shuffle put each step's 8 channel bytes in one qword; a 4x4
// qword transpose over four groups then gives 32-byte rows, stored whole.
void transpose_table_block(const Conv2DShape& s, const std::uint32_t* filter, std::int64_t b64,
                           int t0, int t1, std::uint8_t* nibble_filter, std::int32_t* tap_pop) {
  const int packed = packed_words(s.in_c);
  const int taps = s.k_h * s.k_w;
  const int kw_packed = taps * packed;
  const std::int64_t kn = static_cast<std::int64_t>(kw_packed) * 8;
  const int oc_pad = (s.out_c + kTableLanes - 1) / kTableLanes * kTableLanes;
  constexpr int kGroups = kTableLanes / 8;
  std::uint8_t* dst = nibble_filter + b64 * kn * kTableLanes;
  const __m256i low = _mm256_set1_epi8(0x0f);
  // Per 128-bit lane: 4 channels x 4 bytes -> byte b of the 4 channels in dword b.
  const __m256i by_byte = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                           0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  // Then qword b = byte b of channels 0-3 (lane 0) and 4-7 (lane 1).
  const __m256i pair = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const std::uint32_t* rows[kTableLanes];
  bool live[kTableLanes];
  for (int c = 0; c < kTableLanes; ++c) {
    const int oc = static_cast<int>(b64) * kTableLanes + c;
    live[c] = oc < s.out_c;
    rows[c] = filter + static_cast<std::int64_t>(live[c] ? oc : 0) * kw_packed;
  }
  alignas(32) __m256i q[16][kGroups];  // [planar word of the chunk][channel group]
  const int k_end = t1 * packed;
  for (int k = t0 * packed; k < k_end; k += 8) {
    const int nw = std::min(8, k_end - k);
    for (int h = 0; h < kGroups; ++h) {
      __m256i r[8];
      for (int j = 0; j < 8; ++j) {
        const int c = h * 8 + j;
        if (!live[c]) {
          r[j] = _mm256_setzero_si256();
        } else if (nw == 8) {
          r[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[c] + k));
        } else {
          alignas(32) std::uint32_t x[8] = {};
          for (int w = 0; w < nw; ++w) x[w] = rows[c][k + w];
          r[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(x));
        }
      }
      transpose8x8(r);
      for (int w = 0; w < nw; ++w) {
        const __m256i lo = _mm256_and_si256(r[w], low);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(r[w], 4), low);
        q[2 * w][h] = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(lo, by_byte), pair);
        q[2 * w + 1][h] = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(hi, by_byte), pair);
      }
    }
    for (int w = 0; w < 2 * nw; ++w) {
      std::uint8_t* d = dst + (4 * (2 * static_cast<std::int64_t>(k) + w)) * kTableLanes;
      for (int g = 0; g < kGroups; g += 4) {
        const __m256i t0 = _mm256_unpacklo_epi64(q[w][g], q[w][g + 1]);
        const __m256i t1 = _mm256_unpackhi_epi64(q[w][g], q[w][g + 1]);
        const __m256i t2 = _mm256_unpacklo_epi64(q[w][g + 2], q[w][g + 3]);
        const __m256i t3 = _mm256_unpackhi_epi64(q[w][g + 2], q[w][g + 3]);
        // Row b (step 4w + b): qword b of groups g .. g + 3.
        _mm256_store_si256(reinterpret_cast<__m256i*>(d + g * 8), _mm256_permute2x128_si256(t0, t2, 0x20));
        _mm256_store_si256(reinterpret_cast<__m256i*>(d + kTableLanes + g * 8), _mm256_permute2x128_si256(t1, t3, 0x20));
        _mm256_store_si256(reinterpret_cast<__m256i*>(d + 2 * kTableLanes + g * 8), _mm256_permute2x128_si256(t0, t2, 0x31));
        _mm256_store_si256(reinterpret_cast<__m256i*>(d + 3 * kTableLanes + g * 8), _mm256_permute2x128_si256(t1, t3, 0x31));
      }
    }
  }
  for (int t = t0; t < t1; ++t) {
    for (int c = 0; c < kTableLanes; ++c) {
      int pop = 0;
      if (live[c]) {
        for (int w = 0; w < packed; ++w) pop += _mm_popcnt_u32(rows[c][t * packed + w]);
      }
      tap_pop[static_cast<std::int64_t>(t) * oc_pad + b64 * kTableLanes + c] = pop;
    }
  }
}

// Transposes 16-channel filter block b into the planar layout (channel_lanes_filter_words) and,
// when tap_pop is not null, writes that block's per-tap weight popcounts.
void transpose_filter_block(const Conv2DShape& s, const std::uint32_t* filter, std::int64_t b,
                            std::uint32_t* wt, std::int32_t* tap_pop) {
  const int packed = packed_words(s.in_c);
  const int words = 2 * packed;
  const int taps = s.k_h * s.k_w;
  const int kw = taps * words;
  const int kw_packed = taps * packed;
  const int oc_pad = (s.out_c + kLanes - 1) / kLanes * kLanes;
  std::uint32_t* dst = wt + b * kw * kLanes;
  for (int h = 0; h < 2; ++h) {
    const int c0 = static_cast<int>(b) * kLanes + h * 8;
    const std::uint32_t* rows[8];
    bool live[8];
    for (int j = 0; j < 8; ++j) {
      live[j] = c0 + j < s.out_c;
      rows[j] = filter + static_cast<std::int64_t>(live[j] ? c0 + j : 0) * kw_packed;
    }
    const __m256i low = _mm256_set1_epi8(0x0f);
    int k = 0;
    for (; k + 8 <= kw_packed; k += 8) {
      __m256i r[8];
      for (int j = 0; j < 8; ++j) {
        r[j] = live[j] ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[j] + k))
                       : _mm256_setzero_si256();
      }
      transpose8x8(r);
      for (int i = 0; i < 8; ++i) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(dst + 2 * (k + i) * kLanes + h * 8),
                           _mm256_and_si256(r[i], low));
        _mm256_store_si256(reinterpret_cast<__m256i*>(dst + (2 * (k + i) + 1) * kLanes + h * 8),
                           _mm256_and_si256(_mm256_srli_epi16(r[i], 4), low));
      }
    }
    for (; k < kw_packed; ++k) {
      for (int j = 0; j < 8; ++j) {
        const std::uint32_t x = live[j] ? rows[j][k] : 0u;
        dst[2 * k * kLanes + h * 8 + j] = x & 0x0f0f0f0fu;
        dst[(2 * k + 1) * kLanes + h * 8 + j] = (x >> 4) & 0x0f0f0f0fu;
      }
    }
    if (tap_pop != nullptr) {
      // Per-tap weight popcounts of these 8 channels, from the transposed words (lanes =
      // channels, so the sums land in tap_pop's [tap][channel] layout directly).
      for (int t = 0; t < taps; ++t) {
        __m256i acc = _mm256_setzero_si256();
        for (int q = 0; q < words; ++q) {
          acc = _mm256_add_epi32(acc, popcount_epi32(_mm256_load_si256(
                                          reinterpret_cast<const __m256i*>(dst + (t * words + q) * kLanes + h * 8))));
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(tap_pop + t * oc_pad + c0), acc);
      }
    }
  }
}


// Per-call geometry of the padded planar input, for describe_block.
struct InputGeometry {
  int hp = 0, wp = 0, pixel_bytes = 0;
  const char* image = nullptr;
  const float* mean_pad = nullptr;  // null without K
  const int* row_valid = nullptr;   // [out_h]: kernel rows inside the input
  const int* col_valid = nullptr;   // [out_w]: kernel columns inside the input
  bool gather_ok = false;           // padded pixel indices fit 32-bit gather offsets
  // Table tile: per padding class (the set of kernel rows and of kernel columns that fall in
  // the padding), float [oc_pad] n_valid + 2 * (weight popcounts of the padded taps), so that
  // dot = dot_base - 2 * pop for every pixel of the class. Null when not used.
  const float* dot_base = nullptr;
  const int* row_class = nullptr;   // [out_h]: row class index
  const int* col_class = nullptr;   // [out_w]: column class index
  int col_classes = 0, oc_pad = 0;
};

// Fills positions at .. at + count - 1 of `blk` with pixels [first, first + count) (kAt: at
// is at_arg, else 0; with kAt, the caller sets the block's first, count and pixel list, and
// positions at + count .. at + count + 7 of k may be overwritten). K sums the padded mean |x|
// over all taps in (kh, kw) order: padded taps add +0.0, so the sum equals the sum over the
// valid taps.
template <bool kAt = false>
void describe_block(const Conv2DShape& s, const InputGeometry& g, std::int64_t first, int count,
                    PixelBlock* __restrict blk, int at_arg = 0) {
  const int at = kAt ? at_arg : 0;  // kAt false: compiled as if there were no offset
  if (!kAt) {
    blk->first = first;
    blk->count = count;
  }
  // Everything the per-pixel loop reads, in locals: the stores into *blk cannot alias them, so
  // nothing is reloaded per pixel (measured: the reloads cost as much as the loop's work).
  const int out_w = s.out_w, out_h = s.out_h, stride_w = s.stride_w, stride_h = s.stride_h;
  const int k_h = s.k_h, k_w = s.k_w, in_c = s.in_c;
  const std::int64_t hp = g.hp, wp = g.wp, pixel_bytes = g.pixel_bytes;
  const char* const image = g.image;
  const int* const row_valid = g.row_valid;
  const int* const col_valid = g.col_valid;
  const float* const dot_base = g.dot_base;
  const int* const col_class = g.col_class;
  const std::int64_t oc_pad = g.oc_pad;
  const std::int64_t hw = static_cast<std::int64_t>(out_h) * out_w;
  std::int64_t img = first / hw;
  const int rem = static_cast<int>(first % hw);
  int oh = rem / out_w, ow = rem % out_w;
  const int taps = k_h * k_w;
  // Runs of pixels with contiguous corners (same output row, stride 1) take plain loads for K.
  bool k_rows[kMaxBlock / 8 + 1] = {};
  // Per output row: its first corner, valid kernel rows and padding-class row.
  std::int64_t row_corner = 0;
  int rv = 0;
  const float* db_row = nullptr;
  const auto start_row = [&] {
    row_corner = (img * hp + static_cast<std::int64_t>(oh) * stride_h) * wp;
    rv = row_valid[oh];
    if (dot_base != nullptr) db_row = dot_base + static_cast<std::int64_t>(g.row_class[oh]) * g.col_classes * oc_pad;
  };
  start_row();
  const __m256i taps8 = _mm256_set1_epi32(taps);
  // With padding-class rows (table tile), the output stage never reads a pixel's list of
  // padded taps, only whether it has any (padded_taps 0 or 1).
  const bool need_tap_list = dot_base == nullptr;
  for (int j = 0; j < count; ++j) {
    if ((j & 7) == 0 && count - j >= 8 && ow + 8 <= out_w) {
      // Eight pixels of one output row, none with a padded tap (the common case): vectors.
      const __m256i valid = _mm256_mullo_epi32(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col_valid + ow)), _mm256_set1_epi32(rv));
      const __m256i interior = _mm256_cmpeq_epi32(valid, taps8);
      if (!need_tap_list || _mm256_movemask_epi8(interior) == -1) {
        k_rows[j >> 3] = stride_w <= 2;
        const std::int64_t c0 = row_corner + static_cast<std::int64_t>(ow) * stride_w;
        const std::int64_t sw = stride_w;
        const __m256i c_lo = _mm256_add_epi64(_mm256_set1_epi64x(c0), _mm256_setr_epi64x(0, sw, 2 * sw, 3 * sw));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk->corner + at + j), c_lo);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk->corner + at + j + 4),
                            _mm256_add_epi64(c_lo, _mm256_set1_epi64x(4 * sw)));
        const std::int64_t step = sw * pixel_bytes;
        const __m256i b_lo = _mm256_add_epi64(
            _mm256_set1_epi64x(reinterpret_cast<std::int64_t>(image + c0 * pixel_bytes)),
            _mm256_setr_epi64x(0, step, 2 * step, 3 * step));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk->base + at + j), b_lo);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk->base + at + j + 4),
                            _mm256_add_epi64(b_lo, _mm256_set1_epi64x(4 * step)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk->n_valid + at + j),
                            _mm256_mullo_epi32(valid, _mm256_set1_epi32(in_c)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk->padded_taps + at + j),
                            _mm256_andnot_si256(interior, _mm256_set1_epi32(1)));
        __m256i d_lo = _mm256_setzero_si256(), d_hi = _mm256_setzero_si256();
        if (dot_base != nullptr) {
          // db_row + col_class * oc_pad floats (small non-negative products: 32-bit multiply).
          const __m256i cc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col_class + ow));
          const __m256i bytes = _mm256_set1_epi64x(oc_pad * static_cast<std::int64_t>(sizeof(float)));
          const __m256i row = _mm256_set1_epi64x(reinterpret_cast<std::int64_t>(db_row));
          d_lo = _mm256_add_epi64(row, _mm256_mul_epu32(_mm256_cvtepu32_epi64(_mm256_castsi256_si128(cc)), bytes));
          d_hi = _mm256_add_epi64(row, _mm256_mul_epu32(_mm256_cvtepu32_epi64(_mm256_extracti128_si256(cc, 1)), bytes));
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk->dot_base + at + j), d_lo);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk->dot_base + at + j + 4), d_hi);
        j += 7;
        ow += 8;
        if (ow == out_w) {
          ow = 0;
          if (++oh == out_h) {
            oh = 0;
            ++img;
          }
          start_row();
        }
        continue;
      }
    }
    if ((j & 7) == 0) k_rows[j >> 3] = stride_w <= 2 && ow + std::min(8, count - j) <= out_w;
    const int c0 = ow * stride_w;  // padded column of the corner
    const std::int64_t corner = row_corner + c0;
    blk->base[at + j] = image + corner * pixel_bytes;
    blk->corner[at + j] = corner;
    const int valid = rv * col_valid[ow];
    int npad = 0;
    if (valid != taps && !need_tap_list) {
      npad = 1;  // the padding-class row covers it: only "has padding" matters
    } else if (valid != taps) {
      const int r0 = oh * stride_h;
      for (int i = 0; i < k_h; ++i) {
        const int r = r0 + i * s.dilation_h - s.pad_top;
        for (int q = 0; q < k_w; ++q) {
          const int c = c0 + q * s.dilation_w - s.pad_left;
          if (r < 0 || r >= s.in_h || c < 0 || c >= s.in_w) {
            blk->padded_tap[at + j][npad++] = static_cast<unsigned char>(i * k_w + q);
          }
        }
      }
    }
    blk->padded_taps[at + j] = npad;
    blk->n_valid[at + j] = valid * in_c;
    blk->dot_base[at + j] = dot_base == nullptr ? nullptr : db_row + col_class[ow] * oc_pad;
    if (++ow == out_w) {
      ow = 0;
      if (++oh == out_h) {
        oh = 0;
        ++img;
      }
      start_row();
    }
  }
  if (g.mean_pad == nullptr) {
    for (int j = 0; j < count; ++j) blk->k[at + j] = 1.0f;
    return;
  }
  // Eight pixels at a time (lanes past `count` repeat the last pixel), the same (kh, kw)
  // summation order in every lane as a scalar loop.
  const __m256 divisor = _mm256_set1_ps(static_cast<float>(taps));
  for (int j0 = 0; j0 < count; j0 += 8) {
    __m256 ksum = _mm256_setzero_ps();
    if (k_rows[j0 >> 3] && count - j0 >= 8 && s.stride_w == 1) {
      const float* m0 = g.mean_pad + blk->corner[at + j0];
      for (int i = 0; i < s.k_h; ++i) {
        const float* m = m0 + static_cast<std::int64_t>(i) * s.dilation_h * g.wp;
        for (int q = 0; q < s.k_w; ++q) ksum = _mm256_add_ps(ksum, _mm256_loadu_ps(m + q * s.dilation_w));
      }
    } else if (k_rows[j0 >> 3] && count - j0 >= 8) {
      // Stride 2 within one output row: the even floats of two loads (the last one reads one
      // float past the eighth pixel's tap, inside the padded row or the scratch's slack).
      const float* m0 = g.mean_pad + blk->corner[at + j0];
      for (int i = 0; i < s.k_h; ++i) {
        const float* m = m0 + static_cast<std::int64_t>(i) * s.dilation_h * g.wp;
        for (int q = 0; q < s.k_w; ++q) {
          const float* t = m + q * s.dilation_w;
          const __m256 even = _mm256_shuffle_ps(_mm256_loadu_ps(t), _mm256_loadu_ps(t + 8), 0x88);
          ksum = _mm256_add_ps(ksum, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), 0xd8)));
        }
      }
    } else if (g.gather_ok) {
      alignas(32) std::int32_t idx[8];
      for (int j = 0; j < 8; ++j) idx[j] = static_cast<std::int32_t>(blk->corner[at + std::min(j0 + j, count - 1)]);
      const __m256i vidx = _mm256_load_si256(reinterpret_cast<const __m256i*>(idx));
      for (int i = 0; i < s.k_h; ++i) {
        const float* m = g.mean_pad + static_cast<std::int64_t>(i) * s.dilation_h * g.wp;
        for (int q = 0; q < s.k_w; ++q) ksum = _mm256_add_ps(ksum, _mm256_i32gather_ps(m + q * s.dilation_w, vidx, 4));
      }
    } else {
      alignas(32) float sums[8];
      for (int j = 0; j < 8; ++j) {
        const float* m0 = g.mean_pad + blk->corner[at + std::min(j0 + j, count - 1)];
        float sum = 0.0f;
        for (int i = 0; i < s.k_h; ++i) {
          const float* m = m0 + static_cast<std::int64_t>(i) * s.dilation_h * g.wp;
          for (int q = 0; q < s.k_w; ++q) sum += m[q * s.dilation_w];
        }
        sums[j] = sum;
      }
      ksum = _mm256_load_ps(sums);
    }
    _mm256_storeu_ps(blk->k + at + j0, _mm256_div_ps(ksum, divisor));
  }
}

struct OutputFlags {
  bool use_k = false, relu = false, has_bias = false;
};

// What the table tile's output stage needs for one 64-channel block.
struct TableOutput {
  const float* alpha;           // + oc0, padded
  const float* bias;            // + oc0, padded
  const std::int32_t* tap_pop;  // + oc0; row stride oc_pad
  int oc_pad;
  float* out;                   // channel oc0 of output pixel blk.first (kList: of pixel 0)
  int out_c;
  int count;                    // channels of this block that exist (<= 64)
  OutputFlags flags;
  int oc0;                      // first channel of the block
};

// out = (dot * alpha) * K + bias (ReLU) for the pixels of slots s0 .. s0 + ns - 1 of the
// block, from the table tile's uint16 popcount sums (layout above TableRun in xnor_gemm_tile_avx2.h): dot = n_valid -
// 2 * (pop - sum of the padded taps' weight popcounts).
// kBytes: `sums` holds the tile's byte counters instead (gemm_tile_pair_x64<NS, true>).
// kList: the block's pixels are listed (blk.pixel, slot partners anywhere: vertical slots);
// else they are blk.first + j and a slot's partner is the next pixel.
template <bool kBytes, bool kList>
inline void finish_table_tile(const __m256i* sums, int ns, const PixelBlock& blk, int s0,
                              const TableOutput& st) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int groups = (st.count + 7) / 8;
  const bool full = st.count == kTableLanes;
  const bool relu = st.flags.relu;
  // Output i of the tile (pixel 2k or 2k + 1 of slot k) is block pixel j.
  for (int i = 0; i < 2 * ns; ++i) {
    const int slot = s0 + (i >> 1);
    if ((i & 1) != 0 && blk.slot_partner[slot] < 0) continue;
    const int j = !kList || (i & 1) == 0 ? blk.slot_pixel[slot] + (i & 1) : blk.slot_partner[slot];
    const __m256i nv = _mm256_set1_epi32(blk.n_valid[j]);
    const __m256 kv = _mm256_set1_ps(blk.k[j]);  // 1 without K: exact
    float* out = st.out + (kList ? blk.pixel[j] : j) * st.out_c;
    const __m256i* ps = sums + i * 4;
    // Channels 8g..8g+7 of the pixel: uint16 lanes 0-7 or 8-15 of ps[2 * (g / 4) + (g & 1)],
    // zero-extended straight from memory.
    const auto pops = [&](int g) {
      if constexpr (kBytes) {
        const auto* bytes = reinterpret_cast<const char*>(sums) + 64 * i + 8 * g;
        return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes)));
      }
      const auto* half = reinterpret_cast<const __m128i*>(ps + 2 * (g >> 2) + (g & 1)) + ((g >> 1) & 1);
      return _mm256_cvtepu16_epi32(_mm_load_si128(half));
    };
    // (dot * alpha) * K + bias; the bias is -0.0 without one, which adds exactly nothing. The
    // empty asm keeps the compiler from fusing the last multiply and add into an FMA (this
    // file is built with -mfma), which would round differently from the reference.
    const auto value = [&](__m256 dot, int g) {
      __m256 r = _mm256_mul_ps(dot, _mm256_loadu_ps(st.alpha + 8 * g));
      r = _mm256_mul_ps(r, kv);
      __asm__("" : "+x"(r));
      r = _mm256_add_ps(r, _mm256_loadu_ps(st.bias + 8 * g));
      return relu ? _mm256_max_ps(r, zero) : r;
    };
    if (full && blk.padded_taps[j] == 0) {
      // dot = n_valid - 2 * pop in float, one FMA: every term is an integer below 2^24, so
      // it is exact (the same float as converting the integer dot).
      const __m256 nvf = _mm256_cvtepi32_ps(nv), minus2 = _mm256_set1_ps(-2.0f);
#pragma GCC unroll 8
      for (int g = 0; g < 8; ++g) {
        const __m256 dot = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pops(g)), minus2, nvf);
        _mm256_storeu_ps(out + 8 * g, value(dot, g));
      }
      continue;
    }
    if (blk.dot_base[j] != nullptr) {  // border pixels (and partial blocks)
      // dot = (n_valid + 2 * padded taps' weight popcounts) - 2 * pop in float, one FMA: every
      // term is an integer below 2^24, so it is exact (the same float as the integer dot).
      const float* db = blk.dot_base[j] + st.oc0;
      const __m256 minus2 = _mm256_set1_ps(-2.0f);
      if (full) {
#pragma GCC unroll 8
        for (int g = 0; g < 8; ++g) {
          const __m256 dot = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pops(g)), minus2, _mm256_loadu_ps(db + 8 * g));
          _mm256_storeu_ps(out + 8 * g, value(dot, g));
        }
        continue;
      }
      for (int g = 0; g < groups; ++g) {
        const __m256 dot = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pops(g)), minus2, _mm256_loadu_ps(db + 8 * g));
        const __m256 r = value(dot, g);
        if (8 * g + 8 <= st.count) {
          _mm256_storeu_ps(out + 8 * g, r);
        } else {
          _mm256_maskstore_ps(out + 8 * g, _mm256_cmpgt_epi32(_mm256_set1_epi32(st.count - 8 * g), lane), r);
        }
      }
      continue;
    }
    for (int g = 0; g < groups; ++g) {
      __m256i pop = pops(g);
      for (int e = 0; e < blk.padded_taps[j]; ++e) {
        pop = _mm256_sub_epi32(pop, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                        st.tap_pop + blk.padded_tap[j][e] * st.oc_pad + 8 * g)));
      }
      const __m256 r = value(_mm256_cvtepi32_ps(_mm256_sub_epi32(nv, _mm256_add_epi32(pop, pop))), g);
      if (8 * g + 8 <= st.count) {
        _mm256_storeu_ps(out + 8 * g, r);
      } else {
        _mm256_maskstore_ps(out + 8 * g, _mm256_cmpgt_epi32(_mm256_set1_epi32(st.count - 8 * g), lane), r);
      }
    }
  }
}

// What the output stage needs for one 16-channel block.
struct OutputStage {
  __m256 alpha0, alpha1, bias0, bias1;
  __m256i store0, store1;  // lane masks for a partial last block
  bool full, use_k, relu, has_bias;
  const std::int32_t* tap_pop;  // + oc0; row stride oc_pad
  int oc_pad;
  float* out;  // pixel blk.first, channel oc0
  int out_c;
};

// out = (dot * alpha) * K + bias (ReLU) for pixels q0 .. q0 + NP - 1 of the block, from the
// tile's -2 * popcounts: dot = n_valid - 2 * (pop - sum of the padded taps' weight popcounts).
template <int NP>
__attribute__((always_inline)) inline void finish_tile(const TilePops<NP>& tp, const PixelBlock& blk,
                                                       int q0, const OutputStage& st) {
  const __m256 zero = _mm256_setzero_ps();
  for (int i = 0; i < NP; ++i) {
    const int j = q0 + i;
    const __m256i nv = _mm256_set1_epi32(blk.n_valid[j]);
    __m256i d0 = _mm256_add_epi32(nv, tp.pop[i][0]), d1 = _mm256_add_epi32(nv, tp.pop[i][1]);
    for (int e = 0; e < blk.padded_taps[j]; ++e) {
      const std::int32_t* t = st.tap_pop + blk.padded_tap[j][e] * st.oc_pad;
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + 8));
      d0 = _mm256_add_epi32(d0, _mm256_add_epi32(w0, w0));
      d1 = _mm256_add_epi32(d1, _mm256_add_epi32(w1, w1));
    }
    __m256 r0 = _mm256_mul_ps(_mm256_cvtepi32_ps(d0), st.alpha0);
    __m256 r1 = _mm256_mul_ps(_mm256_cvtepi32_ps(d1), st.alpha1);
    if (st.use_k) {
      const __m256 kv = _mm256_set1_ps(blk.k[j]);
      r0 = _mm256_mul_ps(r0, kv);
      r1 = _mm256_mul_ps(r1, kv);
    }
    // No FMA contraction of the multiply and the bias add (see finish_table_tile).
    __asm__("" : "+x"(r0), "+x"(r1));
    if (st.has_bias) {
      r0 = _mm256_add_ps(r0, st.bias0);
      r1 = _mm256_add_ps(r1, st.bias1);
    }
    if (st.relu) {
      r0 = _mm256_max_ps(r0, zero);
      r1 = _mm256_max_ps(r1, zero);
    }
    float* out = st.out + static_cast<std::int64_t>(j) * st.out_c;
    if (st.full) {
      _mm256_storeu_ps(out, r0);
      _mm256_storeu_ps(out + 8, r1);
    } else {
      _mm256_maskstore_ps(out, st.store0, r0);
      _mm256_maskstore_ps(out + 8, st.store1, r1);
    }
  }
}

// Vertical pair offsets of n uint16 pair-image entries: dst[i] = 32 * (16 a + b), where a is
// the first nibble of upper[i] = 32 * (16 a + a') and b that of lower[i] (n a multiple of 8).
inline void make_vertical_offsets(const std::uint16_t* upper, const std::uint16_t* lower, std::int64_t n,
                                  std::uint16_t* dst) {
  const __m128i a_mask = _mm_set1_epi16(static_cast<short>(0xfe00)), b_mask = _mm_set1_epi16(0x01e0);
  for (std::int64_t i = 0; i < n; i += 8) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(upper + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(lower + i));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm_or_si128(_mm_and_si128(a, a_mask), _mm_and_si128(_mm_srli_epi16(b, 4), b_mask)));
  }
}

// Padding classes of one spatial axis: for each of the `out` output positions, the mask of
// kernel taps (bit i = tap i) that fall in the padding, deduplicated into `masks` (at most
// `max_masks`, count in *n); classes[o] is the index of position o's mask. False when there
// are more distinct masks than that (the caller then subtracts per padded tap).
bool padding_classes(int out, int k, int stride, int dilation, int pad, int in, int max_masks,
                     int* classes, int* masks, int* n) {
  *n = 0;
  for (int o = 0; o < out; ++o) {
    int m = 0;
    for (int i = 0; i < k; ++i) {
      const int at = o * stride + i * dilation - pad;
      if (at < 0 || at >= in) m |= 1 << i;
    }
    int c = 0;
    while (c < *n && masks[c] != m) ++c;
    if (c == *n) {
      if (*n == max_masks) return false;
      masks[(*n)++] = m;
    }
    classes[o] = c;
  }
  return true;
}

}  // namespace

void prepare_channel_lanes_filter_avx2(const Conv2DShape& s, const PackedWord* filter,
                                       std::uint32_t* lanes_filter, std::int32_t* tap_pop,
                                       const ParallelFor& parallel_for) {
  const int blocks16 = (s.out_c + kLanes - 1) / kLanes;
  const std::int64_t cost = static_cast<std::int64_t>(s.k_h) * s.k_w * packed_words(s.in_c) * kLanes * 4;
  parallel_for(blocks16, cost, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t b = begin; b < end; ++b) {
      transpose_filter_block(s, reinterpret_cast<const std::uint32_t*>(filter), b, lanes_filter,
                             tap_pop);
    }
  });
}

bool channel_lanes_preferred(const Conv2DShape& s) {
  // Transposing the filter costs about one pass over it, i.e. ~1/pixels of the conv's own
  // filter traffic; measured on Zen 3 the channel-lane driver is as fast or faster than the
  // pixel-lane one for every ResNet-18 / AlexNet shape, including 512@7 (49 pixels) and 96->256
  // 5x5 (filter 19 K words), thanks to contiguous stores and no gathers. Below a few dozen
  // pixels (batched dense layers, tiny images) the transpose would dominate.
  const std::int64_t pixels = static_cast<std::int64_t>(s.batch) * s.out_h * s.out_w;
  return pixels >= 32;
}

bool channel_table_supported(const Conv2DShape& s) {
  // The table tile sums popcounts in uint16 lanes: at most 4 per nibble step.
  return static_cast<std::int64_t>(s.k_h) * s.k_w * packed_words(s.in_c) * kBitsPerWord < 65536;
}

void prepare_channel_table_filter_avx2(const Conv2DShape& s, const PackedWord* filter,
                                       std::uint8_t* nibble_filter, std::int32_t* tap_pop,
                                       const ParallelFor& parallel_for) {
  const int blocks64 = (s.out_c + kTableLanes - 1) / kTableLanes;
  const int taps = s.k_h * s.k_w;
  const std::int64_t cost = static_cast<std::int64_t>(packed_words(s.in_c)) * kTableLanes * 8;
  parallel_for(static_cast<std::int64_t>(blocks64) * taps, cost, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t u = begin; u < end; ++u) {
      const int t = static_cast<int>(u % taps);
      transpose_table_block(s, reinterpret_cast<const std::uint32_t*>(filter), u / taps, t, t + 1,
                            nibble_filter, tap_pop);
    }
  });
}

bool conv2d_channel_lanes_avx2(const ConvArgs& a, const ParallelFor& parallel_for,
                               std::uint32_t* bits, float* mean_abs) {
  const Conv2DShape& s = a.shape;
  const int packed = packed_words(s.in_c);  // packed words per pixel / tap
  const int taps = s.k_h * s.k_w;
  const bool same = s.padding == Padding::kSame;
  const std::uint32_t* filter = reinterpret_cast<const std::uint32_t*>(a.filter);
  // Two tiles: the table tile (64-channel blocks; the default) or the nibble-planar one
  // (16-channel blocks: shapes beyond the table tile's uint16 sums, or forced by tests). Each
  // takes its filter layout from a PreparedConv2DFilter or makes it per call.
  // Without a prepared filter the table layout is made per call; it costs about what the
  // planar transpose costs, and the faster tile repays it from a few dozen output pixels
  // (measured: 512@7, 49 pixels, 0.298 -> 0.283 ms at 1 thread).
  const std::int64_t out_pixels = static_cast<std::int64_t>(s.batch) * s.out_h * s.out_w;
  const bool table = channel_table_supported(s) && !a.planar_tile &&
                     (a.nibble_filter != nullptr || out_pixels >= kTableMinPixelsPerCall);
  const int lanes = table ? kTableLanes : kLanes;
  // Input elements per pixel: planar words (uint32) or table offsets (uint16, one per nibble).
  const int elems = table ? 8 * packed : 2 * packed;
  const int elem_bytes = table ? 2 : 4;
  const int pixel_bytes = elems * elem_bytes;
  const int steps = taps * elems;  // k steps per receptive field
  const int oc_blocks = (s.out_c + lanes - 1) / lanes;
  const int oc_pad = oc_blocks * lanes;

  // Per-call filter layout when not prepared: the table tile's nibble bytes [block][k][64] and
  // tap popcounts [tap][oc_pad], or the planar [block][k][16] words and (SAME) tap popcounts;
  // then alpha/bias padded to whole blocks. One scratch allocation, carved up (4-byte words;
  // the nibble bytes first, 64-byte aligned).
  const bool prepared = table ? a.nibble_filter != nullptr : a.lanes_filter != nullptr;
  const std::size_t wt_words =
      prepared ? 0
      : table  ? (static_cast<std::size_t>(oc_blocks) * steps * kTableLanes + 63) / 64 * 16
               : static_cast<std::size_t>(oc_blocks) * steps * kLanes;
  const std::size_t tp_words = !prepared && (same || table) ? static_cast<std::size_t>(taps) * oc_pad : 0;
  auto* scratch = static_cast<std::uint32_t*>(
      thread_scratch((wt_words + tp_words + 2 * static_cast<std::size_t>(oc_pad)) * 4, kScratchFilterT));
  if (scratch == nullptr) return false;
  const std::int32_t* tap_pop = !prepared ? reinterpret_cast<std::int32_t*>(scratch + wt_words)
                                : table   ? a.nibble_tap_pop
                                          : a.lanes_tap_pop;
  float* alpha = reinterpret_cast<float*>(scratch + wt_words + tp_words);
  float* bias = alpha + oc_pad;
  // Copies, not loops over a.*: a store into alpha or bias may alias `a`, so such a loop
  // reloaded a.alpha and a.bias for every channel (0.4 us of 512@7's serial part).
  // The table path always adds the bias: -0.0 when there is none (x + -0.0 == x, also for
  // x = -0.0 and NaN).
  const float no_bias = table ? -0.0f : 0.0f;
  std::copy(a.alpha, a.alpha + s.out_c, alpha);
  std::fill(alpha + s.out_c, alpha + oc_pad, 0.0f);
  if (a.bias != nullptr) {
    std::copy(a.bias, a.bias + s.out_c, bias);
  } else {
    std::fill(bias, bias + s.out_c, no_bias);
  }
  std::fill(bias + s.out_c, bias + oc_pad, no_bias);

  // The input, sign-packed and split into nibbles, in a zero-padded image
  // [batch][hp][wp][elems] (hp, wp: the input plus TensorFlow's SAME padding), so every
  // receptive field is a fixed pattern of runs from its corner and the tiles read it in place.
  // A padded tap then has bits 0 (+1), and the output stage subtracts its weight popcount
  // (per-tap tap_pop): it contributes 0 to the dot. mean |x| (for K) gets the same zero border.
  const int pad_h = same ? std::max((s.out_h - 1) * s.stride_h + (s.k_h - 1) * s.dilation_h + 1 - s.in_h, 0) : 0;
  const int pad_w = same ? std::max((s.out_w - 1) * s.stride_w + (s.k_w - 1) * s.dilation_w + 1 - s.in_w, 0) : 0;
  const int hp = s.in_h + pad_h, wp = s.in_w + pad_w;
  const std::int64_t padded_pixels = static_cast<std::int64_t>(s.batch) * hp * wp;
  auto* image = static_cast<char*>(
      thread_scratch(static_cast<std::size_t>(padded_pixels) * pixel_bytes, kScratchPlanar));
  float* mean_pad = mean_abs != nullptr
                        ? static_cast<float*>(thread_scratch(
                              static_cast<std::size_t>(padded_pixels) * 4, kScratchMeanAbsPadded))
                        : nullptr;
  if (image == nullptr || (mean_abs != nullptr && mean_pad == nullptr)) return false;

  // Input rows are packed lazily by the conv tasks themselves (ensure_rows below), right
  // before the first block that reads them: no separate pass (one fewer fork/join per call).
  // Without a prepared filter, one parallel pass first transposes it: per 16-channel block
  // (planar), or per tap of a 64-channel block (table).
  const std::int64_t pack_units = static_cast<std::int64_t>(s.batch) * s.in_h;
  if (!prepared) {
    const std::int64_t filter_units = table ? static_cast<std::int64_t>(oc_blocks) * taps : oc_blocks;
    const std::int64_t filter_cost = static_cast<std::int64_t>(steps) * lanes * 2 / (table ? taps : 1);
    parallel_for(filter_units, filter_cost, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t fu = begin; fu < end; ++fu) {
        if (table) {
          const int t = static_cast<int>(fu % taps);
          transpose_table_block(s, filter, fu / taps, t, t + 1, reinterpret_cast<std::uint8_t*>(scratch),
                                reinterpret_cast<std::int32_t*>(scratch + wt_words));
        } else {
          transpose_filter_block(s, filter, fu, scratch,
                                 same ? reinterpret_cast<std::int32_t*>(scratch + wt_words) : nullptr);
        }
      }
    });
  }
  const int pad_top = s.pad_top, pad_left = s.pad_left;
  const int pad_right = pad_w - pad_left, pad_bottom = pad_h - pad_top;
  // Input rows some receptive field reads (all of them unless the stride skips rows, e.g. a
  // 1x1 stride-2 conv reads every other row): the others are not packed. Then one state per
  // (image, row): 0 not packed, 1 being packed, 2 packed.
  auto* row_read = static_cast<std::uint8_t*>(
      thread_scratch(static_cast<std::size_t>(s.in_h) + static_cast<std::size_t>(pack_units), kScratchRowsRead));
  if (row_read == nullptr) return false;
  std::memset(row_read, 0, static_cast<std::size_t>(s.in_h));
  for (int oh = 0; oh < s.out_h; ++oh) {
    for (int i = 0; i < s.k_h; ++i) {
      const int r = oh * s.stride_h + i * s.dilation_h - pad_top;
      if (r >= 0 && r < s.in_h) row_read[r] = 1;
    }
  }
  auto* row_state = reinterpret_cast<std::atomic<std::uint8_t>*>(row_read + s.in_h);
  for (std::int64_t u = 0; u < pack_units; ++u) new (row_state + u) std::atomic<std::uint8_t>(0);
  // Packs input row `unit` (image unit / in_h) into the padded image (sign bits as nibble
  // offsets or planes, mean |x| for K), zeroes the padding columns beside it, and, for the
  // first / last row of an image, the padding rows above / below.
  const auto pack_row = [&](std::int64_t unit) {
    const std::int64_t n = unit / s.in_h;
    const int ih = static_cast<int>(unit % s.in_h);
    const std::int64_t prow = (n * hp + ih + pad_top) * wp;  // first pixel of the padded row
    char* dst = image + prow * pixel_bytes;
    std::uint32_t* tmp = bits + unit * s.in_w * packed;
    if (ih == 0 && pad_top > 0) {
      std::memset(image + n * hp * wp * pixel_bytes, 0, static_cast<std::size_t>(pad_top) * wp * pixel_bytes);
      if (mean_pad != nullptr) std::fill(mean_pad + n * hp * wp, mean_pad + (n * hp + pad_top) * wp, 0.0f);
    }
    if (ih == s.in_h - 1 && pad_bottom > 0) {
      const std::int64_t z0 = n * hp + pad_top + s.in_h;  // first padding row below
      std::memset(image + z0 * wp * pixel_bytes, 0, static_cast<std::size_t>(pad_bottom) * wp * pixel_bytes);
      if (mean_pad != nullptr) std::fill(mean_pad + z0 * wp, mean_pad + (z0 + pad_bottom) * wp, 0.0f);
    }
    if (!row_read[ih]) return;  // no receptive field reads it (stride > kernel span)
    pack_rows_range_avx2(a.input + unit * s.in_w * s.in_c, 0, s.in_w, s.in_c,
                         reinterpret_cast<PackedWord*>(tmp),
                         mean_pad != nullptr ? mean_pad + prow + pad_left : nullptr);
    if (table) {
      make_nibble_offsets(tmp, static_cast<std::int64_t>(s.in_w) * packed,
                          reinterpret_cast<std::uint16_t*>(dst + pad_left * pixel_bytes));
    } else {
      make_nibble_planes(tmp, static_cast<std::int64_t>(s.in_w) * packed,
                         reinterpret_cast<std::uint32_t*>(dst + pad_left * pixel_bytes));
    }
    if (pad_w > 0) {
      std::memset(dst, 0, static_cast<std::size_t>(pad_left) * pixel_bytes);
      std::memset(dst + (pad_left + s.in_w) * pixel_bytes, 0, static_cast<std::size_t>(pad_right) * pixel_bytes);
      if (mean_pad != nullptr) {
        for (int q = 0; q < pad_left; ++q) mean_pad[prow + q] = 0.0f;
        for (int q = 0; q < pad_right; ++q) mean_pad[prow + pad_left + s.in_w + q] = 0.0f;
      }
    }
    // The pair tile reads pair offsets: each nibble with the same nibble of the pixel a stride
    // to the right (0 past the row's end: that partner is never an output pixel's).
    if (table) {
      make_pair_offsets(reinterpret_cast<std::uint16_t*>(dst), static_cast<std::int64_t>(wp) * elems,
                        static_cast<std::int64_t>(s.stride_w) * elems);
    }
  };
  // Row `unit` is packed on return (by whichever thread claims it first; see make_once).
  const auto ensure_row = [&](std::int64_t unit) { make_once(row_state[unit], [&] { pack_row(unit); }); };
  // Every input row the receptive fields of output pixels [first, first + count) read, plus the
  // first / last row of the image when they reach into the padding above / below (those rows'
  // units zero it).
  const auto ensure_rows = [&](std::int64_t first, std::int64_t count) __attribute__((noinline)) {
    const std::int64_t q_end = (first + count - 1) / s.out_w;
    for (std::int64_t q = first / s.out_w; q <= q_end; ++q) {  // flattened (image, output row)
      const std::int64_t n = q / s.out_h;
      const int oh = static_cast<int>(q % s.out_h);
      bool above = false, below = false;
      for (int i = 0; i < s.k_h; ++i) {
        const int r = oh * s.stride_h + i * s.dilation_h - pad_top;
        if (r < 0) {
          above = true;
        } else if (r >= s.in_h) {
          below = true;
        } else {
          ensure_row(n * s.in_h + r);
        }
      }
      if (above) ensure_row(n * s.in_h);
      if (below) ensure_row(n * s.in_h + s.in_h - 1);
    }
  };

  // The k sequence of a receptive field as runs from its corner: one run per kernel row when
  // the taps of a row are adjacent (dilation_w 1), else one per tap; split so that at most 63
  // steps pass between widenings (each step adds at most 4 to a byte counter).
  const bool row_runs = s.dilation_w == 1;
  const int seg_len = row_runs ? s.k_w * elems : elems;
  const int segs = row_runs ? s.k_h : taps;
  const int max_runs = segs + steps / 63 + 2;
  const std::size_t run_bytes = std::max(sizeof(Run), sizeof(TableRun));
  auto* run_mem = static_cast<char*>(thread_scratch(
      static_cast<std::size_t>(max_runs) * run_bytes + (static_cast<std::size_t>(s.out_h) + s.out_w) * sizeof(int),
      kScratchRuns));
  if (run_mem == nullptr) return false;
  auto* runs = reinterpret_cast<Run*>(run_mem);
  auto* table_runs = reinterpret_cast<TableRun*>(run_mem);
  int nruns = 0;
  {
    // Widen after whole runs when they fit (fewer, longer runs), else every 63 steps.
    const int gsz = seg_len <= 63 ? 63 / seg_len * seg_len : 63;
    int group = 0;
    for (int g = 0; g < segs; ++g) {
      const int i = row_runs ? g : g / s.k_w, q = row_runs ? 0 : g % s.k_w;
      std::int64_t offset = (static_cast<std::int64_t>(i) * s.dilation_h * wp + q * s.dilation_w) * elems;
      int left = seg_len;
      while (left > 0) {
        const int n = std::min(left, gsz - group);
        group += n;
        const bool widen = group == gsz || (g == segs - 1 && n == left);
        if (table) {
          table_runs[nruns++] = TableRun{offset * 2, (offset + n) * 2, widen ? 1 : 0};
        } else {
          runs[nruns++] = Run{offset, n, widen};
        }
        if (group == gsz) group = 0;
        offset += n;
        left -= n;
      }
    }
    if (table) table_runs[nruns - 1].flags |= 2;
  }

  // How many kernel rows (columns) of each output row (column) fall inside the input.
  int* row_valid = reinterpret_cast<int*>(run_mem + static_cast<std::size_t>(max_runs) * run_bytes);
  int* col_valid = row_valid + s.out_h;
  for (int oh = 0; oh < s.out_h; ++oh) {
    int v = 0;
    for (int i = 0; i < s.k_h; ++i) {
      const int r = oh * s.stride_h + i * s.dilation_h - s.pad_top;
      v += r >= 0 && r < s.in_h;
    }
    row_valid[oh] = v;
  }
  for (int ow = 0; ow < s.out_w; ++ow) {
    int v = 0;
    for (int q = 0; q < s.k_w; ++q) {
      const int c = ow * s.stride_w + q * s.dilation_w - s.pad_left;
      v += c >= 0 && c < s.in_w;
    }
    col_valid[ow] = v;
  }
  InputGeometry geo;
  geo.hp = hp;
  geo.wp = wp;
  geo.pixel_bytes = pixel_bytes;
  geo.image = image;
  geo.mean_pad = mean_pad;
  geo.row_valid = row_valid;
  geo.col_valid = col_valid;
  geo.gather_ok = padded_pixels < (std::int64_t{1} << 31);
  // Padding classes (table tile): distinct masks of padded kernel rows (per output row) and
  // columns (per output column); a few per side for SAME, one for VALID. With too many (or
  // kernels over 30 taps a side), finish_table_tile subtracts each padded tap's popcounts per
  // pixel. Each class has a float row [oc_pad]: n_valid + 2 * (the popcounts of its padded
  // taps), made per 64-channel block by the first task that reads the block (ensure_class_rows
  // below), not on the calling thread before the parallel pass, where it took 1.6 us of 512@7's
  // call at 2 threads (9 classes x 64 vectors; 4 us more before each class's padded taps were
  // listed once instead of tested for each 8 channels).
  int class_rows = 0, class_cols = 0;
  float* class_base = nullptr;  // the rows (geo.dot_base)
  int* row_masks = nullptr;  // up to k_h + k_w + 2 distinct masks each
  int* col_masks = nullptr;
  std::atomic<std::uint8_t>* class_state = nullptr;  // per 64-channel block, as row_state
  if (table) {
    const int max_masks = s.k_h + s.k_w + 2;
    const std::size_t rows_offset =
        (static_cast<std::size_t>(s.out_h + s.out_w + 2 * max_masks) * sizeof(int) + 63) / 64 * 64;
    auto* class_mem = static_cast<char*>(thread_scratch(
        rows_offset + static_cast<std::size_t>(kMaxClasses) * oc_pad * sizeof(float) + oc_blocks,
        kScratchPadClasses));
    if (class_mem == nullptr) return false;
    int* row_class = reinterpret_cast<int*>(class_mem);
    int* col_class = row_class + s.out_h;
    row_masks = col_class + s.out_w;
    col_masks = row_masks + max_masks;
    const bool ok = s.k_h <= 30 && s.k_w <= 30 &&  // masks fit an int
                    padding_classes(s.out_h, s.k_h, s.stride_h, s.dilation_h, s.pad_top, s.in_h,
                                    max_masks, row_class, row_masks, &class_rows) &&
                    padding_classes(s.out_w, s.k_w, s.stride_w, s.dilation_w, s.pad_left, s.in_w,
                                    max_masks, col_class, col_masks, &class_cols);
    if (ok && class_rows * class_cols <= kMaxClasses) {
      class_base = reinterpret_cast<float*>(class_mem + rows_offset);  // 64-byte aligned, as scratch
      class_state = reinterpret_cast<std::atomic<std::uint8_t>*>(class_base + static_cast<std::size_t>(kMaxClasses) * oc_pad);
      for (int b = 0; b < oc_blocks; ++b) new (class_state + b) std::atomic<std::uint8_t>(0);
      geo.dot_base = class_base;
      geo.row_class = row_class;
      geo.col_class = col_class;
      geo.col_classes = class_cols;
      geo.oc_pad = oc_pad;
    }
  }
  // Channels [64 b, 64 b + 64) of every padding-class row (each class's padded taps listed once).
  const auto make_class_rows = [&](int b) {
    const std::int32_t* padded_rows[kMaxTaps];  // kernels fit (resolve_conv2d_shape)
    for (int a_r = 0; a_r < class_rows; ++a_r) {
      for (int a_c = 0; a_c < class_cols; ++a_c) {
        const int rm = row_masks[a_r], cm = col_masks[a_c];
        const int nv = (s.k_h - __builtin_popcount(rm)) * (s.k_w - __builtin_popcount(cm)) * s.in_c;
        int padded = 0;
        for (int i = 0; i < s.k_h; ++i) {
          for (int q = 0; q < s.k_w; ++q) {
            if (((rm >> i) & 1) || ((cm >> q) & 1)) {
              padded_rows[padded++] = tap_pop + static_cast<std::int64_t>(i * s.k_w + q) * oc_pad;
            }
          }
        }
        float* d = class_base + static_cast<std::int64_t>(a_r * class_cols + a_c) * oc_pad;
        for (int c0 = b * kTableLanes; c0 < (b + 1) * kTableLanes; c0 += 8) {
          __m256i acc = _mm256_setzero_si256();
          for (int t = 0; t < padded; ++t) {
            acc = _mm256_add_epi32(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(padded_rows[t] + c0)));
          }
          _mm256_storeu_ps(d + c0, _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_set1_epi32(nv), _mm256_add_epi32(acc, acc))));
        }
      }
    }
  };
  const auto ensure_class_rows = [&](int b) { make_once(class_state[b], [&] { make_class_rows(b); }); };

  const std::int64_t total = static_cast<std::int64_t>(s.batch) * s.out_h * s.out_w;
  // Vertical slots (table tile, odd output width, at least two output rows): the last pixels of
  // output rows 2m and 2m + 1, which have no partner in their rows, share one slot, the partner
  // being the pixel below. Such a slot reads the vertical pair image: at padded row R, each
  // nibble's pair offset with the same nibble of row R + stride_h (from the pair image, whose
  // entries 32 * (16 a + a') start with the pixel's own nibble a). Only the columns of the last
  // output column's receptive fields are ever read, so only those are made, per padded row on
  // first use (as the input rows are packed). 7x7: 25 slots for 49 pixels instead of 28.
  const bool vpair = table && s.out_w % 2 == 1 && s.out_h >= 2;
  const int row_slots = s.out_w / 2;  // vpair: the horizontal slots of a row
  const int pair_rows = s.out_h / 2, pair_units = 2 * row_slots + 1;
  char* vimage = nullptr;
  std::atomic<std::uint8_t>* vrow_state = nullptr;
  if (vpair) {
    const std::size_t image_bytes = static_cast<std::size_t>(padded_pixels) * pixel_bytes;
    auto* mem = static_cast<char*>(thread_scratch(image_bytes + static_cast<std::size_t>(s.batch) * hp,
                                                  kScratchVerticalPairs));
    if (mem == nullptr) return false;
    vimage = mem;
    vrow_state = reinterpret_cast<std::atomic<std::uint8_t>*>(mem + image_bytes);
    for (std::int64_t r = 0; r < static_cast<std::int64_t>(s.batch) * hp; ++r) {
      new (vrow_state + r) std::atomic<std::uint8_t>(0);
    }
  }
  // Padded row `prow` (image * hp + row) of the vertical pair image, in the last output
  // column's receptive field; the pair image rows prow and prow + stride_h must be packed.
  const auto ensure_vrow = [&](std::int64_t prow) {
    make_once(vrow_state[prow], [&] {
      const auto* pairs = reinterpret_cast<const std::uint16_t*>(image);
      auto* vertical = reinterpret_cast<std::uint16_t*>(vimage);
      const std::int64_t below = static_cast<std::int64_t>(s.stride_h) * wp * elems;
      for (int q = 0; q < s.k_w; ++q) {
        const std::int64_t at = (prow * wp + (s.out_w - 1) * s.stride_w + q * s.dilation_w) * elems;
        make_vertical_offsets(pairs + at, pairs + at + below, elems, vertical + at);
      }
    });
  };
  // Blocks are made of units: pixels (planar tile) or pair-tile slots (table tile: a row of
  // out_w pixels is (out_w + 1) / 2 slots, the last one a single pixel when out_w is odd; with
  // vertical slots, per pair of rows 2m, 2m + 1: row 2m's horizontal slots, the vertical slot,
  // row 2m + 1's horizontal slots, and an odd last row as without them).
  // Units per block (at most): whole tiles (4 pixels planar, kTableSlots slots table) and, for
  // few pixels, one tile per block so that every task costs about the same.
  const int slots_per_row = (s.out_w + 1) / 2;
  const std::int64_t units_per_image =
      vpair ? static_cast<std::int64_t>(pair_rows) * pair_units + (s.out_h % 2) * (row_slots + 1)
            : static_cast<std::int64_t>(s.out_h) * slots_per_row;
  const std::int64_t units = table ? s.batch * units_per_image : total;
  const int tile_units = table ? kTableSlots : 4;
  const bool one_tile = total < 512;
  const int block_units = one_tile ? tile_units : (table ? kTableBlock / 2 : kBlock);
  // With uint16 sums and more than 64 output channels the table tile runs 128 channels (two
  // 64-channel blocks) per slot (gemm_seg_pair_x128), so tasks take whole pairs of blocks.
  const bool x128 = table && steps > 63 && s.out_c > kTableLanes;
  const ConvTiling tiling = plan_tiling(units, block_units, s.out_c, x128 ? 2 * lanes : lanes, kTargetTasks);
  const std::int64_t cost = static_cast<std::int64_t>(block_units) * (table ? 2 : 1) * tiling.oc_chunk * steps;
  // First pixel of unit u (without vertical slots).
  const auto unit_pixel = [&, slots_per_row](std::int64_t u) {
    return table ? u / slots_per_row * s.out_w + 2 * (u % slots_per_row) : u;
  };
  // Describes the block of units [u0, u1) with vertical slots: its pixels in slot order (each
  // slot's pixel, then its partner), described run by run of consecutive pixels.
  const auto describe_vpair_block = [&](std::int64_t u0, std::int64_t u1, PixelBlock* blk) __attribute__((noinline)) {
    const std::int64_t hw = static_cast<std::int64_t>(s.out_h) * s.out_w;
    std::int64_t n = u0 / units_per_image;
    const int r = static_cast<int>(u0 % units_per_image);
    int m = std::min(r / pair_units, pair_rows), k = r - m * pair_units;  // row pair m (or the odd last row), slot k
    std::int64_t* const list = blk->pixel;
    std::int64_t top[kMaxBlock];  // a vertical slot's padded corner row (image * hp + row), else -1
    int count = 0, slots = 0;
    for (std::int64_t u = u0; u < u1; ++u) {
      const bool in_pair = m < pair_rows;
      const bool v = in_pair && k == row_slots;
      const int oh = !in_pair ? s.out_h - 1 : 2 * m + (k > row_slots);
      const int col = v ? s.out_w - 1 : 2 * (k > row_slots ? k - row_slots - 1 : k);
      const std::int64_t p = n * hw + static_cast<std::int64_t>(oh) * s.out_w + col;
      blk->slot_pixel[slots] = count;
      list[count++] = p;
      const bool partner = v || col + 1 < s.out_w;
      blk->slot_partner[slots] = partner ? count : -1;
      if (partner) list[count++] = v ? p + s.out_w : p + 1;
      top[slots++] = v ? n * hp + static_cast<std::int64_t>(oh) * s.stride_h : -1;
      if (++k == (in_pair ? pair_units : row_slots + 1)) {
        k = 0;
        if (++m == pair_rows + s.out_h % 2) {
          m = 0;
          ++n;
        }
      }
    }
    for (int j = 0; j < count;) {
      int e = j + 1;
      while (e < count && list[e] == list[e - 1] + 1) ++e;
      ensure_rows(list[j], e - j);
      describe_block<true>(s, geo, list[j], e - j, blk, j);
      j = e;
    }
    blk->first = list[0];
    blk->count = count;
    blk->slots = slots;
    for (int q = 0; q < slots; ++q) {
      const void* base = blk->base[blk->slot_pixel[q]];
      if (top[q] >= 0) {
        for (int i = 0; i < s.k_h; ++i) ensure_vrow(top[q] + static_cast<std::int64_t>(i) * s.dilation_h);
        base = vimage + (static_cast<const char*>(base) - image);
      }
      blk->slot_base[q] = base;
    }
  };
  // Locals, not a.*: the output stores may alias anything, so the compiler would reload them.
  OutputFlags flags;
  flags.use_k = a.use_k;
  flags.relu = a.relu;
  flags.has_bias = a.bias != nullptr;
  float* const output = a.output;
  const int out_c = s.out_c;
  const Run* const run_list = runs;
  const TableRun* const table_run_list = table_runs;
  const int run_count = nruns;
  const std::uint32_t* const wt = prepared ? a.lanes_filter : scratch;
  const std::uint8_t* const nibble_filter =
      prepared ? a.nibble_filter : reinterpret_cast<const std::uint8_t*>(scratch);
  // Receptive fields of at most 63 table steps (8 per packed word: 1x1 convs up to 224 input
  // channels, 2x2 up to 32): the table tile keeps its byte counters (no uint16 sums to clear
  // and widen into; 1t, interleaved A/B, min: 1x1/2 64->128@56 -2 to -3%, 128->256@28 -3 to -5%).
  const bool byte_sums = table && steps <= 63;
  // The task body, compiled once per counter mode (kBytes: the table tile's byte counters) so
  // that each mode's loop is compiled as if it were the only one.
  const auto run_tasks = [&, flags, output, out_c, run_list, table_run_list, run_count](
                             auto bytes_tag, std::int64_t begin, std::int64_t end) __attribute__((noinline)) {
    constexpr bool kBytes = decltype(bytes_tag)::value;
    PixelBlock blk;
    std::int64_t cached = -1;
    alignas(32) __m256i sums[2 * kTableSlots * 4];
    for (std::int64_t t = begin; t < end; ++t) {
      const std::int64_t bi = t / tiling.oc_chunks;
      const int chunk = static_cast<int>(t % tiling.oc_chunks);
      if (bi != cached) {
        cached = bi;
        // One-tile blocks share the units out evenly (block_units - 1 or block_units each), so
        // that tasks cost about the same (7x7 = 28 slots in 3-slot tiles: 2 or 3 per block,
        // not 9 x 3 + 1); larger blocks keep whole tiles (a short last block matters little).
        const std::int64_t u0 = one_tile ? bi * units / tiling.blocks : bi * block_units;
        const std::int64_t u1 = one_tile ? (bi + 1) * units / tiling.blocks : std::min(units, u0 + block_units);
        if (vpair) {
          describe_vpair_block(u0, u1, &blk);
        } else {
          const std::int64_t first = unit_pixel(u0), next = unit_pixel(u1);
          ensure_rows(first, next - first);
          describe_block(s, geo, first, static_cast<int>(next - first), &blk);
          if (table) make_slots(&blk, s.out_w);
        }
      }
      const int oc_begin = chunk * tiling.oc_chunk;
      const int oc_end = std::min(out_c, oc_begin + tiling.oc_chunk);
      for (int oc0 = oc_begin; oc0 < oc_end; oc0 += lanes) {
        float* const out = output + blk.first * out_c + oc0;
        const std::int32_t* const tp = tap_pop + oc0;
        if (table) {
          // Slot q's pair-tile input (its pixel's corner in the pair image, or in the vertical one).
          const auto slot_input = [&](int q) {
            return static_cast<const std::uint16_t*>(vpair ? blk.slot_base[q] : blk.base[blk.slot_pixel[q]]);
          };
          // The output stage of slots s0 .. s0 + ns - 1 (pixels listed with vertical slots).
          const auto finish = [&](const __m256i* tile_sums, int ns, int s0, const TableOutput& o) {
            if (vpair) {
              finish_table_tile<kBytes, true>(tile_sums, ns, blk, s0, o);
            } else {
              finish_table_tile<kBytes, false>(tile_sums, ns, blk, s0, o);
            }
          };
          if (class_state != nullptr) ensure_class_rows(oc0 / kTableLanes);
          const std::uint8_t* wblock = nibble_filter + static_cast<std::int64_t>(oc0 / kTableLanes) * steps * kTableLanes;
          const TableOutput st{alpha + oc0, bias + oc0, tp, oc_pad, vpair ? output + oc0 : out, out_c, std::min(kTableLanes, out_c - oc0), flags, oc0};
          if constexpr (!kBytes) {
            // Blocks oc0 and oc0 + 64 at once, segment by segment (63 steps, 8 KB of weights)
            // over all the block's slots, then the output stage of each block.
            if (x128 && oc0 + kTableLanes < oc_end) {
              const int oc1 = oc0 + kTableLanes;
              if (class_state != nullptr) ensure_class_rows(oc1 / kTableLanes);
              const TableOutput st1{alpha + oc1, bias + oc1, tap_pop + oc1, oc_pad,
                                    vpair ? output + oc1 : out + kTableLanes, out_c,
                                    std::min(kTableLanes, out_c - oc1), flags, oc1};
              const std::int64_t bstride = static_cast<std::int64_t>(steps) * kTableLanes;
              alignas(32) __m256i sums0[kMaxBlock * 4], sums1[kMaxBlock * 4];
              const TableRun* run = table_run_list;
              const std::uint8_t* wk = wblock;
              // One segment for every slot; false after the field's last segment.
              const auto segment = [&](auto first_tag) {
                const TableRun* const r0 = run;
                const std::uint8_t* const w0 = wk;
                for (int k = 0; k < blk.slots; ++k) {
                  run = r0;
                  wk = w0;
                  gemm_seg_pair_x128<decltype(first_tag)::value>(slot_input(k), run, wk, bstride, kPairTables.v,
                                                                 sums0 + 8 * k, sums1 + 8 * k);
                }
                return (run[-1].flags & 2) == 0;
              };
              if (segment(std::true_type())) {
                while (segment(std::false_type())) {
                }
              }
              finish(sums0, blk.slots, 0, st);
              finish(sums1, blk.slots, 0, st1);
              oc0 += kTableLanes;
              continue;
            }
          }
          for (int s0 = 0; s0 < blk.slots; s0 += kTableSlots) {
            const int ns = std::min(kTableSlots, blk.slots - s0);
            const std::uint16_t* bases[kTableSlots];
            for (int k = 0; k < ns; ++k) bases[k] = slot_input(s0 + k);
            switch (ns) {
              case 3: gemm_tile_pair_x64<3, kBytes>(bases, table_run_list, wblock, kPairTables.v, sums); break;
              case 2: gemm_tile_pair_x64<2, kBytes>(bases, table_run_list, wblock, kPairTables.v, sums); break;
              default: gemm_tile_pair_x64<1, kBytes>(bases, table_run_list, wblock, kPairTables.v, sums); break;
            }
            finish(sums, ns, s0, st);
          }
          continue;
        }
        const std::uint32_t* wblock = wt + static_cast<std::int64_t>(oc0 / kLanes) * steps * kLanes;
        OutputStage st;
        st.alpha0 = _mm256_loadu_ps(alpha + oc0);
        st.alpha1 = _mm256_loadu_ps(alpha + oc0 + 8);
        st.bias0 = _mm256_loadu_ps(bias + oc0);
        st.bias1 = _mm256_loadu_ps(bias + oc0 + 8);
        st.full = oc0 + kLanes <= out_c;
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        st.store0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(out_c - oc0), lane);
        st.store1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(out_c - oc0 - 8), lane);
        st.use_k = flags.use_k;
        st.relu = flags.relu;
        st.has_bias = flags.has_bias;
        st.tap_pop = tp;
        st.oc_pad = oc_pad;
        st.out = out;
        st.out_c = out_c;
        const std::uint32_t* const* bases = reinterpret_cast<const std::uint32_t* const*>(blk.base);
        int q0 = 0;
        for (; q0 + 4 <= blk.count; q0 += 4) {
          finish_tile<4>(gemm_tile_runs_x16<4>(bases + q0, run_list, run_count, wblock), blk, q0, st);
        }
        switch (blk.count - q0) {
          case 3:
            finish_tile<3>(gemm_tile_runs_x16<3>(bases + q0, run_list, run_count, wblock), blk, q0, st);
            break;
          case 2:
            finish_tile<2>(gemm_tile_runs_x16<2>(bases + q0, run_list, run_count, wblock), blk, q0, st);
            break;
          case 1:
            finish_tile<1>(gemm_tile_runs_x16<1>(bases + q0, run_list, run_count, wblock), blk, q0, st);
            break;
          default:
            break;
        }
      }
    }
  };
  parallel_for(tiling.tasks, cost, [&](std::int64_t begin, std::int64_t end) {
    if (byte_sums) {
      run_tasks(std::true_type(), begin, end);
    } else {
      run_tasks(std::false_type(), begin, end);
    }
  });
  return true;
}

}  // namespace internal
}  // namespace keras_xnor
