// xnor_conv2d / xnor_dense against a naive float +-1 convolution computed here, directly from
// the definition in xnor_conv2d.h (sum of sign(x) * sign(w) over valid taps; K by explicit
// loops), for every kernel path this CPU runs, over a seeded random sweep of shapes that break
// naive code; plus split/thread invariance and shape validation messages.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "custom_ops/core/bitpack.h"
#include "custom_ops/core/roofline.h"
#include "custom_ops/core/tests/harness.h"
#include "custom_ops/core/xnor_conv2d.h"
#include "custom_ops/core/xnor_kernels.h"

namespace keras_xnor {
namespace testing {
namespace {

int sgn(float x) { return x < 0.0f ? -1 : 1; }

const char* path_name(KernelPath p) {
  switch (p) {
    case KernelPath::kAuto: return "auto";
    case KernelPath::kReference: return "reference";
    case KernelPath::kPortable: return "portable";
    case KernelPath::kAvx2: return "avx2";
  }
  return "?";
}

std::vector<KernelPath> available_paths() {
  std::vector<KernelPath> paths;
  for (KernelPath p : {KernelPath::kReference, KernelPath::kPortable, KernelPath::kAvx2,
                       KernelPath::kAuto}) {
    if (kernel_path_available(p)) paths.push_back(p);
  }
  return paths;
}

std::string describe(const Conv2DShape& s) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "N=%d in=%dx%dx%d out_c=%d k=%dx%d s=%dx%d d=%dx%d %s -> %dx%d pad=%d,%d", s.batch,
                s.in_h, s.in_w, s.in_c, s.out_c, s.k_h, s.k_w, s.stride_h, s.stride_w,
                s.dilation_h, s.dilation_w, s.padding == Padding::kSame ? "SAME" : "VALID",
                s.out_h, s.out_w, s.pad_top, s.pad_left);
  return buf;
}

struct Problem {
  Conv2DShape s;
  std::vector<float> input, weights;  // weights OHWI float
  std::vector<PackedWord> filter;      // OHWI packed
  std::vector<float> alpha, bias;
  std::vector<std::int64_t> dot;       // naive [N,OH,OW,OC]
  std::vector<double> k;               // naive [N,OH,OW]
};

void make_problem(Rng& rng, Problem* p) {
  const Conv2DShape& s = p->s;
  p->input.resize(static_cast<std::size_t>(s.batch) * s.in_h * s.in_w * s.in_c);
  p->weights.resize(static_cast<std::size_t>(s.out_c) * s.k_h * s.k_w * s.in_c);
  fill_inputs(rng, &p->input);
  fill_inputs(rng, &p->weights);
  const int words = packed_words(s.in_c);
  p->filter.assign(static_cast<std::size_t>(s.out_c) * s.k_h * s.k_w * words, 0);
  pack_bits(p->weights.data(), static_cast<std::int64_t>(s.out_c) * s.k_h * s.k_w, s.in_c,
            p->filter.data());
  std::uniform_real_distribution<float> ua(0.05f, 2.0f), ub(-3.0f, 3.0f);
  p->alpha.resize(s.out_c);
  p->bias.resize(s.out_c);
  for (int c = 0; c < s.out_c; ++c) {
    p->alpha[c] = ua(rng);
    p->bias[c] = ub(rng);
  }
  // Naive +-1 convolution and K, straight from the definition.
  const std::int64_t outs = static_cast<std::int64_t>(s.batch) * s.out_h * s.out_w;
  p->dot.assign(static_cast<std::size_t>(outs) * s.out_c, 0);
  p->k.assign(static_cast<std::size_t>(outs), 0.0);
  for (int n = 0; n < s.batch; ++n)
    for (int oh = 0; oh < s.out_h; ++oh)
      for (int ow = 0; ow < s.out_w; ++ow) {
        const std::int64_t o = (static_cast<std::int64_t>(n) * s.out_h + oh) * s.out_w + ow;
        double ksum = 0.0;
        for (int i = 0; i < s.k_h; ++i)
          for (int j = 0; j < s.k_w; ++j) {
            const int ih = oh * s.stride_h - s.pad_top + i * s.dilation_h;
            const int iw = ow * s.stride_w - s.pad_left + j * s.dilation_w;
            if (ih < 0 || ih >= s.in_h || iw < 0 || iw >= s.in_w) continue;  // contributes 0
            const float* x = &p->input[((static_cast<std::size_t>(n) * s.in_h + ih) * s.in_w + iw) * s.in_c];
            double abs_sum = 0.0;
            for (int c = 0; c < s.in_c; ++c) abs_sum += std::fabs(x[c]);
            ksum += abs_sum / s.in_c;
            for (int oc = 0; oc < s.out_c; ++oc) {
              const float* w = &p->weights[((static_cast<std::size_t>(oc) * s.k_h + i) * s.k_w + j) * s.in_c];
              std::int64_t d = 0;
              for (int c = 0; c < s.in_c; ++c) d += sgn(x[c]) * sgn(w[c]);
              p->dot[o * s.out_c + oc] += d;
            }
          }
        p->k[o] = ksum / (s.k_h * s.k_w);
      }
}

// Checks one path on one problem: exact dot, full output stage, and split invariance.
void check_problem(const Problem& p, KernelPath path, bool check_splits, Rng& rng) {
  const Conv2DShape& s = p.s;
  const std::size_t count = p.dot.size();
  std::vector<float> out(count + 8);
  const float kGuard = 12345.0f;
  // 1) dot exactly: alpha = 1, no bias, no K, no ReLU.
  std::vector<float> ones(s.out_c, 1.0f);
  std::fill(out.begin(), out.end(), kGuard);
  xnor_conv2d(s, p.input.data(), p.filter.data(), ones.data(), nullptr, false, false, out.data(),
              serial_for, path);
  int bad = 0;
  for (std::size_t i = 0; i < count && bad < 3; ++i) {
    if (out[i] != static_cast<float>(p.dot[i])) {
      ++bad;
      KX_CHECK(false, "[%s] %s: dot[%zu] = %g, want %lld", path_name(path), describe(s).c_str(),
               i, out[i], static_cast<long long>(p.dot[i]));
    }
  }
  for (int g = 0; g < 8; ++g) KX_CHECK(out[count + g] == kGuard, "[%s] wrote past the output", path_name(path));

  // 2) full output stage with K, alpha, bias (maybe null), ReLU.
  const bool use_k = uniform_int(rng, 0, 3) != 0;
  const bool relu = uniform_int(rng, 0, 1) != 0;
  const bool with_bias = uniform_int(rng, 0, 3) != 0;
  std::fill(out.begin(), out.end(), kGuard);
  xnor_conv2d(s, p.input.data(), p.filter.data(), p.alpha.data(), with_bias ? p.bias.data() : nullptr,
              use_k, relu, out.data(), serial_for, path);
  bad = 0;
  for (std::size_t i = 0; i < count && bad < 3; ++i) {
    const int oc = static_cast<int>(i % s.out_c);
    const double k = use_k ? p.k[i / s.out_c] : 1.0;
    const double scaled = static_cast<double>(p.dot[i]) * p.alpha[oc] * k;
    double want = scaled + (with_bias ? p.bias[oc] : 0.0);
    if (relu && want < 0.0) want = 0.0;
    const double tol = 2e-5 * (std::fabs(scaled) + std::fabs(with_bias ? p.bias[oc] : 0.0)) + 1e-6;
    if (!(std::fabs(out[i] - want) <= tol)) {
      ++bad;
      KX_CHECK(false, "[%s] %s use_k=%d relu=%d bias=%d: out[%zu] = %.9g, want %.9g",
               path_name(path), describe(s).c_str(), use_k, relu, with_bias, i, out[i], want);
    }
  }
  for (int g = 0; g < 8; ++g) KX_CHECK(out[count + g] == kGuard, "[%s] wrote past the output", path_name(path));
  if (!check_splits) return;

  // 3) any split, any thread count: bitwise identical.
  const ParallelFor splitters[] = {odd_split_for, two_piece_for, thread_for(2), thread_for(3)};
  int which = 0;
  for (const ParallelFor& pf : splitters) {
    std::vector<float> other(count + 8, kGuard);
    xnor_conv2d(s, p.input.data(), p.filter.data(), p.alpha.data(),
                with_bias ? p.bias.data() : nullptr, use_k, relu, other.data(), pf, path);
    KX_CHECK(std::memcmp(other.data(), out.data(), (count + 8) * sizeof(float)) == 0,
             "[%s] %s: splitter %d changes the result", path_name(path), describe(s).c_str(), which);
    ++which;
  }
}

// Both AVX2 drivers (pixel lanes, channel lanes) on this shape, whichever kAuto would pick:
// bitwise equal to each other (same K and output-stage arithmetic) and exact in the dot.
void check_avx2_drivers(const Problem& p) {
  const Conv2DShape& s = p.s;
  const std::size_t count = p.dot.size();
  std::vector<float> ones(s.out_c, 1.0f);
  std::vector<float> outs[2];
  const internal::Avx2Driver drivers[2] = {internal::Avx2Driver::kPixelLanes,
                                           internal::Avx2Driver::kChannelLanes};
  for (int d = 0; d < 2; ++d) {
    internal::ConvArgs a;
    a.shape = s;
    a.input = p.input.data();
    a.filter = p.filter.data();
    a.alpha = ones.data();
    a.output = nullptr;
    std::vector<float> out(count + 8, 777.0f);
    a.output = out.data();
    internal::conv2d_avx2_driver(a, two_piece_for, drivers[d]);
    for (std::size_t i = 0; i < count; ++i) {
      if (out[i] != static_cast<float>(p.dot[i])) {
        KX_CHECK(false, "[avx2 driver %d] %s: dot[%zu] = %g, want %lld", d, describe(s).c_str(), i,
                 out[i], static_cast<long long>(p.dot[i]));
        break;
      }
    }
    for (int g = 0; g < 8; ++g) KX_CHECK(out[count + g] == 777.0f, "[avx2 driver %d] wrote past the output", d);
    a.alpha = p.alpha.data();
    a.bias = p.bias.data();
    a.use_k = true;
    a.relu = true;
    internal::conv2d_avx2_driver(a, odd_split_for, drivers[d]);
    outs[d] = out;
  }
  KX_CHECK(std::memcmp(outs[0].data(), outs[1].data(), count * sizeof(float)) == 0,
           "%s: pixel-lane and channel-lane drivers differ", describe(s).c_str());
}

// A PreparedConv2DFilter gives bitwise the same output as the plain filter on every path
// (and through both AVX2 drivers), prepared with one split and used with another.
void check_prepared(const Problem& p) {
  const Conv2DShape& s = p.s;
  const std::size_t count = p.dot.size();
  const PreparedConv2DFilter prepared = prepare_conv2d_filter(s, p.filter.data(), odd_split_for);
  KX_CHECK(!prepared.empty() && prepared.matches(s), "%s: prepared filter does not match",
           describe(s).c_str());
  Conv2DShape other = s;
  other.out_c += 1;
  KX_CHECK(!prepared.matches(other) && !PreparedConv2DFilter().matches(s), "matches() too lax");
  for (KernelPath path : available_paths()) {
    std::vector<float> want(count + 8, 777.0f), got(count + 8, 777.0f);
    xnor_conv2d(s, p.input.data(), p.filter.data(), p.alpha.data(), p.bias.data(), true, true,
                want.data(), two_piece_for, path);
    xnor_conv2d(s, p.input.data(), prepared, p.alpha.data(), p.bias.data(), true, true,
                got.data(), thread_for(2), path);
    KX_CHECK(std::memcmp(want.data(), got.data(), (count + 8) * sizeof(float)) == 0,
             "[%s] %s: prepared filter changes the result", path_name(path), describe(s).c_str());
  }
  if (!kernel_path_available(KernelPath::kAvx2)) return;
  for (internal::Avx2Driver driver :
       {internal::Avx2Driver::kPixelLanes, internal::Avx2Driver::kChannelLanes}) {
    internal::ConvArgs a;
    a.shape = s;
    a.input = p.input.data();
    a.filter = p.filter.data();
    a.alpha = p.alpha.data();
    a.use_k = true;
    std::vector<float> want(count + 8, 777.0f), got(count + 8, 777.0f);
    a.output = want.data();
    internal::conv2d_avx2_driver(a, serial_for, driver);
    a.filter = prepared.data->packed.data();
    a.lanes_filter = prepared.data->lanes_filter;
    a.lanes_tap_pop = prepared.data->lanes_tap_pop;
    a.output = got.data();
    internal::conv2d_avx2_driver(a, odd_split_for, driver);
    KX_CHECK(std::memcmp(want.data(), got.data(), (count + 8) * sizeof(float)) == 0,
             "[avx2 driver %d] %s: prepared filter changes the result", static_cast<int>(driver),
             describe(s).c_str());
    if (driver != internal::Avx2Driver::kChannelLanes) continue;
    // The channel-lane table tile (prepared nibble filter, or made per call) against the
    // planar tile, with and without bias / K / ReLU. Where the table tile cannot run (too
    // deep a receptive field for its uint16 sums) both runs take the planar tile.
    for (int variant = 0; variant < 3; ++variant) {
      const bool per_call = variant == 1;
      a.nibble_filter = per_call ? nullptr : prepared.data->nibble_filter;
      a.nibble_tap_pop = per_call ? nullptr : prepared.data->nibble_tap_pop;
      a.lanes_filter = per_call ? nullptr : prepared.data->lanes_filter;
      a.lanes_tap_pop = per_call ? nullptr : prepared.data->lanes_tap_pop;
      a.filter = per_call ? p.filter.data() : prepared.data->packed.data();
      a.use_k = variant != 2;
      a.relu = variant == 2;
      a.bias = variant == 2 ? p.bias.data() : nullptr;
      std::vector<float> ref(count + 8, 777.0f), table(count + 8, 777.0f);
      internal::ConvArgs plain = a;
      plain.nibble_filter = nullptr;
      plain.nibble_tap_pop = nullptr;
      plain.lanes_filter = nullptr;
      plain.lanes_tap_pop = nullptr;
      plain.filter = p.filter.data();
      plain.planar_tile = true;
      plain.output = ref.data();
      internal::conv2d_avx2_driver(plain, serial_for, driver);
      a.output = table.data();
      internal::conv2d_avx2_driver(a, variant == 0 ? odd_split_for : thread_for(2), driver);
      KX_CHECK(std::memcmp(ref.data(), table.data(), (count + 8) * sizeof(float)) == 0,
               "[table tile, variant %d] %s: differs from the planar tile", variant,
               describe(s).c_str());
    }
  }
}

// The AVX-512 VPOPCNTD driver (forced, whatever kAuto would pick; only on CPUs with
// AVX512F + AVX512_VPOPCNTDQ): exact in the dot, never past the output, and bitwise equal to
// the AVX2 channel-lane driver's full output stage (K, alpha, bias or none, ReLU or none) under
// every splitter, with the plain filter, a prepared one, and the prepared one via kAuto.
void check_vpopcnt_driver(const Problem& p) {
  if (!internal::popcount_avx512_available()) return;
  const Conv2DShape& s = p.s;
  const std::size_t count = p.dot.size();
  const PreparedConv2DFilter prepared = prepare_conv2d_filter(s, p.filter.data(), two_piece_for);
  KX_CHECK(prepared.data->vpopcnt_filter != nullptr, "%s: no prepared VPOPCNTD layout",
           describe(s).c_str());
  std::vector<float> ones(s.out_c, 1.0f);
  internal::ConvArgs a;
  a.shape = s;
  a.input = p.input.data();
  a.filter = p.filter.data();
  a.alpha = ones.data();
  std::vector<float> out(count + 8, 777.0f);
  a.output = out.data();
  KX_CHECK(internal::conv2d_avx2_driver(a, serial_for, internal::Avx2Driver::kVpopcnt512),
           "vpopcnt driver failed");
  for (std::size_t i = 0; i < count; ++i) {
    if (out[i] != static_cast<float>(p.dot[i])) {
      KX_CHECK(false, "[vpopcnt512] %s: dot[%zu] = %g, want %lld", describe(s).c_str(), i, out[i],
               static_cast<long long>(p.dot[i]));
      break;
    }
  }
  for (int g = 0; g < 8; ++g) {
    KX_CHECK(out[count + g] == 777.0f, "[vpopcnt512] wrote past the output");
  }
  const ParallelFor splitters[] = {serial_for, odd_split_for, two_piece_for, thread_for(2),
                                   thread_for(3)};
  for (int variant = 0; variant < 4; ++variant) {
    a.alpha = p.alpha.data();
    a.use_k = variant != 1;
    a.relu = variant >= 2;
    a.bias = variant % 2 == 0 ? p.bias.data() : nullptr;
    a.filter = p.filter.data();
    a.vpopcnt_filter = nullptr;
    a.vpopcnt_tap_pop = nullptr;
    std::vector<float> want(count + 8, 777.0f);
    a.output = want.data();
    internal::conv2d_avx2_driver(a, serial_for, internal::Avx2Driver::kChannelLanes);
    int which = 0;
    for (const ParallelFor& pf : splitters) {
      for (bool use_prepared : {false, true}) {
        a.filter = use_prepared ? prepared.data->packed.data() : p.filter.data();
        a.vpopcnt_filter = use_prepared ? prepared.data->vpopcnt_filter : nullptr;
        a.vpopcnt_tap_pop = use_prepared ? prepared.data->vpopcnt_tap_pop : nullptr;
        std::vector<float> got(count + 8, 777.0f);
        a.output = got.data();
        internal::conv2d_avx2_driver(a, pf, internal::Avx2Driver::kVpopcnt512);
        KX_CHECK(std::memcmp(want.data(), got.data(), (count + 8) * sizeof(float)) == 0,
                 "[vpopcnt512 variant %d splitter %d prepared %d] %s: differs from the AVX2 "
                 "channel-lane driver", variant, which, use_prepared, describe(s).c_str());
      }
      ++which;
    }
    // The public entry point with the prepared filter (kAuto: this driver unless the output
    // is tiny) gives the same bits too.
    if (internal::channel_lanes_preferred(s)) {
      std::vector<float> got(count + 8, 777.0f);
      xnor_conv2d(s, p.input.data(), prepared, a.alpha, a.bias, a.use_k, a.relu, got.data(),
                  thread_for(2));
      KX_CHECK(std::memcmp(want.data(), got.data(), (count + 8) * sizeof(float)) == 0,
               "[vpopcnt512 variant %d, xnor_conv2d prepared] %s: differs from the AVX2 "
               "channel-lane driver", variant, describe(s).c_str());
    }
  }
}

void run_shape(Rng& rng, Conv2DShape s, bool check_splits) {
  const std::string err = resolve_conv2d_shape(&s);
  KX_CHECK(err.empty(), "unexpected shape error %s", err.c_str());
  if (!err.empty()) return;
  Problem p;
  p.s = s;
  make_problem(rng, &p);
  for (KernelPath path : available_paths()) check_problem(p, path, check_splits, rng);
  if (kernel_path_available(KernelPath::kAvx2)) {
    check_avx2_drivers(p);
    check_vpopcnt_driver(p);
  }
  check_prepared(p);
}

int pick(Rng& rng, std::initializer_list<int> values) {
  const int i = uniform_int(rng, 0, static_cast<int>(values.size()) - 1);
  return *(values.begin() + i);
}

void test_fixed_shapes(Rng& rng) {
  auto shape = [](int n, int h, int w, int ci, int co, int kh, int kw, int sh, int sw, int dh,
                  int dw, Padding pad) {
    Conv2DShape s;
    s.batch = n; s.in_h = h; s.in_w = w; s.in_c = ci; s.out_c = co; s.k_h = kh; s.k_w = kw;
    s.stride_h = sh; s.stride_w = sw; s.dilation_h = dh; s.dilation_w = dw; s.padding = pad;
    return s;
  };
  const Padding S = Padding::kSame, V = Padding::kValid;
  run_shape(rng, shape(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, V), true);
  run_shape(rng, shape(1, 1, 1, 1, 1, 3, 3, 1, 1, 1, 1, S), true);      // only the centre tap
  run_shape(rng, shape(1, 9, 9, 64, 64, 3, 3, 1, 1, 1, 1, S), true);
  run_shape(rng, shape(2, 7, 7, 128, 40, 3, 3, 1, 1, 1, 1, S), true);
  run_shape(rng, shape(1, 13, 11, 33, 17, 3, 3, 2, 2, 1, 1, S), true);
  run_shape(rng, shape(3, 12, 12, 65, 9, 5, 5, 1, 1, 1, 1, S), true);
  run_shape(rng, shape(1, 27, 27, 96, 24, 5, 5, 1, 1, 1, 1, S), true);  // AlexNet conv2-like
  run_shape(rng, shape(1, 15, 15, 31, 8, 11, 11, 4, 4, 1, 1, V), true);
  run_shape(rng, shape(1, 15, 15, 31, 8, 11, 11, 4, 4, 1, 1, S), true);
  // 11 x 11 distinct padding classes (> 64): the table tile's per-pixel tap correction.
  run_shape(rng, shape(1, 15, 15, 31, 8, 11, 11, 1, 1, 1, 1, S), true);
  run_shape(rng, shape(2, 10, 11, 7, 5, 3, 3, 2, 1, 2, 2, S), true);   // stride + dilation
  // The first receptive fields skip input row 0 (rows -1, 1, 3) but read the padding row that
  // row 0's packing zeroes; several tasks per row, rows packed by whichever task needs them.
  run_shape(rng, shape(2, 8, 8, 40, 70, 3, 3, 2, 2, 2, 2, S), true);
  run_shape(rng, shape(1, 30, 30, 64, 64, 3, 3, 1, 1, 1, 1, S), true);
  run_shape(rng, shape(1, 9, 8, 300, 3, 7, 7, 1, 1, 1, 1, S), true);
  run_shape(rng, shape(4, 5, 6, 1, 70, 1, 1, 1, 1, 1, 1, V), true);
  run_shape(rng, shape(1, 6, 6, 257, 33, 2, 4, 3, 2, 1, 1, S), true);  // even kernels
  run_shape(rng, shape(1, 3, 3, 8, 4, 3, 3, 4, 4, 1, 1, S), true);     // stride > input
  // ResNet-18-like channel counts (64-channel table blocks, 5-pixel table tiles), a 7x7 map.
  run_shape(rng, shape(1, 7, 7, 256, 128, 3, 3, 1, 1, 1, 1, S), true);
  // ResNet-18-like downsampling (3x3 / 1x1, stride 2, SAME): K of 8 pixels of one output row
  // from two loads (even floats); output rows of 20 / 17 pixels split across blocks.
  run_shape(rng, shape(1, 40, 40, 64, 72, 3, 3, 2, 2, 1, 1, S), true);
  run_shape(rng, shape(2, 34, 35, 64, 130, 1, 1, 2, 2, 1, 1, S), true);
  run_shape(rng, shape(1, 33, 34, 40, 20, 3, 3, 1, 2, 1, 1, V), true);
  // Vertical slots (odd output widths: the last pixels of two rows share a slot): one-pixel
  // wide outputs (every slot vertical), rows of 3 pixels with an odd last row per image and
  // blocks across images, stride 2 and dilation 2 (the partner row 2 padded rows down) in
  // large blocks, VALID.
  run_shape(rng, shape(3, 9, 1, 70, 66, 3, 3, 1, 1, 1, 1, S), true);
  run_shape(rng, shape(3, 5, 3, 64, 64, 3, 3, 1, 1, 1, 1, S), true);
  run_shape(rng, shape(2, 45, 45, 40, 70, 3, 3, 2, 2, 2, 2, S), true);
  run_shape(rng, shape(1, 17, 17, 33, 20, 3, 3, 1, 1, 1, 1, V), true);
  // Table tile with byte counters only (<= 63 steps: 1x1 up to 224 channels, 2x2 / 1x3 with
  // one or two words), SAME borders included; 225 channels (64 steps) widens as usual.
  run_shape(rng, shape(1, 11, 13, 224, 70, 1, 1, 1, 1, 1, 1, S), true);
  run_shape(rng, shape(1, 11, 13, 225, 70, 1, 1, 2, 2, 1, 1, S), true);
  run_shape(rng, shape(2, 9, 10, 32, 66, 2, 2, 1, 1, 1, 1, S), true);
  run_shape(rng, shape(1, 9, 10, 64, 20, 1, 3, 1, 1, 1, 1, S), true);
  // Beyond the table tile's uint16 sums (32 * taps * words >= 65536): the planar tile runs.
  run_shape(rng, shape(1, 8, 8, 600, 3, 11, 11, 1, 1, 1, 1, S), false);
}

void test_random_sweep(Rng& rng, int cases) {
  for (int t = 0; t < cases; ++t) {
    Conv2DShape s;
    s.batch = uniform_int(rng, 1, 4);
    s.in_c = uniform_int(rng, 0, 2) == 0
                 ? pick(rng, {1, 2, 31, 32, 33, 63, 64, 65, 96, 127, 128, 129, 192, 255, 256, 257, 300})
                 : uniform_int(rng, 1, 300);
    s.out_c = uniform_int(rng, 0, 3) == 0 ? pick(rng, {1, 7, 8, 9, 16, 24, 33, 64, 65})
                                          : uniform_int(rng, 1, 40);
    const bool square = uniform_int(rng, 0, 3) != 0;
    s.k_h = uniform_int(rng, 0, 2) != 0 ? pick(rng, {1, 3, 5, 7, 11}) : uniform_int(rng, 1, 11);
    s.k_w = square ? s.k_h : uniform_int(rng, 1, 11);
    s.stride_h = pick(rng, {1, 1, 2, 4, 3});
    s.stride_w = square ? s.stride_h : pick(rng, {1, 2, 4});
    s.dilation_h = pick(rng, {1, 1, 2});
    s.dilation_w = square ? s.dilation_h : pick(rng, {1, 2});
    s.padding = uniform_int(rng, 0, 1) ? Padding::kSame : Padding::kValid;
    const int span_h = (s.k_h - 1) * s.dilation_h + 1, span_w = (s.k_w - 1) * s.dilation_w + 1;
    const int min_h = s.padding == Padding::kValid ? span_h : 1;
    const int min_w = s.padding == Padding::kValid ? span_w : 1;
    s.in_h = uniform_int(rng, min_h, min_h + 12);
    s.in_w = uniform_int(rng, min_w, min_w + 12);
    // Keep the naive reference affordable.
    const double work = static_cast<double>(s.batch) * s.in_h * s.in_w * s.in_c * s.out_c *
                        s.k_h * s.k_w / (s.stride_h * s.stride_w);
    if (work > 4e6) {
      --t;
      continue;
    }
    run_shape(rng, s, t % 4 == 0);
  }
}

void test_invalid_shapes() {
  auto base = [] {
    Conv2DShape s;
    s.batch = 1; s.in_h = 8; s.in_w = 8; s.in_c = 4; s.out_c = 2; s.k_h = 3; s.k_w = 3;
    return s;
  };
  struct Bad {
    void (*mutate)(Conv2DShape*);
    const char* needle;
  };
  const Bad bads[] = {
      {[](Conv2DShape* s) { s->k_h = 0; }, "kernel height"},
      {[](Conv2DShape* s) { s->k_w = 12; }, "kernel width"},
      {[](Conv2DShape* s) { s->stride_h = 0; }, "stride height"},
      {[](Conv2DShape* s) { s->stride_w = -1; }, "stride width"},
      {[](Conv2DShape* s) { s->dilation_h = 0; }, "dilation height"},
      {[](Conv2DShape* s) { s->batch = 0; }, "batch"},
      {[](Conv2DShape* s) { s->in_c = 0; }, "input channels"},
      {[](Conv2DShape* s) { s->out_c = 0; }, "output channels"},
      {[](Conv2DShape* s) { s->in_h = 0; }, "input height"},
      {[](Conv2DShape* s) { s->in_h = 2; }, "VALID"},
      {[](Conv2DShape* s) { s->dilation_w = 4; }, "VALID"},
  };
  for (const Bad& b : bads) {
    Conv2DShape s = base();
    b.mutate(&s);
    const std::string err = resolve_conv2d_shape(&s);
    KX_CHECK(!err.empty() && err.find(b.needle) != std::string::npos,
             "want an error mentioning '%s', got '%s'", b.needle, err.c_str());
  }
  Conv2DShape s = base();
  s.in_h = 2;
  s.padding = Padding::kSame;
  KX_CHECK(resolve_conv2d_shape(&s).empty(), "SAME accepts small inputs");
  KX_CHECK(s.out_h == 2 && s.out_w == 8 && s.pad_top == 1 && s.pad_left == 1, "SAME sizes");
  // TF's SAME rule: out = ceil(in / s), pad_top = total / 2.
  s = base();
  s.in_h = 10; s.in_w = 9; s.k_h = 4; s.k_w = 5; s.stride_h = 3; s.stride_w = 2;
  s.padding = Padding::kSame;
  KX_CHECK(resolve_conv2d_shape(&s).empty(), "shape");
  // out_h = 4: total = 3*3 + 4 - 10 = 3 -> top 1; out_w = 5: total = 4*2 + 5 - 9 = 4 -> left 2.
  KX_CHECK(s.out_h == 4 && s.out_w == 5 && s.pad_top == 1 && s.pad_left == 2, "SAME rule %d %d %d %d",
           s.out_h, s.out_w, s.pad_top, s.pad_left);
  s.padding = Padding::kValid;
  KX_CHECK(resolve_conv2d_shape(&s).empty(), "shape");
  // VALID: out = ceil((in - (k-1)) / s): h (10-3)/3 -> 3, w (9-4)/2 -> 3.
  KX_CHECK(s.out_h == 3 && s.out_w == 3 && s.pad_top == 0 && s.pad_left == 0, "VALID rule %d %d",
           s.out_h, s.out_w);

  Padding pad;
  KX_CHECK(parse_padding("SAME", &pad) && pad == Padding::kSame, "SAME");
  KX_CHECK(parse_padding("VALID", &pad) && pad == Padding::kValid, "VALID");
  KX_CHECK(!parse_padding("same", &pad) && !parse_padding("", &pad), "bad padding accepted");
  KX_CHECK(!check_dense_shape(0, 3, 3).empty() && !check_dense_shape(1, 0, 3).empty() &&
               !check_dense_shape(1, 3, 0).empty() && check_dense_shape(1, 1, 1).empty(),
           "dense shape checks");
  const std::string auto_name = auto_kernel_path_name();
  KX_CHECK(auto_name == "avx2" || auto_name == "avx2+avx512" || auto_name == "portable",
           "auto path %s", auto_name.c_str());
  KX_CHECK(kernel_path_available(KernelPath::kAuto) && kernel_path_available(KernelPath::kReference) &&
               kernel_path_available(KernelPath::kPortable), "paths");
  KX_CHECK((auto_name != "portable") == kernel_path_available(KernelPath::kAvx2),
           "avx2 availability");
  KX_CHECK((auto_name == "avx2+avx512") == internal::popcount_avx512_available(),
           "avx512 availability");
}

void test_dense(Rng& rng) {
  for (int t = 0; t < 120; ++t) {
    // Small batches take the GEMV kernels, >= 8 rows the conv machinery (>= 32 its channel-lane
    // driver; with a prepared filter >= 2 rows).
    const int size_class = uniform_int(rng, 0, 2);
    const int batch = size_class == 0 ? uniform_int(rng, 1, 5)
                      : size_class == 1 ? uniform_int(rng, 6, 20)
                                        : uniform_int(rng, 21, 70);
    const int in_f = uniform_int(rng, 0, 2) == 0 ? pick(rng, {1, 31, 32, 33, 64, 256, 257, 1000, 4096})
                                                 : uniform_int(rng, 1, 700);
    const int units = uniform_int(rng, 1, 70);
    std::vector<float> x(static_cast<std::size_t>(batch) * in_f), w(static_cast<std::size_t>(units) * in_f);
    fill_inputs(rng, &x);
    fill_inputs(rng, &w);
    std::vector<PackedWord> filter(static_cast<std::size_t>(units) * packed_words(in_f));
    pack_bits(w.data(), units, in_f, filter.data());
    std::vector<float> alpha(units), bias(units);
    std::uniform_real_distribution<float> ua(0.05f, 2.0f), ub(-3.0f, 3.0f);
    for (int u = 0; u < units; ++u) { alpha[u] = ua(rng); bias[u] = ub(rng); }
    const bool use_k = uniform_int(rng, 0, 1), relu = uniform_int(rng, 0, 1), with_bias = uniform_int(rng, 0, 1);
    const PreparedDenseFilter prepared = prepare_dense_filter(in_f, units, filter.data(), odd_split_for);
    KX_CHECK(!prepared.empty() && prepared.matches(in_f, units), "prepared dense filter does not match");
    KX_CHECK(!prepared.matches(in_f + 1, units) && !prepared.matches(in_f, units + 1) &&
                 !PreparedDenseFilter().matches(in_f, units),
             "PreparedDenseFilter::matches too lax");
    for (KernelPath path : available_paths()) {
      std::vector<float> out(static_cast<std::size_t>(batch) * units + 4, 777.0f);
      xnor_dense(batch, in_f, units, x.data(), filter.data(), alpha.data(),
                 with_bias ? bias.data() : nullptr, use_k, relu, out.data(), serial_for, path);
      for (int g = 0; g < 4; ++g) KX_CHECK(out[out.size() - 1 - g] == 777.0f, "dense wrote past the output");
      for (int n = 0; n < batch; ++n) {
        double abs_sum = 0.0;
        for (int c = 0; c < in_f; ++c) abs_sum += std::fabs(x[static_cast<std::size_t>(n) * in_f + c]);
        const double k = use_k ? abs_sum / in_f : 1.0;
        for (int u = 0; u < units; ++u) {
          std::int64_t d = 0;
          for (int c = 0; c < in_f; ++c) d += sgn(x[static_cast<std::size_t>(n) * in_f + c]) * sgn(w[static_cast<std::size_t>(u) * in_f + c]);
          const double scaled = d * alpha[u] * k;
          double want = scaled + (with_bias ? bias[u] : 0.0);
          if (relu && want < 0) want = 0;
          const double tol = 2e-5 * (std::fabs(scaled) + std::fabs(bias[u])) + 1e-6;
          const float got = out[static_cast<std::size_t>(n) * units + u];
          KX_CHECK(std::fabs(got - want) <= tol, "[%s] dense N=%d in=%d units=%d: out[%d,%d]=%.9g want %.9g",
                   path_name(path), batch, in_f, units, n, u, got, want);
        }
      }
      // Split invariance.
      for (const ParallelFor& pf : {ParallelFor(odd_split_for), thread_for(2)}) {
        std::vector<float> other(out.size(), 777.0f);
        xnor_dense(batch, in_f, units, x.data(), filter.data(), alpha.data(),
                   with_bias ? bias.data() : nullptr, use_k, relu, other.data(), pf, path);
        KX_CHECK(std::memcmp(other.data(), out.data(), out.size() * sizeof(float)) == 0,
                 "[%s] dense split changes the result", path_name(path));
        // The prepared filter gives the same bits, whatever the split.
        std::vector<float> from_prepared(out.size(), 777.0f);
        xnor_dense(batch, in_f, units, x.data(), prepared, alpha.data(),
                   with_bias ? bias.data() : nullptr, use_k, relu, from_prepared.data(), pf, path);
        KX_CHECK(std::memcmp(from_prepared.data(), out.data(), out.size() * sizeof(float)) == 0,
                 "[%s] dense N=%d in=%d units=%d: the prepared filter changes the result",
                 path_name(path), batch, in_f, units);
      }
    }
  }
}

}  // namespace
}  // namespace testing
}  // namespace keras_xnor

