// pack_bits / unpack_bits: bit convention of spec.h (LSB first, set bit = -1, sign(0) = +1,
// padding bits 0), round trips, any channel count, any split of the rows.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "custom_ops/core/bitpack.h"
#include "custom_ops/core/spec.h"
#include "custom_ops/core/tests/harness.h"
#include "custom_ops/core/xnor_conv2d.h"
#include "custom_ops/core/xnor_kernels.h"

namespace keras_xnor {
namespace testing {
namespace {

void test_known_words() {
  // channel c -> bit c % 32 of word c / 32, set bit = negative.
  std::vector<float> x(40, 1.0f);
  x[0] = -1.0f;
  x[3] = -0.5f;
  x[31] = -2.0f;
  x[33] = -3.0f;
  x[5] = 0.0f;
  x[6] = -0.0f;
  x[7] = std::numeric_limits<float>::quiet_NaN();
  x[8] = -std::numeric_limits<float>::denorm_min();
  x[9] = -std::numeric_limits<float>::infinity();
  std::vector<PackedWord> out(2, 12345);
  pack_bits(x.data(), 1, 40, out.data());
  const std::uint32_t w0 = (1u << 0) | (1u << 3) | (1u << 31) | (1u << 8) | (1u << 9);
  const std::uint32_t w1 = 1u << 1;
  KX_CHECK(static_cast<std::uint32_t>(out[0]) == w0, "word0 %08x want %08x", out[0], w0);
  KX_CHECK(static_cast<std::uint32_t>(out[1]) == w1, "word1 %08x want %08x", out[1], w1);
  KX_CHECK(packed_words(1) == 1 && packed_words(32) == 1 && packed_words(33) == 2 &&
               packed_words(64) == 2 && packed_words(65) == 3,
           "packed_words");
}

void test_round_trip(Rng& rng) {
  for (int channels = 1; channels <= 300; ++channels) {
    const int rows = uniform_int(rng, 1, 7);
    std::vector<float> x(static_cast<std::size_t>(rows) * channels);
    fill_inputs(rng, &x);
    const int words = packed_words(channels);
    // Guard words after the output catch over-writes.
    std::vector<PackedWord> packed(static_cast<std::size_t>(rows) * words + 4, 0x5a5a5a5a);
    std::vector<PackedWord> packed2(packed.size(), 0x5a5a5a5a);
    pack_bits(x.data(), rows, channels, packed.data());
    pack_bits(x.data(), rows, channels, packed2.data(), odd_split_for);
    KX_CHECK(std::memcmp(packed.data(), packed2.data(), packed.size() * sizeof(PackedWord)) == 0,
             "split changes pack_bits, channels=%d", channels);
    // Both implementations behind pack_bits (and their mean |x|) agree exactly on the bits.
    std::vector<PackedWord> portable(packed.size(), 0x5a5a5a5a);
    std::vector<float> mean_p(rows), mean_a(rows);
    internal::pack_rows_portable(x.data(), rows, channels, portable.data(), mean_p.data(), serial_for);
    KX_CHECK(std::memcmp(packed.data(), portable.data(), packed.size() * sizeof(PackedWord)) == 0,
             "portable packing differs, channels=%d", channels);
    if (kernel_path_available(KernelPath::kAvx2)) {
      std::vector<PackedWord> avx2(packed.size(), 0x5a5a5a5a);
      internal::pack_rows_avx2(x.data(), rows, channels, avx2.data(), mean_a.data(), odd_split_for);
      KX_CHECK(std::memcmp(packed.data(), avx2.data(), packed.size() * sizeof(PackedWord)) == 0,
               "AVX2 packing differs, channels=%d", channels);
      for (int r = 0; r < rows; ++r) {
        KX_CHECK(std::fabs(mean_a[r] - mean_p[r]) <= 1e-5f * (1.0f + mean_p[r]),
                 "mean |x| differs: %g vs %g", mean_a[r], mean_p[r]);
      }
    }
    for (int r = 0; r < rows; ++r) {
      double sum = 0.0;
      for (int c = 0; c < channels; ++c) sum += std::fabs(x[static_cast<std::size_t>(r) * channels + c]);
      KX_CHECK(std::fabs(mean_p[r] - sum / channels) <= 1e-5 * (1.0 + sum / channels),
               "portable mean |x| %g want %g", mean_p[r], sum / channels);
    }
    for (int g = 0; g < 4; ++g) {
      KX_CHECK(packed[packed.size() - 1 - g] == 0x5a5a5a5a, "pack_bits wrote past the end");
    }
    for (int r = 0; r < rows; ++r) {
      const std::uint32_t last = static_cast<std::uint32_t>(packed[r * words + words - 1]);
      const int used = channels - (words - 1) * kBitsPerWord;
      if (used < 32) KX_CHECK((last >> used) == 0, "padding bits not 0, channels=%d", channels);
    }
    KX_CHECK(first_row_with_padding_bits(packed.data(), rows, channels) == -1,
             "pack_bits output flagged for padding bits, channels=%d", channels);
    std::vector<float> back(x.size() + 1, 7.0f);
    unpack_bits(packed.data(), rows, channels, back.data());
    KX_CHECK(back.back() == 7.0f, "unpack_bits wrote past the end");
    for (std::size_t i = 0; i < x.size(); ++i) {
      const float want = x[i] < 0.0f ? -1.0f : 1.0f;
      KX_CHECK(back[i] == want, "round trip channels=%d i=%zu x=%g got %g", channels, i, x[i],
               back[i]);
    }
  }
}

// Only bits past the last channel of a row's last word count; the first such row is named.
void test_padding_bit_check() {
  std::vector<PackedWord> rows(3 * 2, 0);
  KX_CHECK(first_row_with_padding_bits(rows.data(), 3, 40) == -1, "clean rows flagged");
  rows[2] = -1;  // row 1, word 0: channel bits only
  rows[3] = 0xff;  // row 1, word 1: channels 32..39
  KX_CHECK(first_row_with_padding_bits(rows.data(), 3, 40) == -1, "channel bits flagged");
  rows[5] = 1 << 8;  // row 2: channel 40 does not exist
  KX_CHECK(first_row_with_padding_bits(rows.data(), 3, 40) == 2, "row 2 not found");
  rows[3] = static_cast<PackedWord>(0x80000000u);
  KX_CHECK(first_row_with_padding_bits(rows.data(), 3, 40) == 1, "the first row not named");
  KX_CHECK(first_row_with_padding_bits(rows.data(), 3, 64) == -1, "64 channels have no padding");
  KX_CHECK(first_row_with_padding_bits(rows.data(), 0, 40) == -1, "no rows");
}

}  // namespace
}  // namespace testing
}  // namespace keras_xnor

int main() {
  keras_xnor::testing::Rng rng(1234);
  keras_xnor::testing::test_known_words();
  keras_xnor::testing::test_round_trip(rng);
  keras_xnor::testing::test_padding_bit_check();
  return keras_xnor::testing::finish("bitpack_test");
}
