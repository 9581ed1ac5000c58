// AVX2 binary GEMM microkernels (internal; include only from *_avx2.cc files).
//
// A tile computes popcount(patch XOR weight) for MV*8 output pixels x NR output channels:
//   patches  uint32 [kw][16], 64-byte aligned: word k of pixel j at patches[k * 16 + j]
//            (im2col of the sign-packed input, pixels in vector lanes; lanes past the block's
//            pixels hold anything, their results are ignored).
//   weights  NR pointers to filter rows (OHWI packed, kw words each; read with broadcasts,
//            so any alignment).
//   pops     int32 [NR][16]: pops[j * 16 + i] = popcount over k for pixel lane i, channel j.
// Popcount: vpshufb nibble LUT into byte accumulators, widened to int32 every 31 words (each
// step adds at most 8 to a byte, 31 * 8 = 248 < 256). Reads exactly kw rows of 16 words.
// (The channel-lane driver has its own nibble-planar tile, gemm_tile_runs_x16 in
// xnor_gemm_tile_avx2.h, inlined into its fused output stage.)
#ifndef KERAS_XNOR_CORE_XNOR_GEMM_AVX2_H_
#define KERAS_XNOR_CORE_XNOR_GEMM_AVX2_H_

#include <cstdint>

namespace keras_xnor {
namespace internal {

// 16 pixels (two vectors) x 4 channels: the main tile.
void xnor_gemm_16x4_avx2(const std::uint32_t* patches, int kw,
                         const std::uint32_t* const* weights, std::int32_t* pops);
// 8 pixels (one vector) x 8 channels: blocks of at most 8 pixels (small outputs, tails).
void xnor_gemm_8x8_avx2(const std::uint32_t* patches, int kw,
                        const std::uint32_t* const* weights, std::int32_t* pops);

// Dense layer at small batch: pops[j] = popcount(x XOR weights[j]) over `words` words, j < 4.
// Reads exactly `words` words of x and of each weight row (any alignment).
void xnor_gemv_1x4_avx2(const std::uint32_t* x, int words, const std::uint32_t* const* weights,
                        std::int32_t* pops);

}  // namespace internal
}  // namespace keras_xnor

#endif  // KERAS_XNOR_CORE_XNOR_GEMM_AVX2_H_
