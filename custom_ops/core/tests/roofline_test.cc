// keras_xnor_popcount_roofline / keras_xnor_core_kernel_path: the C entry points the Python
// benchmarks load through ctypes.
#include <cstdio>
#include <cstring>
#include <string>

#include "custom_ops/core/roofline.h"
#include "custom_ops/core/tests/harness.h"
#include "custom_ops/core/xnor_conv2d.h"

int main() {
  const std::string path = keras_xnor_core_kernel_path();
  KX_CHECK(path == keras_xnor::auto_kernel_path_name(), "kernel path %s", path.c_str());
  const double one = keras_xnor_popcount_roofline(1, 0.02);
  const double two = keras_xnor_popcount_roofline(2, 0.02);
  // Any real CPU does well over 1 G bit-MACs/s per thread; the value is a rate, not a time.
  KX_CHECK(one > 1e9 && two > 1e9, "roofline %g %g", one, two);
  KX_CHECK(keras_xnor_popcount_roofline(0, 0.0) > 0.0, "threads < 1 are treated as 1");
  if (keras_xnor::kernel_path_available(keras_xnor::KernelPath::kAvx2)) {
    // The channel-pair mix does real work: its recovered counts are the plain popcounts.
    KX_CHECK(keras_xnor::internal::roofline_dual_mix_matches_popcounts(),
             "channel-pair roofline mix counts");
  }
  if (keras_xnor::internal::popcount_avx512_available()) {
    // So does the AVX-512 mix, and it runs at a real rate.
    KX_CHECK(keras_xnor::internal::roofline_vpopcnt_mix_matches_popcounts(),
             "AVX-512 roofline mix counts");
    unsigned long long sink = 0;
    const double bit_macs = keras_xnor::internal::roofline_loop_avx512_vpopcnt(200, &sink);
    KX_CHECK(bit_macs == 2.0 * 192 * 512, "AVX-512 mix work %g (two passes)", bit_macs);
  } else {
    std::printf("roofline_test: no AVX-512 VPOPCNTDQ here, its mix not run\n");
  }
  return keras_xnor::testing::finish("roofline_test");
}
