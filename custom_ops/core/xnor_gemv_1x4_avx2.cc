// 1 row x 4 units AVX2 binary GEMV microkernel for the dense layer at small batch: the four
// weight rows stream once through 256-bit loads against one packed input row (memory bound;
// no im2col, no transposes). See xnor_gemm_avx2.h for the declaration.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "custom_ops/core/xnor_gemm_avx2.h"

namespace keras_xnor {
namespace internal {

void xnor_gemv_1x4_avx2(const std::uint32_t* x, int words, const std::uint32_t* const* weights,
                        std::int32_t* pops) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                       2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  const std::uint32_t *w0 = weights[0], *w1 = weights[1], *w2 = weights[2], *w3 = weights[3];
  __m256i s0 = zero, s1 = zero, s2 = zero, s3 = zero;  // 64-bit lane sums
  const int vectors = words / 8;
  auto pop_bytes = [&](__m256i v) {
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
  };
  for (int v0 = 0; v0 < vectors; v0 += 31) {
    const int v1 = std::min(vectors, v0 + 31);
    __m256i c0 = zero, c1 = zero, c2 = zero, c3 = zero;
    for (int v = v0; v < v1; ++v) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + v * 8));
      c0 = _mm256_add_epi8(c0, pop_bytes(_mm256_xor_si256(
                                   xv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + v * 8)))));
      c1 = _mm256_add_epi8(c1, pop_bytes(_mm256_xor_si256(
                                   xv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1 + v * 8)))));
      c2 = _mm256_add_epi8(c2, pop_bytes(_mm256_xor_si256(
                                   xv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w2 + v * 8)))));
      c3 = _mm256_add_epi8(c3, pop_bytes(_mm256_xor_si256(
                                   xv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w3 + v * 8)))));
    }
    s0 = _mm256_add_epi64(s0, _mm256_sad_epu8(c0, zero));
    s1 = _mm256_add_epi64(s1, _mm256_sad_epu8(c1, zero));
    s2 = _mm256_add_epi64(s2, _mm256_sad_epu8(c2, zero));
    s3 = _mm256_add_epi64(s3, _mm256_sad_epu8(c3, zero));
  }
  // Horizontal sums of the four 64-bit-lane vectors, then the scalar tail words.
  const __m256i s01 = _mm256_add_epi64(_mm256_unpacklo_epi64(s0, s1), _mm256_unpackhi_epi64(s0, s1));
  const __m256i s23 = _mm256_add_epi64(_mm256_unpacklo_epi64(s2, s3), _mm256_unpackhi_epi64(s2, s3));
  const __m256i t = _mm256_add_epi64(_mm256_permute2x128_si256(s01, s23, 0x20),
                                     _mm256_permute2x128_si256(s01, s23, 0x31));
  alignas(32) std::int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), t);
  std::int64_t p[4] = {lanes[0], lanes[1], lanes[2], lanes[3]};
  for (int q = vectors * 8; q < words; ++q) {
    p[0] += _mm_popcnt_u32(x[q] ^ w0[q]);
    p[1] += _mm_popcnt_u32(x[q] ^ w1[q]);
    p[2] += _mm_popcnt_u32(x[q] ^ w2[q]);
    p[3] += _mm_popcnt_u32(x[q] ^ w3[q]);
  }
  for (int j = 0; j < 4; ++j) pops[j] = static_cast<std::int32_t>(p[j]);
}

}  // namespace internal
}  // namespace keras_xnor
