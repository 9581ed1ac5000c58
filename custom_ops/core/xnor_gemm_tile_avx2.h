// The register-tiled XOR + popcount loop shared by the xnor_gemm_*_avx2.cc microkernels.
// Include ONLY from *_avx2.cc files: it is compiled with AVX2 enabled, and its definitions are
// in an anonymous namespace so no AVX2 code can leak into a baseline translation unit through
// the linker's choice of an inline copy. See xnor_gemm_avx2.h for the layouts.
#ifndef KERAS_XNOR_CORE_XNOR_GEMM_TILE_AVX2_H_
#define KERAS_XNOR_CORE_XNOR_GEMM_TILE_AVX2_H_

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace keras_xnor {
namespace internal {
namespace {

template <int MV, int NR, bool kMasked>
inline void gemm_tile_avx2(const std::uint32_t* patches, const std::uint32_t* masks, int kw,
                           const std::uint32_t* const* weights, std::int32_t* pops) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                       2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const std::uint32_t* w[NR];
  for (int j = 0; j < NR; ++j) w[j] = weights[j];
  for (int k0 = 0; k0 < kw; k0 += 31) {
    const int k1 = std::min(kw, k0 + 31);
    __m256i acc[MV][NR];
    for (int v = 0; v < MV; ++v)
      for (int j = 0; j < NR; ++j) acc[v][j] = _mm256_setzero_si256();
    for (int k = k0; k < k1; ++k) {
      __m256i a[MV];
      for (int v = 0; v < MV; ++v) {
        a[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(patches + k * 16 + v * 8));
      }
      for (int j = 0; j < NR; ++j) {
        const __m256i wj = _mm256_set1_epi32(static_cast<int>(w[j][k]));
        for (int v = 0; v < MV; ++v) {
          __m256i x = _mm256_xor_si256(a[v], wj);
          if (kMasked) {
            x = _mm256_and_si256(
                x, _mm256_load_si256(reinterpret_cast<const __m256i*>(masks + k * 16 + v * 8)));
          }
          const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low));
          const __m256i hi =
              _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
          acc[v][j] = _mm256_add_epi8(acc[v][j], _mm256_add_epi8(lo, hi));
        }
      }
    }
    // Widen bytes to int32 lanes: (b0+b1) + (b2+b3) per lane.
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (int j = 0; j < NR; ++j) {
      for (int v = 0; v < MV; ++v) {
        const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(acc[v][j], ones8), ones16);
        __m256i* dst = reinterpret_cast<__m256i*>(pops + j * 16 + v * 8);
        _mm256_store_si256(dst, k0 == 0 ? s : _mm256_add_epi32(_mm256_load_si256(dst), s));
      }
    }
  }
  if (kw == 0) {
    for (int j = 0; j < NR; ++j)
      for (int v = 0; v < MV; ++v)
        _mm256_store_si256(reinterpret_cast<__m256i*>(pops + j * 16 + v * 8), _mm256_setzero_si256());
  }
}

}  // namespace
}  // namespace internal
}  // namespace keras_xnor

#endif  // KERAS_XNOR_CORE_XNOR_GEMM_TILE_AVX2_H_
