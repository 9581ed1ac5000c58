// pack_filter (filter_pack.h): a [taps, in_c, out_c] float filter packed into
// [out_c, taps, packed_words(in_c)] equals pack_bits of the transposed filter, bit for bit, for
// channel counts around the word size, zeros of both signs, and any split of the work; its
// mean_abs is mean |w| per output filter (eq. 6's alpha).
#include <cmath>
#include <cstdint>
#include <vector>

#include "custom_ops/core/bitpack.h"
#include "custom_ops/core/filter_pack.h"
#include "custom_ops/core/spec.h"
#include "custom_ops/core/tests/harness.h"

namespace keras_xnor {
namespace testing {
namespace {

void check_shape(Rng& rng, int taps, int in_c, int out_c, const ParallelFor& parallel_for) {
  std::vector<float> filter(static_cast<std::size_t>(taps) * in_c * out_c);
  fill_inputs(rng, &filter);
  // The transposed copy [out_c, taps, in_c] and its row packing: the oracle.
  std::vector<float> transposed(filter.size());
  for (int t = 0; t < taps; ++t) {
    for (int c = 0; c < in_c; ++c) {
      for (int o = 0; o < out_c; ++o) {
        transposed[(static_cast<std::size_t>(o) * taps + t) * in_c + c] =
            filter[(static_cast<std::size_t>(t) * in_c + c) * out_c + o];
      }
    }
  }
  const std::size_t words = static_cast<std::size_t>(out_c) * taps * packed_words(in_c);
  std::vector<PackedWord> want(words), got(words, 0x5a5a5a5a);
  pack_bits(transposed.data(), static_cast<std::int64_t>(out_c) * taps, in_c, want.data());
  std::vector<float> mean_abs(out_c, -1.0f);
  pack_filter(filter.data(), taps, in_c, out_c, got.data(), mean_abs.data(), parallel_for);
  for (int o = 0; o < out_c; ++o) {
    double sum = 0.0;
    for (int i = 0; i < taps * in_c; ++i) sum += std::fabs(transposed[o * taps * in_c + i]);
    const double want_mean = sum / (taps * in_c);
    KX_CHECK(std::fabs(mean_abs[o] - want_mean) <= 1e-6 * want_mean + 1e-30,
             "mean_abs[%d] %g want %g (taps %d in_c %d)", o, mean_abs[o], want_mean, taps, in_c);
  }
  std::vector<PackedWord> no_mean(words);
  pack_filter(filter.data(), taps, in_c, out_c, no_mean.data(), nullptr, parallel_for);
  KX_CHECK(no_mean == got, "packing differs with mean_abs == nullptr");
  int mismatches = 0;
  for (std::size_t i = 0; i < words; ++i) mismatches += got[i] != want[i];
  KX_CHECK(mismatches == 0, "taps %d in_c %d out_c %d: %d of %zu words differ", taps, in_c,
           out_c, mismatches, words);
}

void test_shapes() {
  Rng rng(11);
  const int channels[] = {1, 5, 31, 32, 33, 64, 65, 100};
  const int taps[] = {1, 2, 9, 25};
  const int outs[] = {1, 3, 16, 17, 40};
  for (int in_c : channels) {
    for (int t : taps) {
      for (int o : outs) {
        check_shape(rng, t, in_c, o, serial_for);
        check_shape(rng, t, in_c, o, odd_split_for);
        check_shape(rng, t, in_c, o, thread_for(3));
      }
    }
  }
}

}  // namespace
}  // namespace testing
}  // namespace keras_xnor

int main() {
  keras_xnor::testing::test_shapes();
  return keras_xnor::testing::finish("filter_pack_test");
}