namespace keras_xnor {
namespace testing {
namespace {

// Out of memory is reported, not a crash: shapes whose work buffers exceed the address space
// (about 1 PB of packed input; a 2^50-word filter copy) make the *_checked entry points return
// false on every path (before reading the input or filter: the tiny buffers passed here are
// never touched), the unchecked ones throw std::bad_alloc, and the next normal call works.
void test_out_of_memory(Rng& rng) {
  Conv2DShape huge;
  huge.batch = 1;
  huge.in_h = huge.in_w = 1 << 24;
  huge.in_c = 1;
  huge.out_c = 1;
  huge.k_h = huge.k_w = 1;
  KX_CHECK(resolve_conv2d_shape(&huge).empty(), "huge shape must be valid");
  std::vector<float> x(64, 1.0f), alpha(1, 1.0f), out(64);
  std::vector<PackedWord> w(64, 0);
  for (KernelPath path : available_paths()) {
    for (bool use_k : {false, true}) {
      KX_CHECK(!xnor_conv2d_checked(huge, x.data(), w.data(), alpha.data(), nullptr, use_k, false,
                                    out.data(), serial_for, path),
               "%s: a 1 PB input must report out of memory", path_name(path));
    }
    bool threw = false;
    try {
      xnor_conv2d(huge, x.data(), w.data(), alpha.data(), nullptr, false, false, out.data(),
                  serial_for, path);
    } catch (const std::bad_alloc&) {
      threw = true;
    }
    KX_CHECK(threw, "%s: xnor_conv2d must throw std::bad_alloc", path_name(path));
  }
  Conv2DShape deep;
  deep.batch = deep.in_h = deep.in_w = 11;
  deep.in_c = 1 << 24;
  deep.out_c = 1 << 24;
  deep.k_h = deep.k_w = 11;
  KX_CHECK(resolve_conv2d_shape(&deep).empty(), "deep shape must be valid");
  PreparedConv2DFilter prepared;
  KX_CHECK(!prepare_conv2d_filter_checked(deep, w.data(), &prepared),
           "a 2^50-word filter must report out of memory");
  KX_CHECK(prepared.empty(), "a failed prepare leaves the filter empty");
  PreparedDenseFilter dense_prepared;
  KX_CHECK(!prepare_dense_filter_checked(1 << 24, 1 << 24, w.data(), &dense_prepared),
           "a 2^43-word dense filter must report out of memory");
  KX_CHECK(dense_prepared.empty(), "a failed dense prepare leaves the filter empty");
  // A normal problem still runs (the scratch kept its old buffers) and is exact.
  Conv2DShape s;
  s.batch = 1;
  s.in_h = s.in_w = 9;
  s.in_c = 40;
  s.out_c = 70;
  s.k_h = s.k_w = 3;
  s.padding = Padding::kSame;
  run_shape(rng, s, false);
}

// A resolved 1x1 stride-1 VALID conv shape (the counter tests' fields: in_c / 4 nibble steps).
Conv2DShape pointwise_shape(int batch, int h, int w, int in_c, int out_c) {
  Conv2DShape s;
  s.batch = batch;
  s.in_h = h;
  s.in_w = w;
  s.in_c = in_c;
  s.out_c = out_c;
  s.k_h = s.k_w = 1;
  KX_CHECK(resolve_conv2d_shape(&s).empty(), "valid");
  return s;
}

// The table tiles' counters at their limits: every input bit opposite its weight bit, so each
// nibble step adds 4 (the byte-counter mode at 56 steps: 224 per byte; widening at 64 steps).
void test_counter_limits() {
  for (int in_c : {224, 225, 248}) {
    const Conv2DShape s = pointwise_shape(1, 5, 7, in_c, 65);
    std::vector<float> x(static_cast<std::size_t>(s.in_h) * s.in_w * in_c, -1.0f);
    std::vector<PackedWord> w(static_cast<std::size_t>(s.out_c) * packed_words(in_c), 0);
    std::vector<float> alpha(s.out_c, 1.0f);
    std::vector<float> out(static_cast<std::size_t>(s.in_h) * s.in_w * s.out_c);
    for (KernelPath path : available_paths()) {
      xnor_conv2d(s, x.data(), w.data(), alpha.data(), nullptr, false, false, out.data(), serial_for, path);
      for (float v : out) {
        if (v != static_cast<float>(-in_c)) {
          KX_CHECK(false, "[%s] in_c %d: all-opposite dot %g, want %d", path_name(path), in_c, v, -in_c);
          break;
        }
      }
    }
  }
}

// The pair table tile's two counts per byte at opposite limits: pixels alternate -1 / +1 and
// odd channels' weights are all -1, so beside every count at its maximum (all bits opposite)
// sits a 0, in the other pixel of the slot and in the neighbouring channel (the byte whose lo
// the recovery subtracts from an even byte's H); rows of 7 pixels (a single pixel per row).
void test_pair_counter_extremes() {
  for (int in_c : {64, 224, 225, 252}) {
    const Conv2DShape s = pointwise_shape(2, 4, 7, in_c, 66);
    const int pixels = s.batch * s.in_h * s.in_w;
    std::vector<float> x(static_cast<std::size_t>(pixels) * in_c);
    for (int p = 0; p < pixels; ++p) {
      for (int c = 0; c < in_c; ++c) x[static_cast<std::size_t>(p) * in_c + c] = p % 2 ? 1.0f : -1.0f;
    }
    const int words = packed_words(in_c);
    std::vector<PackedWord> w(static_cast<std::size_t>(s.out_c) * words, 0);
    for (int o = 1; o < s.out_c; o += 2) {
      for (int k = 0; k < words; ++k) {
        const int bits = std::min(32, in_c - 32 * k);
        w[static_cast<std::size_t>(o) * words + k] = static_cast<PackedWord>(bits == 32 ? 0xffffffffu : (1u << bits) - 1);
      }
    }
    std::vector<float> alpha(s.out_c, 1.0f);
    std::vector<float> out(static_cast<std::size_t>(pixels) * s.out_c);
    for (KernelPath path : available_paths()) {
      xnor_conv2d(s, x.data(), w.data(), alpha.data(), nullptr, false, false, out.data(), serial_for, path);
      int bad = 0;
      for (int p = 0; p < pixels; ++p) {
        for (int o = 0; o < s.out_c; ++o) {
          const bool opposite = (p % 2 == 0) != (o % 2 == 1);  // input bit set (-1) vs weight bit
          bad += out[static_cast<std::size_t>(p) * s.out_c + o] != static_cast<float>(opposite ? -in_c : in_c);
        }
      }
      KX_CHECK(bad == 0, "[%s] in_c %d: %d outputs wrong at the counters' extremes", path_name(path), in_c, bad);
    }
  }
}

}  // namespace
}  // namespace testing
}  // namespace keras_xnor

