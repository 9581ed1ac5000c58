// 16 pixels x 4 output channels AVX2 binary GEMM microkernel (see xnor_gemm_avx2.h).
#include "custom_ops/core/xnor_gemm_avx2.h"
#include "custom_ops/core/xnor_gemm_tile_avx2.h"

namespace keras_xnor {
namespace internal {

void xnor_gemm_16x4_avx2(const std::uint32_t* patches, int kw,
                         const std::uint32_t* const* weights, std::int32_t* pops) {
  gemm_tile_16x4(patches, kw, weights, pops);
}

}  // namespace internal
}  // namespace keras_xnor
