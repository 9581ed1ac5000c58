// 4 pixels x 16 output channels AVX2 binary GEMM microkernel, channels in vector lanes
// (see xnor_gemm_avx2.h).
#include "custom_ops/core/xnor_gemm_avx2.h"
#include "custom_ops/core/xnor_gemm_tile_avx2.h"

namespace keras_xnor {
namespace internal {

void xnor_gemm_4x16_avx2(const std::uint32_t* const* pixel_rows, int kw,
                         const std::uint32_t* weights, std::int32_t* pops) {
  gemm_tile_4x16(pixel_rows, kw, weights, pops);
}

void xnor_gemm_4x16_rows_avx2(const std::uint32_t* rows, std::int64_t stride, int quads, int kw,
                              const std::uint32_t* weights, std::int32_t* pops) {
  for (int q = 0; q < quads; ++q) {
    const std::uint32_t* base = rows + 4 * q * stride;
    const std::uint32_t* pixel_rows[4] = {base, base + stride, base + 2 * stride, base + 3 * stride};
    gemm_tile_4x16(pixel_rows, kw, weights, pops + q * 64);
  }
}

}  // namespace internal
}  // namespace keras_xnor
