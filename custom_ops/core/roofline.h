// Popcount roofline: the best sustained rate of binary multiply-accumulates (bit-MACs; one
// XOR + popcount of one bit pair = 1 op) that this CPU reaches with the same instruction mix
// as the binary GEMM microkernels, operands in registers, no memory traffic. Benchmarks divide
// a kernel's measured rate by it ("% of roofline"), measured in the same run on the same
// machine, so clock and noisy neighbours affect both alike.
//
// AVX2 CPUs: 256-bit XOR, nibble-LUT popcount (vpshufb), byte accumulators (the kernels' loop),
// the best of a register-only 2x3 tile, the pixel-lane microkernels' 2x4 broadcast tile, and
// the channel-lane microkernel's 2x4 broadcast tile on nibble-planar operands (each byte holds
// 4 data bits, so a step is XOR + vpshufb + add: 6 vector ops per 256 data bits instead of 8;
// ~1.4x the bit-MACs per cycle on Zen 3). Rates count data bits (bit-MACs), not register bits,
// so all variants measure the same thing; the planar loop does not include the one-off cost
// of making the planes (one pass per operand, paid by the driver, not per pair). A fourth
// variant adds two scalar 64-bit XOR + POPCNT + ADD chains per planar step on the integer ALUs
// the vector loop leaves idle: 5-10% more on Zen 3 (measured; 4 chains is no better, dispatch-
// bound). A fifth is the former one-pixel channel-lane TABLE tile's mix: per pixel and
// step, a 16-bit table offset load, a 32-byte popcount-table load, and one vpshufb (the weight
// nibbles as indices) + byte add per 32 channels, i.e. 2 vector ALU ops per 128 bit-MACs; on
// Zen 3 it is ~645 G/s per core against ~550 for the planar mixes. A sixth is the PAIR table
// tile's (gemm_tile_pair_x64, run as is): one vpshufb serves two output pixels (their counts
// in the two nibbles of each byte), ~935-950 G/s per core on Zen 3. A seventh runs the same
// lookup over 128 channels per slot (gemm_seg_pair_x128, the kernel's tile for more than 64
// output channels, as is), with half the table loads per vpshufb. An eighth is the same
// table lookup with input and weights swapped (roofline_avx2.cc, "CHANNEL-PAIR"): a table per
// two output channels, 32 pixels' input nibbles as the indices; ~1000 G/s per core on Zen 3,
// where it set the roofline before the seventh existed; no kernel issues it. On CPUs with
// AVX512F + AVX512_VPOPCNTDQ a ninth mix joins them (roofline_avx512.cc): 512-bit XOR +
// VPOPCNTD + add, 6 pixels x 64 channels; on Zen 4 it is ~15% above the table mixes, so it
// sets the roofline there.
// Otherwise: 64-bit XOR + scalar popcount.
//
// This is the only code in the core that creates threads: it measures the machine, not a
// kernel call, so it cannot use a caller's ParallelFor, and it must pin one busy loop per
// thread for the whole measurement. Exported with C linkage so Python benchmarks can call it
// through ctypes from the delegate library without TensorFlow.
#ifndef KERAS_XNOR_CORE_ROOFLINE_H_
#define KERAS_XNOR_CORE_ROOFLINE_H_

extern "C" {

// Runs the loop on `num_threads` threads (>= 1) for at least `min_seconds` in total and
// returns the best observed bit-MACs per second summed over the threads.
__attribute__((visibility("default"))) double keras_xnor_popcount_roofline(int num_threads,
                                                                          double min_seconds);

// auto_kernel_path_name(): "avx2+avx512", "avx2" or "portable".
__attribute__((visibility("default"))) const char* keras_xnor_core_kernel_path();

}  // extern "C"

namespace keras_xnor {
namespace internal {

// One thread's loop: runs `iterations` steps and returns the bit-MACs done; `sink` defeats
// dead-code elimination.
double roofline_loop_avx2_registers(long long iterations, unsigned long long* sink);
double roofline_loop_avx2_broadcast(long long iterations, unsigned long long* sink);
double roofline_loop_avx2_planar(long long iterations, unsigned long long* sink);
double roofline_loop_avx2_planar_mixed(long long iterations, unsigned long long* sink);
double roofline_loop_avx2_table(long long iterations, unsigned long long* sink);
double roofline_loop_avx2_pair(long long iterations, unsigned long long* sink);
double roofline_loop_avx2_pair128(long long iterations, unsigned long long* sink);
double roofline_loop_avx2_dual(long long iterations, unsigned long long* sink);
double roofline_loop_scalar(long long iterations, unsigned long long* sink);
// Only after popcount_avx512_available() returned true. An iteration is one 512-bit vector
// step (the loop runs whole passes of 192 of them).
double roofline_loop_avx512_vpopcnt(long long iterations, unsigned long long* sink);

// True when this CPU and OS run AVX512F + AVX512_VPOPCNTDQ (the ninth mix, and the VPOPCNTD
// conv driver) and the environment variable KERAS_XNOR_AVX512 is not "0" (read once).
bool popcount_avx512_available();

// One pass of the channel-pair mix, its counts checked against plain popcounts (tests).
bool roofline_dual_mix_matches_popcounts();
// One pass of the AVX-512 mix, its counts checked against plain popcounts (tests; only after
// popcount_avx512_available()).
bool roofline_vpopcnt_mix_matches_popcounts();

}  // namespace internal
}  // namespace keras_xnor

#endif  // KERAS_XNOR_CORE_ROOFLINE_H_
