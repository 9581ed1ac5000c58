// The AVX-512 roofline mix: XOR + VPOPCNTD + add on 512-bit vectors (AVX512F +
// AVX512_VPOPCNTDQ), the instruction mix a binary GEMM tile would issue on such a CPU: 16
// output channels of 32-bit packed words per vector, weights loaded from an L1-resident block,
// each pixel's input word broadcast to every lane. Tile: 6 pixels x 4 weight vectors (64
// channels), 24 accumulators + 4 weights of the 32 zmm registers, so nothing is spilled.
// Per step, 24 x (XOR + popcount + add) = 24 x 512 bit-MACs.
//
// On the Zen 4 VM (2026-11-24) it runs at ~1245 G bit-MACs/s per core against ~1085 for the
// best AVX2 mix (the channel-pair table mix): 72 zmm ops per step, i.e. 144 256-bit micro-ops,
// keep Zen 4's four vector pipes busy. So it sets the roofline there, and %roof is against
// it (docs/SPEED.md, "Zen 4"). Only called after popcount_avx512_available() (roofline.cc)
// returned true.
#include <immintrin.h>

#include <cstdint>

#include "custom_ops/core/roofline.h"

namespace keras_xnor {
namespace internal {
namespace {

constexpr int kPixels = 6;
constexpr int kWeightVectors = 4;
constexpr int kSteps = 8;  // weights: 8 steps x 4 vectors x 64 bytes = 2 KB, L1-resident

struct VpopcntOperands {
  alignas(64) std::uint32_t weights[kSteps][kWeightVectors][16];
  alignas(64) std::uint32_t inputs[kSteps][kPixels];
};

const VpopcntOperands& vpopcnt_operands() {
  static const VpopcntOperands ops = [] {
    VpopcntOperands o{};
    std::uint32_t x = 0x9e3779b9u;  // xorshift: arbitrary bits, fixed
    auto next = [&x] {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      return x;
    };
    for (auto& step : o.weights) {
      for (auto& vec : step) {
        for (auto& word : vec) word = next();
      }
    }
    for (auto& step : o.inputs) {
      for (auto& word : step) word = next();
    }
    return o;
  }();
  return ops;
}

// One pixel of a step: its input word broadcast against the 4 weight vectors.
#define KX_RL512_PIXEL(p)                                                          \
  {                                                                                \
    const __m512i a = _mm512_set1_epi32(static_cast<int>(in[p]));                  \
    c##p##0 = _mm512_add_epi32(c##p##0, _mm512_popcnt_epi32(_mm512_xor_si512(a, w0))); \
    c##p##1 = _mm512_add_epi32(c##p##1, _mm512_popcnt_epi32(_mm512_xor_si512(a, w1))); \
    c##p##2 = _mm512_add_epi32(c##p##2, _mm512_popcnt_epi32(_mm512_xor_si512(a, w2))); \
    c##p##3 = _mm512_add_epi32(c##p##3, _mm512_popcnt_epi32(_mm512_xor_si512(a, w3))); \
  }

#define KX_RL512_ROW(p) __m512i c##p##0 = z, c##p##1 = z, c##p##2 = z, c##p##3 = z;

#define KX_RL512_STORE(p)                                   \
  _mm512_storeu_si512(counts + (4 * p + 0) * 16, c##p##0); \
  _mm512_storeu_si512(counts + (4 * p + 1) * 16, c##p##1); \
  _mm512_storeu_si512(counts + (4 * p + 2) * 16, c##p##2); \
  _mm512_storeu_si512(counts + (4 * p + 3) * 16, c##p##3);

// `passes` passes over the kSteps steps; counts[(4 * pixel + vector) * 16 + lane] gets the
// sum of popcount(input XOR weight) (mod 2^32).
void vpopcnt_passes(const VpopcntOperands& ops, long long passes, std::uint32_t* counts) {
  const __m512i z = _mm512_setzero_si512();
  KX_RL512_ROW(0) KX_RL512_ROW(1) KX_RL512_ROW(2) KX_RL512_ROW(3) KX_RL512_ROW(4)
  KX_RL512_ROW(5)
  for (long long pass = 0; pass < passes; ++pass) {
    for (int k = 0; k < kSteps; ++k) {
      const __m512i w0 = _mm512_load_si512(ops.weights[k][0]);
      const __m512i w1 = _mm512_load_si512(ops.weights[k][1]);
      const __m512i w2 = _mm512_load_si512(ops.weights[k][2]);
      const __m512i w3 = _mm512_load_si512(ops.weights[k][3]);
      const std::uint32_t* in = ops.inputs[k];
      KX_RL512_PIXEL(0) KX_RL512_PIXEL(1) KX_RL512_PIXEL(2) KX_RL512_PIXEL(3)
      KX_RL512_PIXEL(4) KX_RL512_PIXEL(5)
    }
    // Keeps the operands opaque, so the compiler cannot hoist the work out of the pass loop.
    __asm__ volatile("" : : "r"(&ops) : "memory");
  }
  KX_RL512_STORE(0) KX_RL512_STORE(1) KX_RL512_STORE(2) KX_RL512_STORE(3) KX_RL512_STORE(4)
  KX_RL512_STORE(5)
}

#undef KX_RL512_PIXEL
#undef KX_RL512_ROW
#undef KX_RL512_STORE

constexpr int kCounts = kPixels * kWeightVectors * 16;

}  // namespace

// An iteration is one XOR + popcount + add of a 512-bit vector (whole passes are run).
double roofline_loop_avx512_vpopcnt(long long iterations, unsigned long long* sink) {
  constexpr int kPerPass = kSteps * kPixels * kWeightVectors;
  const long long passes = (iterations + kPerPass - 1) / kPerPass;
  alignas(64) std::uint32_t counts[kCounts];
  vpopcnt_passes(vpopcnt_operands(), passes, counts);
  unsigned long long sum = 0;
  for (std::uint32_t c : counts) sum += c;
  *sink += sum;
  return static_cast<double>(passes) * kSteps * kPixels * kWeightVectors * 512.0;
}

bool roofline_vpopcnt_mix_matches_popcounts() {
  const VpopcntOperands& ops = vpopcnt_operands();
  alignas(64) std::uint32_t counts[kCounts];
  vpopcnt_passes(ops, 1, counts);
  for (int p = 0; p < kPixels; ++p) {
    for (int v = 0; v < kWeightVectors; ++v) {
      for (int lane = 0; lane < 16; ++lane) {
        std::uint32_t want = 0;
        for (int k = 0; k < kSteps; ++k) {
          want += __builtin_popcount(ops.inputs[k][p] ^ ops.weights[k][v][lane]);
        }
        if (counts[(4 * p + v) * 16 + lane] != want) return false;
      }
    }
  }
  return true;
}

}  // namespace internal
}  // namespace keras_xnor
