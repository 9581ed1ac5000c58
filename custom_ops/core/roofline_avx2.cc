// The AVX2 roofline loop: 2 x 3 register tile of XOR + vpshufb nibble popcount + byte
// accumulate, the inner loop of the GEMM microkernels without their loads.
#include <immintrin.h>

#include <cstdint>

#include "custom_ops/core/roofline.h"

namespace keras_xnor {
namespace internal {

double roofline_loop_avx2(long long iterations, unsigned long long* sink) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                       2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  __m256i a0 = _mm256_set1_epi32(0x12345678), a1 = _mm256_set1_epi32(0x0f1e2d3c);
  __m256i w0 = _mm256_set1_epi32(0x7a6b5c4d), w1 = _mm256_set1_epi32(0x01234567);
  __m256i w2 = _mm256_set1_epi32(0x76543210);
  __m256i total = _mm256_setzero_si256();
  long long done = 0;
  while (done < iterations) {
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00;
    // 31 steps keep each byte accumulator <= 31 * 8 = 248.
    for (int i = 0; i < 31; ++i) {
      // Tell the compiler the operands change every step (no instruction is emitted), so it
      // cannot hoist the XORs and popcounts out of the loop.
      __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(w0), "+x"(w1), "+x"(w2));
#define KX_STEP(acc, a, w)                                                                \
  {                                                                                        \
    const __m256i x = _mm256_xor_si256(a, w);                                             \
    const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low));                \
    const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low)); \
    acc = _mm256_add_epi8(acc, _mm256_add_epi8(lo, hi));                                   \
  }
      KX_STEP(c00, a0, w0) KX_STEP(c01, a0, w1) KX_STEP(c02, a0, w2)
      KX_STEP(c10, a1, w0) KX_STEP(c11, a1, w1) KX_STEP(c12, a1, w2)
#undef KX_STEP
    }
    const __m256i zero = _mm256_setzero_si256();
    __m256i s = _mm256_sad_epu8(c00, zero);
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c01, zero));
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c02, zero));
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c10, zero));
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c11, zero));
    s = _mm256_add_epi64(s, _mm256_sad_epu8(c12, zero));
    total = _mm256_add_epi64(total, s);
    done += 31;
  }
  alignas(32) unsigned long long lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), total);
  *sink += lanes[0] + lanes[1] + lanes[2] + lanes[3];
  return static_cast<double>(done) * 6.0 * 256.0;
}

}  // namespace internal
}  // namespace keras_xnor
