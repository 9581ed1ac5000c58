"""Quantizers: sign convention, exact gradients, scales (alpha, K), serialization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_xnor import constraints, quantizers


def _grad(fn, x, upstream=None):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        if upstream is not None:
            y = y * upstream
    return y.numpy(), tape.gradient(y, x).numpy()


def test_sign_convention_zero_and_nan_map_to_plus_one():
    x = np.array([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0, np.nan, -np.inf, np.inf], np.float32)
    expected = np.array([-1, -1, 1, 1, 1, 1, 1, -1, 1], np.float32)
    for fn in (quantizers.sign, quantizers.ste_sign, quantizers.approx_sign):
        np.testing.assert_array_equal(fn(x).numpy(), expected)


def test_ste_sign_gradient_is_indicator_of_abs_le_one():
    x = np.array([-3.0, -1.0, -0.999, -0.5, 0.0, 0.5, 1.0, 1.0001, 2.0], np.float32)
    up = np.arange(1, 10, dtype=np.float32)
    _, g = _grad(quantizers.ste_sign, x, up)
    np.testing.assert_array_equal(g, up * (np.abs(x) <= 1))


def test_ste_sign_clip_value_and_unclipped():
    x = np.array([-3.0, -1.5, 0.2, 1.9, 2.5], np.float32)
    _, g = _grad(lambda t: quantizers.ste_sign(t, clip_value=2.0), x)
    np.testing.assert_array_equal(g, [0, 1, 1, 1, 0])
    _, g = _grad(lambda t: quantizers.ste_sign(t, clip_value=None), x)
    np.testing.assert_array_equal(g, np.ones(5))


def test_approx_sign_gradient_matches_bireal_formula():
    x = np.array([-1.5, -1.0, -0.75, -0.25, 0.0, 0.25, 0.75, 1.0, 1.5], np.float32)
    up = np.linspace(0.5, 2.0, 9).astype(np.float32)
    _, g = _grad(quantizers.approx_sign, x, up)
    expected = np.where(
        (x >= -1) & (x < 0), 2 + 2 * x, np.where((x >= 0) & (x < 1), 2 - 2 * x, 0.0)
    )
    np.testing.assert_array_equal(g, (up * expected).astype(np.float32))


def test_binary_gradient_backward_is_sign_times_per_sample_max():
    x = np.random.RandomState(0).randn(3, 4, 5).astype(np.float32)
    up = np.random.RandomState(1).randn(3, 4, 5).astype(np.float32)
    up[1, 0, 0] = 0.0
    y, g = _grad(quantizers.binary_gradient, x, up)
    np.testing.assert_array_equal(y, x * up)
    expected = np.sign(up) * np.abs(up).max(axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(g, expected)
    assert g[1, 0, 0] == 0.0  # an exactly-zero gradient stays zero
    for n in range(3):
        assert set(np.unique(np.abs(g[n]))) <= {0.0, np.abs(up[n]).max()}


def test_mean_abs_minimises_binary_approximation_error():
    w = np.random.RandomState(0).randn(3, 3, 5, 4).astype(np.float32)
    alpha = quantizers.mean_abs(w).numpy()
    np.testing.assert_allclose(alpha, np.abs(w).reshape(-1, 4).mean(0), rtol=1e-6)
    b = np.where(w < 0, -1.0, 1.0)
    for f in range(4):
        err = lambda a: np.sum((w[..., f] - a * b[..., f]) ** 2)  # noqa: E731
        best = err(alpha[f])
        for delta in (1e-3, -1e-3, 1e-2, -1e-2, 0.1):
            assert err(alpha[f] + delta) > best
        # and B = sign(W) beats a random flip of one entry (eq. 5/6 optimum jointly)
        b2 = b[..., f].copy()
        b2[0, 0, 0] *= -1
        assert np.sum((w[..., f] - alpha[f] * b2) ** 2) > best


def _k_loop(inputs, kh, kw, sh, sw, padding, dh=1, dw=1):
    n, h, w, _ = inputs.shape
    a = np.abs(inputs).mean(-1)
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if padding == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        pt = max((oh - 1) * sh + eh - h, 0) // 2
        pl = max((ow - 1) * sw + ew - w, 0) // 2
    else:
        oh, ow = (h - eh) // sh + 1, (w - ew) // sw + 1
        pt = pl = 0
    out = np.zeros((n, oh, ow, 1), np.float64)
    for b in range(n):
        for y in range(oh):
            for x in range(ow):
                total = 0.0
                for i in range(kh):
                    for j in range(kw):
                        yy, xx = y * sh + i * dh - pt, x * sw + j * dw - pl
                        if 0 <= yy < h and 0 <= xx < w:
                            total += a[b, yy, xx]
                out[b, y, x, 0] = total / (kh * kw)
    return out


@pytest.mark.parametrize(
    "kernel,strides,padding,dilation",
    [
        ((3, 3), (1, 1), "same", (1, 1)),
        ((3, 3), (2, 2), "same", (1, 1)),
        ((3, 2), (1, 2), "valid", (1, 1)),
        ((2, 2), (2, 2), "same", (1, 1)),
        ((3, 3), (1, 1), "same", (2, 2)),
        ((3, 3), (1, 1), "valid", (2, 1)),
    ],
)
def test_k_map_equals_explicit_loop(kernel, strides, padding, dilation):
    x = np.random.RandomState(2).randn(2, 7, 6, 5).astype(np.float32)
    k = quantizers.conv_k_map(x, kernel, strides, padding, dilation).numpy()
    ref = _k_loop(x, *kernel, *strides, padding, *dilation)
    assert k.shape == ref.shape
    np.testing.assert_allclose(k, ref, rtol=1e-5)


def test_dense_k_is_mean_abs_over_features():
    x = np.random.RandomState(3).randn(4, 3, 9).astype(np.float32)
    np.testing.assert_allclose(
        quantizers.dense_k(x).numpy(), np.abs(x).mean(-1, keepdims=True), rtol=1e-6
    )


def test_get_resolves_names_functions_dicts_and_callables():
    assert quantizers.get(None) is None
    assert isinstance(quantizers.get("ste_sign"), quantizers.SteSign)
    assert isinstance(quantizers.get("Approx_Sign"), quantizers.ApproxSign)
    assert isinstance(quantizers.get("sign"), quantizers.SteSign)
    assert isinstance(quantizers.get(quantizers.ste_sign), quantizers.SteSign)
    assert isinstance(quantizers.get(quantizers.approx_sign), quantizers.ApproxSign)
    q = quantizers.SteSign(clip_value=2.0)
    assert quantizers.get(q) is q
    assert quantizers.get(quantizers.serialize(q)) == q
    fn = lambda t: t  # noqa: E731
    assert quantizers.get(fn) is fn
    assert quantizers.is_sign_kind(quantizers.get("approx_sign"))
    assert not quantizers.is_sign_kind(quantizers.get("mean_abs_sign"))
    assert not quantizers.is_sign_kind(None)
    # mean_abs_sign is a sign times a per-filter scale: it runs on the XNOR ops too.
    assert quantizers.is_scaled_sign(quantizers.get("mean_abs_sign"))
    assert quantizers.is_scaled_sign(quantizers.get("ste_sign"))
    assert not quantizers.is_scaled_sign(fn) and not quantizers.is_scaled_sign(None)


@pytest.mark.parametrize("cls", [quantizers.SteSign, quantizers.MeanAbsSign])
@pytest.mark.parametrize("clip", [0.0, -1.0, "1", True])
def test_clip_value_must_be_positive_or_none(cls, clip):
    with pytest.raises(ValueError, match="clip_value must be a positive number or None"):
        cls(clip)
    assert cls(np.float32(0.5)).clip_value == 0.5 and cls(None).clip_value is None


def test_kernel_only_quantizers_are_refused_for_inputs():
    with pytest.raises(ValueError, match="Layer X: .*kernel quantizer.*includes the batch"):
        quantizers.get_for_inputs("mean_abs_sign", "Layer X")
    assert isinstance(quantizers.get_for_inputs("ste_sign", "X"), quantizers.SteSign)
    assert quantizers.get_for_inputs(None, "X") is None


def test_get_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="Valid names|ste_sign"):
        quantizers.get("stesign")
    with pytest.raises(ValueError, match="approx_sign"):
        quantizers.get("nope")
    with pytest.raises(ValueError):
        quantizers.get(3)


@pytest.mark.parametrize(
    "q",
    [
        quantizers.SteSign(),
        quantizers.SteSign(None),
        quantizers.ApproxSign(),
        quantizers.MeanAbsSign(),
    ],
)
def test_quantizer_serialization_round_trip(q):
    config = quantizers.serialize(q)
    assert isinstance(config, dict)
    q2 = quantizers.deserialize(config)
    assert q2 == q
    x = np.random.RandomState(4).randn(3, 4).astype(np.float32)
    np.testing.assert_array_equal(q(x).numpy(), q2(x).numpy())


def test_mean_abs_sign_is_alpha_times_sign_with_exact_gradient():
    w = np.random.RandomState(5).uniform(-1.5, 1.5, (4, 3)).astype(np.float32)
    q = quantizers.MeanAbsSign()
    y, g = _grad(q, w)
    alpha = np.abs(w).mean(0)
    b = np.where(w < 0, -1.0, 1.0)
    np.testing.assert_allclose(y, alpha * b, rtol=1e-6)
    # d/dW_j of sum_i alpha(W) B_i = (1/n) sign(W_j) sum_i B_i + alpha 1_{|W_j| <= 1}
    n = w.shape[0]
    expected = np.sign(w) / n * b.sum(0) + alpha * (np.abs(w) <= 1)
    np.testing.assert_allclose(g, expected, rtol=1e-5)


def test_weight_clip_constraint():
    c = constraints.get("weight_clip")
    assert isinstance(c, constraints.WeightClip)
    np.testing.assert_array_equal(
        np.asarray(c(np.array([-3.0, -0.5, 0.25, 1.0, 7.0], np.float32))), [-1, -0.5, 0.25, 1, 1]
    )
    c2 = keras.constraints.deserialize(keras.constraints.serialize(constraints.WeightClip(0.5)))
    assert isinstance(c2, constraints.WeightClip) and c2.clip_value == 0.5
    assert isinstance(constraints.get("non_neg"), keras.constraints.NonNeg)
    with pytest.raises(ValueError):
        constraints.WeightClip(0)


@pytest.mark.parametrize("padding, strides, dilation, want", [
    ("same", 2, 1, (2, 0, 3, 1)),
    ("same", 1, 2, (2, 0, 5, 1)),
    ("valid", 1, 1, (2, 0, 3, 1)),
])
def test_conv_k_map_of_an_empty_input_has_the_output_shape(padding, strides, dilation, want):
    # TF's oneDNN conv (on by default on AVX-512 CPUs) returns the input's shape for an empty
    # input; the K map (and the layers' convolutions) must still have the conv's output shape.
    x = np.zeros((2, 0, 5, 3), np.float32)
    assert tuple(quantizers.conv_k_map(x, 3, strides, padding, dilation).shape) == want
    y = quantizers.convolution(tf.constant(x), tf.ones([3, 3, 3, 4]), (strides, strides),
                               padding.upper(), (dilation, dilation))
    assert tuple(y.shape) == want[:3] + (4,)


@pytest.mark.parametrize("shape, kernel, strides, padding", [
    ((2, 2, 2, 1), (3, 3), (1, 2), "SAME"),
    ((3, 5, 3, 1), (3, 3), (1, 2), "VALID"),
    ((2, 2, 3, 1), (1, 11), (1, 4), "SAME"),
    ((2, 5, 2, 16), (3, 3), (2, 1), "SAME"),
])
def test_convolution_with_unequal_strides_matches_numpy(shape, kernel, strides, padding):
    # TF 2.21's oneDNN conv (AVX-512 CPUs) gave ~1e28 for strides (1, s > 1), one input
    # channel, batch >= 2 and an output one pixel wide: the K map's box filter hit it.
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(kernel + (shape[3], 2)).astype(np.float32)
    y = quantizers.convolution(tf.constant(x), tf.constant(w), strides, padding, (1, 1)).numpy()
    pads = [(0, 0)]
    for axis in (1, 2):
        pads.append(quantizers.explicit_pads(shape[axis], kernel[axis - 1], strides[axis - 1], 1,
                                             padding))
    xp = np.pad(x, pads + [(0, 0)])
    want = np.zeros(y.shape, np.float64)
    for i in range(y.shape[1]):
        for j in range(y.shape[2]):
            patch = xp[:, i * strides[0]:i * strides[0] + kernel[0],
                       j * strides[1]:j * strides[1] + kernel[1], :]
            want[:, i, j, :] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    ap = np.pad(np.abs(x).mean(-1), pads)
    k = quantizers.conv_k_map(x, kernel, strides, padding).numpy()[..., 0]
    k_want = np.zeros(k.shape, np.float64)
    for i in range(k.shape[1]):
        for j in range(k.shape[2]):
            k_want[:, i, j] = ap[:, i * strides[0]:i * strides[0] + kernel[0],
                                 j * strides[1]:j * strides[1] + kernel[1]].mean((1, 2))
    np.testing.assert_allclose(k, k_want, rtol=1e-5)
