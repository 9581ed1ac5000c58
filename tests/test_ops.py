"""Tests of the TF custom ops (keras_xnor/ops.py, custom_ops/tf/) against a NumPy eq. 11.

The oracle here is written from the paper and the spec only (NumPy, float64 / integers):

    out = dot * alpha * K + bias   (ReLU if asked)                        (eq. 11)
    dot = sum over taps, channels of sign(I) * sign(W), padded taps add 0
    K   = box filter 1/(kh*kw) over A = mean_c |I|, zero padded (divisor kh*kw)

The integer part is checked bit-exactly (alpha = 1, no K, no bias: the output must equal the
dot), the float stage within 1e-5 relative. The same sweeps run with 1 and 2 intra-op threads
in subprocesses (tests/test_ops_threads.py sets KERAS_XNOR_TEST_INTRA_OP_THREADS).
"""

import math
import os
import re

import numpy as np
import pytest
import tensorflow as tf

_THREADS = os.environ.get("KERAS_XNOR_TEST_INTRA_OP_THREADS")
if _THREADS:  # must happen before TensorFlow's context exists (fresh subprocess)
    tf.config.threading.set_intra_op_parallelism_threads(int(_THREADS))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from keras_xnor import ops, spec  # noqa: E402

pytestmark = pytest.mark.skipif(
    not ops.compiled_ops_available(), reason="compiled ops not built (run `make ops`)"
)