int main(int argc, char** argv) {
  int cases = 250;
  if (argc > 1) cases = std::atoi(argv[1]);
  keras_xnor::testing::Rng rng(20161008);
  if (!keras_xnor::internal::popcount_avx512_available()) {
    std::printf("xnor_conv2d_test: no AVX512F + AVX512_VPOPCNTDQ (or KERAS_XNOR_AVX512=0): the "
                "VPOPCNTD driver's checks are skipped\n");
  }
  keras_xnor::testing::test_invalid_shapes();
  keras_xnor::testing::test_fixed_shapes(rng);
  keras_xnor::testing::test_random_sweep(rng, cases);
  keras_xnor::testing::test_dense(rng);
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer's allocator aborts on the test's petabyte requests instead of throwing
  // std::bad_alloc (allocator_may_return_null does not cover operator new here), so the
  // sanitizer build (make cpp-sanitize-test) leaves this one case to the normal build.
  std::printf("xnor_conv2d_test: out-of-memory case skipped under AddressSanitizer\n");
#else
  keras_xnor::testing::test_out_of_memory(rng);
#endif
  keras_xnor::testing::test_counter_limits();
  keras_xnor::testing::test_pair_counter_extremes();
  return keras_xnor::testing::finish("xnor_conv2d_test");
}