SWEEP = settings(
    derandomize=True,
    max_examples=int(os.environ.get("KERAS_XNOR_TEST_MAX_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CHANNELS = st.one_of(
    st.sampled_from([1, 2, 31, 32, 33, 63, 64, 65, 96, 127, 128, 129, 255, 256, 257, 300]),
    st.integers(1, 300),
)


# ---------------------------------------------------------------------------------------------
# NumPy oracle.


def np_sign(x):
    return np.where(x < 0, -1.0, 1.0)


def np_pack_bits(x):
    """Packs along the last axis: bit c % 32 of word c // 32 set iff x < 0."""
    channels = x.shape[-1]
    words = -(-channels // 32)
    bits = np.zeros(x.shape[:-1] + (words * 32,), np.uint64)
    bits[..., :channels] = x < 0
    bits = bits.reshape(x.shape[:-1] + (words, 32))
    values = (bits << np.arange(32, dtype=np.uint64)).sum(axis=-1)
    return values.astype(np.uint32).view(np.int32)


def np_conv_geometry(size, k, stride, dilation, padding):
    """Output size and (before, after) padding of one axis, TensorFlow's rule."""
    if padding == "VALID":
        return math.ceil((size - (k - 1) * dilation) / stride), (0, 0)
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return out, (total // 2, total - total // 2)


def np_taps(x, k_h, k_w, strides, padding, dilations):
    """Zero-padded patches [N, OH, OW, KH*KW*C] (tap-major, then channel)."""
    n, h, w, c = x.shape
    out_h, pad_h = np_conv_geometry(h, k_h, strides[0], dilations[0], padding)
    out_w, pad_w = np_conv_geometry(w, k_w, strides[1], dilations[1], padding)
    xp = np.pad(x, [(0, 0), pad_h, pad_w, (0, 0)])
    taps = []
    for i in range(k_h):
        for j in range(k_w):
            r0, c0 = i * dilations[0], j * dilations[1]
            taps.append(
                xp[:, r0 : r0 + (out_h - 1) * strides[0] + 1 : strides[0],
                   c0 : c0 + (out_w - 1) * strides[1] + 1 : strides[1], :]
            )
    return np.concatenate(taps, axis=-1)


def np_xnor_conv2d(x, w_hwio, alpha, bias, strides, padding, dilations, use_k, relu):
    """eq. 11 in float64; returns (out, dot, scale) with scale = |dot * alpha * K| + |bias|."""
    k_h, k_w, c, o = w_hwio.shape
    x = x.astype(np.float64)
    patches = np_taps(np_sign(x), k_h, k_w, strides, padding, dilations)  # padded taps: 0
    dot = patches @ np_sign(w_hwio).reshape(k_h * k_w * c, o)
    if use_k:
        a = np.abs(x).mean(axis=-1, keepdims=True)
        k_map = np_taps(a, k_h, k_w, strides, padding, dilations).sum(-1, keepdims=True)
        k_map = k_map / (k_h * k_w)
    else:
        k_map = 1.0
    product = dot * alpha * k_map
    out = product + bias
    if relu:
        out = np.maximum(out, 0.0)
    return out, dot, np.abs(product) + np.abs(bias)


def np_xnor_dense(x, w, alpha, bias, use_k, relu):
    x = x.astype(np.float64)
    dot = np_sign(x) @ np_sign(w)
    k = np.abs(x).mean(axis=-1, keepdims=True) if use_k else 1.0
    product = dot * alpha * k
    out = product + bias
    if relu:
        out = np.maximum(out, 0.0)
    return out, dot, np.abs(product) + np.abs(bias)


def random_input(rng, shape, zero_fraction=0.1):
    """Gaussian values with exact +0.0 / -0.0 sprinkled in (sign(0) = +1, |0| = 0)."""
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < zero_fraction / 2] = 0.0
    x[rng.random(shape) < zero_fraction / 2] = -0.0
    return x


def assert_float_stage(actual, expected, scale):
    np.testing.assert_array_less(np.abs(actual - expected), 1e-5 * scale + 1e-6)


def raw_conv(x, filt, alpha, bias, **attrs):
    return ops.load_ops().keras_xnor_bin_conv2d(x, filt, alpha, bias, **attrs)


def raw_dense(x, filt, alpha, bias, **attrs):
    return ops.load_ops().keras_xnor_bin_dense(x, filt, alpha, bias, **attrs)


def test_thread_setting_took_effect():
    if _THREADS:
        assert tf.config.threading.get_intra_op_parallelism_threads() == int(_THREADS)
    assert ops.compiled_ops_available()


# ---------------------------------------------------------------------------------------------
# Packing.


@SWEEP
@given(
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    channels=CHANNELS,
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_bits_sweep(lead, channels, seed):
    x = random_input(np.random.default_rng(seed), tuple(lead) + (channels,), zero_fraction=0.3)
    expected = np_pack_bits(x)
    np.testing.assert_array_equal(ops.pack_bits(x).numpy(), expected)
    np.testing.assert_array_equal(ops.pack_bits_reference(x).numpy(), expected)
    unpacked = ops.unpack_bits_reference(expected, channels).numpy()
    np.testing.assert_array_equal(unpacked, np_sign(x))


def test_pack_bits_bit_order_and_special_values():
    x = np.zeros([33], np.float32)
    x[0] = -1.0  # bit 0 of word 0
    x[5] = -0.0  # sign(-0.0) = +1: clear
    x[6] = np.nan  # NaN -> +1: clear
    x[31] = -np.inf  # bit 31 of word 0: the int32 sign bit
    x[32] = -1e-30  # bit 0 of word 1; the other 31 bits of word 1 are padding (0)
    packed = ops.pack_bits(x).numpy()
    assert packed.dtype == np.int32
    assert packed.tolist() == [np.int32(np.uint32(1 | 1 << 31).view(np.int32)), 1]
    np.testing.assert_array_equal(ops.pack_bits_reference(x).numpy(), packed)


def test_pack_bits_shape_function_and_dtype_cast():
    f = tf.function(ops.pack_bits).get_concrete_function(tf.TensorSpec([None, 7, 65]))
    assert f.structured_outputs.shape.as_list() == [None, 7, 3]
    x = np.array([[-1.0, 2.0, -3.0]], np.float16)
    np.testing.assert_array_equal(ops.pack_bits(x).numpy(), [[5]])


# ---------------------------------------------------------------------------------------------
# Convolution.


@st.composite
def conv_cases(draw):
    k = draw(st.sampled_from([1, 3, 5, 7, 11]))
    k_w = draw(st.sampled_from([k, k, 1, 3]))
    strides = (draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from([1, 2, 4])))
    dilations = (draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])))
    padding = draw(st.sampled_from(["SAME", "VALID"]))
    sizes = []
    for kernel, dilation in ((k, dilations[0]), (k_w, dilations[1])):
        span = (kernel - 1) * dilation + 1
        low = span if padding == "VALID" else 1
        sizes.append(draw(st.integers(low, low + 9)))
    return dict(
        batch=draw(st.integers(1, 4)),
        in_h=sizes[0],
        in_w=sizes[1],
        in_c=draw(CHANNELS),
        out_c=draw(st.integers(1, 40)),
        k_h=k,
        k_w=k_w,
        strides=strides,
        dilations=dilations,
        padding=padding,
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def make_conv(case):
    rng = np.random.default_rng(case["seed"])
    x = random_input(rng, (case["batch"], case["in_h"], case["in_w"], case["in_c"]))
    w = random_input(rng, (case["k_h"], case["k_w"], case["in_c"], case["out_c"]), 0.05)
    attrs = dict(
        strides=list(case["strides"]),
        padding=case["padding"],
        dilations=list(case["dilations"]),
        in_channels=case["in_c"],
    )
    filt = ops.pack_bits(np.transpose(w, [3, 0, 1, 2]))
    return rng, x, w, filt, attrs


@SWEEP
@given(case=conv_cases())
def test_bin_conv2d_integer_part_is_exact(case):
    _, x, w, filt, attrs = make_conv(case)
    o = case["out_c"]
    ones, zeros = np.ones([o], np.float32), np.zeros([o], np.float32)
    y = raw_conv(x, filt, ones, zeros, use_k=False, relu=False, **attrs).numpy()
    _, dot, _ = np_xnor_conv2d(
        x, w, 1.0, 0.0, case["strides"], case["padding"], case["dilations"], False, False
    )
    assert y.shape == dot.shape
    np.testing.assert_array_equal(y, dot)
    # The shape function agrees with the kernel.
    traced = tf.function(
        lambda v: raw_conv(v, filt, ones, zeros, use_k=False, relu=False, **attrs),
        autograph=False,
    ).get_concrete_function(tf.TensorSpec(x.shape))
    assert tuple(traced.structured_outputs.shape) == dot.shape
    # The pure-TF twin computes the same integers.
    y_ref = ops.bin_conv2d_reference(x, filt, ones, zeros, use_k=False, relu=False, **attrs)
    np.testing.assert_array_equal(y_ref.numpy(), dot)


@SWEEP
@given(case=conv_cases(), use_k=st.booleans(), relu=st.booleans())
def test_bin_conv2d_float_stage(case, use_k, relu):
    rng, x, w, filt, attrs = make_conv(case)
    o = case["out_c"]
    alpha = rng.uniform(-2.0, 2.0, [o]).astype(np.float32)
    bias = rng.uniform(-3.0, 3.0, [o]).astype(np.float32)
    y = raw_conv(x, filt, alpha, bias, use_k=use_k, relu=relu, **attrs).numpy()
    expected, _, scale = np_xnor_conv2d(
        x, w, alpha, bias, case["strides"], case["padding"], case["dilations"], use_k, relu
    )
    assert_float_stage(y, expected, scale)
    y_ref = ops.bin_conv2d_reference(x, filt, alpha, bias, use_k=use_k, relu=relu, **attrs)
    assert_float_stage(y_ref.numpy(), expected, scale)


def test_bin_conv2d_padded_taps_add_nothing():
    # All-positive input and all-negative weights: every valid tap gives exactly -1, so each
    # output is -(number of valid taps) * C; a corner of a 3x3 SAME conv sees 4 taps.
    x = np.ones([1, 4, 4, 5], np.float32)
    w = -np.ones([3, 3, 5, 1], np.float32)
    filt = ops.pack_bits(np.transpose(w, [3, 0, 1, 2]))
    attrs = dict(strides=[1, 1], padding="SAME", dilations=[1, 1], in_channels=5)
    y = raw_conv(x, filt, [1.0], [0.0], use_k=False, relu=False, **attrs).numpy()[0, :, :, 0]
    assert y[0, 0] == -4 * 5 and y[0, 1] == -6 * 5 and y[1, 1] == -9 * 5
    # K of a constant |x| = 1 map: (valid taps) / 9.
    k = raw_conv(x, filt, [-1.0 / 45], [0.0], use_k=True, relu=False, **attrs).numpy()
    np.testing.assert_allclose(k[0, 0, 0, 0], 4 * 4 / 9 / 9, rtol=1e-6)


def test_bin_conv2d_empty_batch_and_graph_shapes():
    x = np.zeros([0, 5, 5, 3], np.float32)
    filt = ops.pack_bits(np.ones([2, 3, 3, 3], np.float32))
    attrs = dict(strides=[2, 2], padding="SAME", dilations=[1, 1], in_channels=3)
    y = raw_conv(x, filt, [1.0, 1.0], [0.0, 0.0], use_k=True, relu=False, **attrs)
    assert y.shape == (0, 3, 3, 2)
    fn = tf.function(lambda x: raw_conv(x, filt, [1.0, 1.0], [0.0, 0.0], use_k=True,
                                        relu=True, **attrs))
    concrete = fn.get_concrete_function(tf.TensorSpec([None, 9, None, 3]))
    assert concrete.structured_outputs.shape.as_list() == [None, 5, None, 2]
    # SAME on an empty height or width: an empty output, as tf.nn.conv2d gives.
    for shape, out in (([1, 0, 5, 3], [1, 0, 3, 2]), ([2, 4, 0, 3], [2, 2, 0, 2])):
        y = raw_conv(np.zeros(shape, np.float32), filt, [1.0, 1.0], [0.0, 0.0], use_k=True,
                     relu=False, **attrs)
        assert y.shape == tuple(out)
        concrete = fn.get_concrete_function(tf.TensorSpec(shape))
        assert concrete.structured_outputs.shape.as_list() == out


# ---------------------------------------------------------------------------------------------
# Dense.


@SWEEP
@given(
    batch=st.integers(1, 5),
    features=st.one_of(CHANNELS, st.integers(300, 1100)),
    units=st.integers(1, 50),
    use_k=st.booleans(),
    relu=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_bin_dense_sweep(batch, features, units, use_k, relu, seed):
    rng = np.random.default_rng(seed)
    x = random_input(rng, (batch, features))
    w = random_input(rng, (features, units), 0.05)
    filt = ops.pack_bits(w.T)
    ones, zeros = np.ones([units], np.float32), np.zeros([units], np.float32)
    _, dot, _ = np_xnor_dense(x, w, 1.0, 0.0, False, False)
    y = raw_dense(x, filt, ones, zeros, in_channels=features, use_k=False, relu=False)
    np.testing.assert_array_equal(y.numpy(), dot)

    alpha = rng.uniform(-2.0, 2.0, [units]).astype(np.float32)
    bias = rng.uniform(-3.0, 3.0, [units]).astype(np.float32)
    expected, _, scale = np_xnor_dense(x, w, alpha, bias, use_k, relu)
    attrs = dict(in_channels=features, use_k=use_k, relu=relu)
    assert_float_stage(raw_dense(x, filt, alpha, bias, **attrs).numpy(), expected, scale)
    y_ref = ops.bin_dense_reference(x, filt, alpha, bias, **attrs)
    assert_float_stage(y_ref.numpy(), expected, scale)


# ---------------------------------------------------------------------------------------------
# Gradients.


def conv_simulation(strides, padding, dilations, use_k, relu):
    """A float simulation of the layer, written independently of ops.py (STE sign, K)."""

    @tf.custom_gradient
    def ste(x):
        return tf.where(x < 0, -1.0, 1.0), lambda dy: dy * tf.cast(tf.abs(x) <= 1, dy.dtype)

    def simulation(x, kernel, alpha, bias):
        dot = tf.nn.convolution(ste(x), ste(kernel), strides, padding, dilations=dilations)
        out = dot * alpha
        if use_k:
            k_h, k_w = kernel.shape[0], kernel.shape[1]
            a = tf.reduce_mean(tf.abs(x), axis=-1, keepdims=True)
            box = tf.fill([k_h, k_w, 1, 1], 1.0 / (k_h * k_w))
            out = out * tf.nn.convolution(a, box, strides, padding, dilations=dilations)
        if bias is not None:
            out = out + bias
        return tf.nn.relu(out) if relu else out

    return simulation


@pytest.mark.parametrize(
    "padding,strides,dilations,use_k,relu,with_bias",
    [
        ("SAME", (1, 1), (1, 1), True, False, True),
        ("VALID", (2, 2), (1, 1), True, True, True),
        ("SAME", (1, 1), (2, 2), False, False, False),
        ("SAME", (2, 1), (1, 1), True, True, False),
    ],
)
@pytest.mark.parametrize("in_function", [False, True])
def test_bin_conv2d_gradients_equal_simulation(
    padding, strides, dilations, use_k, relu, with_bias, in_function
):
    rng = np.random.default_rng(7)
    x = tf.constant(random_input(rng, (2, 9, 8, 37)) * 0.8)
    kernel = tf.Variable(rng.uniform(-1, 1, (3, 3, 37, 6)).astype(np.float32))
    alpha = tf.Variable(rng.uniform(0.1, 1.0, (6,)).astype(np.float32))
    bias = tf.Variable(rng.uniform(-1, 1, (6,)).astype(np.float32)) if with_bias else None
    simulation = conv_simulation(strides, padding, dilations, use_k, relu)
    dy = tf.constant(rng.standard_normal((2,) + (9, 8) + (6,)).astype(np.float32))

    def gradients(use_op):
        sources = [x, kernel, alpha] + ([bias] if with_bias else [])
        with tf.GradientTape() as tape:
            tape.watch(x)
            if use_op:
                y = ops.bin_conv2d(x, kernel, alpha, bias, strides=strides, padding=padding,
                                   dilation_rate=dilations, use_k=use_k, relu=relu,
                                   simulation=simulation)
            else:
                y = simulation(x, tf.convert_to_tensor(kernel), tf.convert_to_tensor(alpha),
                               None if bias is None else tf.convert_to_tensor(bias))
            loss = tf.reduce_sum(y * dy[:, : y.shape[1], : y.shape[2], :])
        return y, tape.gradient(loss, sources)

    if in_function:
        gradients = tf.function(gradients, autograph=False, reduce_retracing=True)
    y_op, g_op = gradients(True)
    y_sim, g_sim = gradients(False)
    np.testing.assert_allclose(y_op.numpy(), y_sim.numpy(), rtol=1e-5, atol=1e-4)
    for a, b in zip(g_op, g_sim):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    assert any(np.abs(g.numpy()).max() > 0 for g in g_op)


def test_bin_dense_gradients_equal_simulation():
    rng = np.random.default_rng(3)
    x = tf.constant(random_input(rng, (4, 70)))
    kernel = tf.Variable(rng.uniform(-1, 1, (70, 9)).astype(np.float32))
    alpha = tf.constant(rng.uniform(0.1, 1.0, (9,)).astype(np.float32))
    bias = tf.Variable(np.zeros(9, np.float32))

    @tf.custom_gradient
    def ste(v):
        return tf.where(v < 0, -1.0, 1.0), lambda dy: dy * tf.cast(tf.abs(v) <= 1, dy.dtype)

    def simulation(i, k, a, b):
        k_mean = tf.reduce_mean(tf.abs(i), axis=-1, keepdims=True)
        return tf.nn.relu(tf.matmul(ste(i), ste(k)) * a * k_mean + b)

    def run(use_op):
        with tf.GradientTape() as tape:
            tape.watch([x, alpha])
            if use_op:
                y = ops.bin_dense(x, kernel, alpha, bias, use_k=True, relu=True,
                                  simulation=simulation)
            else:
                y = simulation(x, tf.convert_to_tensor(kernel), alpha,
                               tf.convert_to_tensor(bias))
            loss = tf.reduce_sum(y * tf.range(9, dtype=tf.float32))
        return y, tape.gradient(loss, [x, kernel, alpha, bias])

    (y_op, g_op), (y_sim, g_sim) = run(True), run(False)
    np.testing.assert_allclose(y_op.numpy(), y_sim.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(g_op, g_sim):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


def test_raw_op_registered_gradients():
    rng = np.random.default_rng(11)
    x = tf.constant(random_input(rng, (2, 6, 6, 40)) * 2.0)  # some |x| > 1: STE cuts there
    w = random_input(rng, (3, 3, 40, 5))
    filt = ops.pack_bits(np.transpose(w, [3, 0, 1, 2]))
    alpha = tf.constant(rng.uniform(0.5, 1.0, (5,)).astype(np.float32))
    bias = tf.constant(np.zeros(5, np.float32))
    attrs = dict(strides=[1, 1], padding="SAME", dilations=[1, 1], in_channels=40)
    dy = tf.constant(rng.standard_normal((2, 6, 6, 5)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, alpha, bias])
        y = raw_conv(x, filt, alpha, bias, use_k=False, relu=False, **attrs)
        y_ref = ops.bin_conv2d_reference(x, filt, alpha, bias, use_k=False, relu=False, **attrs)
    g = tape.gradient(y, [x, filt, alpha, bias], output_gradients=dy)
    g_ref = tape.gradient(y_ref, [x, alpha, bias], output_gradients=dy)
    assert g[1] is None  # integer filter
    for a, b in zip([g[0], g[2], g[3]], g_ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    # Analytic forms: output is linear in alpha and bias; STE passes nothing where |x| > 1.
    np.testing.assert_allclose(g[3].numpy(), dy.numpy().sum(axis=(0, 1, 2)), rtol=1e-5)
    dot = y.numpy() / alpha.numpy()
    np.testing.assert_allclose(g[2].numpy(), (dy.numpy() * dot).sum(axis=(0, 1, 2)),
                               rtol=1e-4)
    assert np.all(g[0].numpy()[np.abs(x.numpy()) > 1] == 0)
    assert np.abs(g[0].numpy()[np.abs(x.numpy()) <= 1]).max() > 0

    # The same gradient when TF builds it in a graph (tf.function).
    @tf.function(autograph=False)
    def graph_gradient(v):
        with tf.GradientTape() as inner:
            inner.watch(v)
            out = raw_conv(v, filt, alpha, bias, use_k=False, relu=False, **attrs)
        return inner.gradient(out, v, output_gradients=dy)

    np.testing.assert_allclose(graph_gradient(x).numpy(), g[0].numpy(), rtol=1e-6, atol=1e-6)

    xd = tf.constant(random_input(rng, (3, 50)))
    filt_d = ops.pack_bits(random_input(rng, (4, 50)))
    with tf.GradientTape() as tape:
        tape.watch(xd)
        yd = raw_dense(xd, filt_d, tf.ones([4]), tf.zeros([4]), in_channels=50, use_k=True,
                       relu=False)
    assert tape.gradient(yd, xd).shape == xd.shape


# ---------------------------------------------------------------------------------------------
# Malformed input: always InvalidArgumentError with a readable message, never a crash.

GOOD_X = np.zeros([1, 5, 5, 40], np.float32)
GOOD_F = np.zeros([3, 3, 3, 2], np.int32)
GOOD_A = np.ones([3], np.float32)
GOOD_ATTRS = dict(strides=[1, 1], padding="SAME", dilations=[1, 1], in_channels=40,
                  use_k=True, relu=False)


def conv_args(**changes):
    args = dict(x=GOOD_X, f=GOOD_F, a=GOOD_A, b=GOOD_A * 0)
    attrs = dict(GOOD_ATTRS)
    for key, value in changes.items():
        (args if key in args else attrs)[key] = value
    return args, attrs


CONV_ERRORS = [
    (dict(x=np.zeros([5, 5, 40], np.float32)), "input must be 4-D"),
    (dict(f=np.zeros([3, 3, 2], np.int32)), "filter must be 4-D"),
    (dict(a=np.ones([3, 1], np.float32)), "alpha and bias must be 1-D"),
    (dict(x=np.zeros([1, 5, 5, 41], np.float32)), "41 channels but the in_channels"),
    (dict(f=np.zeros([3, 3, 3, 1], np.int32), in_channels=40), "40 channels need 2"),
    (dict(a=np.ones([4], np.float32)), "one value per filter"),
    (dict(b=np.ones([2], np.float32)), "one value per filter"),
    (dict(f=np.zeros([3, 12, 3, 2], np.int32)), "kernel size must be between 1 and 11"),
    (dict(f=np.zeros([3, 3, 0, 2], np.int32)), "kernel size must be between 1 and 11"),
    (dict(f=np.zeros([0, 3, 3, 2], np.int32), a=np.ones([0], np.float32),
          b=np.ones([0], np.float32)), "at least one output channel"),
    (dict(strides=[1]), "strides must have 2 elements"),
    (dict(strides=[0, 1]), "strides must be >= 1"),
    (dict(dilations=[1, 1, 1, 1]), "dilations must have 2 elements"),
    (dict(dilations=[1, -2]), "dilations must be >= 1"),
    (dict(padding="same "), 'padding must be "SAME" or "VALID"'),
    (dict(padding="FULL"), 'padding must be "SAME" or "VALID"'),
    (dict(in_channels=0, x=np.zeros([1, 5, 5, 0], np.float32)), "in_channels must be >= 1"),
    (dict(padding="VALID", f=np.zeros([3, 7, 7, 2], np.int32)), "empty|dilated kernel size"),
    (dict(padding="VALID", dilations=[3, 3]), "empty|dilated kernel size"),
    (dict(x=np.zeros([1, 0, 5, 40], np.float32), padding="VALID"), "input height"),
    # Padding bits past the 40 channels (bit 8 of the second word) must be 0.
    (dict(f=np.tile(np.array([0, 1 << 8], np.int32), [3, 3, 3, 1])), "padding bits set"),
    (dict(x=tf.zeros([1, 5, 5, 40], tf.int32)), "float"),
    (dict(f=tf.zeros([3, 3, 3, 2], tf.float32)), "int32"),
    (dict(a=tf.ones([3], tf.float64)), "float"),
]


@pytest.mark.parametrize("changes,message", CONV_ERRORS)
def test_bin_conv2d_invalid_arguments(changes, message):
    args, attrs = conv_args(**changes)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        raw_conv(args["x"], args["f"], args["a"], args["b"], **attrs)
    assert re.search(message, str(info.value)), str(info.value)


DENSE_ERRORS = [
    (dict(x=np.zeros([2, 3, 40], np.float32)), "input must be 2-D"),
    (dict(f=np.zeros([3], np.int32)), "filter must be 2-D"),
    (dict(x=np.zeros([2, 39], np.float32)), "39 features but the in_channels"),
    (dict(f=np.zeros([3, 3], np.int32)), "40 features need 2"),
    (dict(a=np.ones([2], np.float32)), "one value per unit"),
    (dict(b=np.ones([3, 1], np.float32)), "must be 1-D"),
    (dict(f=np.zeros([0, 2], np.int32), a=np.ones([0], np.float32), b=np.ones([0], np.float32)),
     "at least one unit"),
    (dict(in_channels=-1), "in_channels must be >= 1"),
    (dict(f=np.array([[0, 0], [0, -1], [0, 0]], np.int32)), "filter row 1 .*padding bits set"),
]


@pytest.mark.parametrize("changes,message", DENSE_ERRORS)
def test_bin_dense_invalid_arguments(changes, message):
    args = dict(x=np.zeros([2, 40], np.float32), f=np.zeros([3, 2], np.int32),
                a=np.ones([3], np.float32), b=np.zeros([3], np.float32))
    attrs = dict(in_channels=40, use_k=True, relu=False)
    for key, value in changes.items():
        (args if key in args else attrs)[key] = value
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        raw_dense(args["x"], args["f"], args["a"], args["b"], **attrs)
    assert re.search(message, str(info.value)), str(info.value)


@pytest.mark.parametrize("x", [np.float32(1.0), np.zeros([4, 0], np.float32)])
def test_pack_bits_invalid_arguments(x):
    with pytest.raises(tf.errors.InvalidArgumentError, match="KerasXnorPackBits"):
        ops.pack_bits(x)


def test_shape_functions_reject_malformed_graphs():
    # In a tf.function the shape function catches the error while tracing.
    filt = np.zeros([3, 3, 3, 1], np.int32)  # 1 word, but 40 channels need 2
    fn = tf.function(lambda x: raw_conv(x, filt, GOOD_A, GOOD_A, **GOOD_ATTRS))
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="40 channels need 2"):
        fn.get_concrete_function(tf.TensorSpec([None, None, None, 40]))
    fn = tf.function(lambda x: raw_conv(x, GOOD_F, GOOD_A, GOOD_A, **GOOD_ATTRS))
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="rank 4"):
        fn.get_concrete_function(tf.TensorSpec([None, 40]))


def test_wrapper_argument_errors():
    simulation = conv_simulation((1, 1), "SAME", (1, 1), False, False)
    kernel = np.zeros([3, 3, 40, 3], np.float32)
    for kwargs, message in [
        (dict(strides=(1, 1, 1)), "strides"),
        (dict(dilation_rate=0), "dilation_rate"),
        (dict(padding="causal"), "padding"),
        (dict(strides=(1.5, 2)), "strides"),  # not truncated to 1
        (dict(dilation_rate=(True, 1)), "dilation_rate"),
    ]:
        call = dict(strides=(1, 1), padding="same", dilation_rate=(1, 1), use_k=False,
                    relu=False, simulation=simulation)
        call.update(kwargs)
        with pytest.raises(ValueError, match=message):
            ops.bin_conv2d(GOOD_X, kernel, GOOD_A, None, **call)


@pytest.mark.parametrize("channels", [0, 33, 40])
def test_unpack_bits_reference_refuses_channels_the_words_do_not_hold(channels):
    with pytest.raises(ValueError, match="1 packed words per row hold 1 to 32 channels"):
        ops.unpack_bits_reference(np.zeros([2, 1], np.int32), channels)
