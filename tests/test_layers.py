"""Layers: forward against NumPy references of the paper's equations, gradients, config,
save/load, argument parity with Keras and argument errors."""

import inspect
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_xnor
from keras_xnor import quantizers


def _sign(x):
    return np.where(x < 0, -1.0, 1.0)


def _pads(size, k, s, d, padding):
    eff = (k - 1) * d + 1
    if padding == "valid":
        return (size - eff) // s + 1, 0
    out = -(-size // s)
    return out, max((out - 1) * s + eff - size, 0) // 2


def np_conv(x, w, strides=(1, 1), padding="valid", dilation=(1, 1)):
    """Direct NCHW-free reference: out[n,y,x,f] = sum over taps inside the image (zero padding)."""
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    oh, pt = _pads(h, kh, strides[0], dilation[0], padding)
    ow, pl = _pads(wd, kw, strides[1], dilation[1], padding)
    out = np.zeros((n, oh, ow, f), np.float64)
    for i in range(kh):
        for j in range(kw):
            for y in range(oh):
                yy = y * strides[0] + i * dilation[0] - pt
                if not 0 <= yy < h:
                    continue
                for xo in range(ow):
                    xx = xo * strides[1] + j * dilation[1] - pl
                    if 0 <= xx < wd:
                        out[:, y, xo, :] += x[:, yy, xx, :].astype(np.float64) @ w[i, j]
    return out


def np_k(x, kernel, strides, padding, dilation):
    a = np.abs(x).mean(-1, keepdims=True)
    ones = np.ones(kernel + (1, 1))
    return np_conv(a, ones, strides, padding, dilation) / (kernel[0] * kernel[1])


def np_xnor_conv(x, w, bias, strides, padding, dilation, use_k=True, scale="mean_abs"):
    """Eq. 11: (sign(I) * sign(W)) . K alpha + b."""
    dot = np_conv(_sign(x), _sign(w), strides, padding, dilation)
    alpha = np.abs(w).reshape(-1, w.shape[-1]).mean(0) if scale == "mean_abs" else 1.0
    out = dot * alpha
    if use_k:
        out = out * np_k(x, w.shape[:2], strides, padding, dilation)
    return out + (0 if bias is None else bias), dot


def _randomize(layer, seed):
    rng = np.random.RandomState(seed)
    layer.set_weights([rng.uniform(-1, 1, v.shape).astype(np.float32) for v in layer.get_weights()])


CONV_CASES = [
    # (h, w, c, filters, kernel, strides, padding, dilation)
    (7, 7, 5, 3, (3, 3), (1, 1), "same", (1, 1)),
    (7, 7, 5, 3, (3, 3), (1, 1), "valid", (1, 1)),
    (9, 8, 33, 4, (3, 3), (2, 2), "same", (1, 1)),
    (9, 8, 33, 4, (3, 3), (2, 2), "valid", (1, 1)),
    (6, 7, 70, 2, (2, 3), (1, 2), "same", (1, 1)),
    (8, 8, 3, 5, (3, 3), (1, 1), "same", (2, 2)),
    (5, 5, 1, 1, (1, 1), (1, 1), "valid", (1, 1)),
]


@pytest.mark.parametrize("h,w,c,f,kernel,strides,padding,dilation", CONV_CASES)
def test_bin_conv2d_matches_numpy_eq11(h, w, c, f, kernel, strides, padding, dilation):
    x = np.random.RandomState(0).randn(2, h, w, c).astype(np.float32)
    x[0, 0, 0, :2] = 0.0  # sign(0) = +1
    layer = keras_xnor.BinConv2D(
        f, kernel, strides=strides, padding=padding, dilation_rate=dilation,
        implementation="simulation",
    )
    layer.build(x.shape)
    _randomize(layer, 1)
    kern, bias = layer.get_weights()
    ref, _ = np_xnor_conv(x, kern, bias, strides, padding, dilation)
    out = layer(x).numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h,w,c,f,kernel,strides,padding,dilation", CONV_CASES[:5])
def test_bin_conv2d_dot_product_is_exact(h, w, c, f, kernel, strides, padding, dilation):
    x = np.random.RandomState(3).randn(2, h, w, c).astype(np.float32)
    layer = keras_xnor.BinConv2D(
        f, kernel, strides=strides, padding=padding, dilation_rate=dilation, use_k=False,
        kernel_scale="none", use_bias=False, implementation="simulation",
    )
    layer.build(x.shape)
    _randomize(layer, 4)
    _, dot = np_xnor_conv(x, layer.get_weights()[0], None, strides, padding, dilation)
    np.testing.assert_array_equal(layer(x).numpy(), dot.astype(np.float32))


@pytest.mark.parametrize("implementation", ["simulation", "auto"])
def test_same_padding_taps_contribute_zero_to_dot_and_k(implementation):
    """1x1 image, 3x3 kernel, SAME: only the centre tap is inside the image."""
    x = np.array([[[[-0.6, 0.3]]]], np.float32)
    layer = keras_xnor.BinConv2D(1, 3, padding="same", use_bias=False, kernel_scale="none",
                                 implementation=implementation)
    layer.build(x.shape)
    kernel = -np.ones((3, 3, 2, 1), np.float32)  # every padded tap would add -sign(0) = -1
    kernel[1, 1, :, 0] = [-0.5, 0.5]  # centre: sign(x) . sign(w) = (-1)(-1) + (1)(1) = 2
    layer.set_weights([kernel])
    k = (0.6 + 0.3) / 2 / 9  # mean_c |x| over the one valid tap, divided by kh * kw
    np.testing.assert_allclose(layer(x).numpy(), [[[[2 * k]]]], rtol=1e-6)


def test_bwn_conv2d_matches_numpy_eq4():
    x = np.random.RandomState(0).randn(2, 6, 6, 4).astype(np.float32)
    layer = keras_xnor.BWNConv2D(3, 3, padding="same")
    layer.build(x.shape)
    _randomize(layer, 2)
    kern, bias = layer.get_weights()
    alpha = np.abs(kern).reshape(-1, 3).mean(0)
    ref = np_conv(x, _sign(kern), padding="same") * alpha + bias
    np.testing.assert_allclose(layer(x).numpy(), ref, rtol=1e-5, atol=1e-5)


def test_quant_conv2d_without_quantizers_equals_keras_conv2d():
    x = np.random.RandomState(0).randn(2, 8, 8, 6).astype(np.float32)
    ours = keras_xnor.QuantConv2D(4, 3, strides=2, padding="same", activation="relu")
    ref = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")
    ours.build(x.shape)
    ref.build(x.shape)
    _randomize(ours, 5)
    ref.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), rtol=1e-5, atol=1e-6)


def test_grouped_quant_and_bwn_conv2d():
    x = np.random.RandomState(0).randn(2, 6, 6, 4).astype(np.float32)
    ours = keras_xnor.QuantConv2D(6, 3, groups=2)
    ref = keras.layers.Conv2D(6, 3, groups=2)
    ours.build(x.shape)
    ref.build(x.shape)
    _randomize(ours, 5)
    ref.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), rtol=1e-5, atol=1e-6)
    bwn = keras_xnor.BWNConv2D(6, 3, groups=2, use_bias=False)
    bwn.build(x.shape)
    (kern,) = bwn.get_weights()
    assert kern.shape == (3, 3, 2, 6)
    ref = keras.layers.Conv2D(6, 3, groups=2, use_bias=False)
    ref.build(x.shape)
    ref.set_weights([_sign(kern) * np.abs(kern).reshape(-1, 6).mean(0)])
    np.testing.assert_allclose(bwn(x).numpy(), ref(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(groups=2),
    dict(groups=3, strides=2, padding="same"),
    dict(groups=6, dilation_rate=2, padding="same"),
])
def test_grouped_quant_conv2d_trains_on_cpu_as_keras_conv2d(kwargs):
    # TF has no CPU kernel for the gradient of a grouped conv; the layer must still train.
    x = tf.constant(np.random.RandomState(1).randn(2, 9, 9, 6).astype(np.float32))
    ours = keras_xnor.QuantConv2D(12, 3, **kwargs)
    ref = keras.layers.Conv2D(12, 3, **kwargs)
    ours.build(x.shape)
    ref.build(x.shape)
    _randomize(ours, 7)
    ref.set_weights(ours.get_weights())
    grads = []
    for layer in (ours, ref):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) ** 2)
        grads.append(tape.gradient(loss, [x] + layer.trainable_weights))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


def test_quant_conv2d_with_quantizers():
    x = np.random.RandomState(0).randn(2, 6, 6, 3).astype(np.float32)
    layer = keras_xnor.QuantConv2D(
        2, 3, input_quantizer="ste_sign", kernel_quantizer="mean_abs_sign", use_bias=False
    )
    layer.build(x.shape)
    _randomize(layer, 6)
    (kern,) = layer.get_weights()
    alpha = np.abs(kern).reshape(-1, 2).mean(0)
    ref = np_conv(_sign(x), _sign(kern) * alpha)
    np.testing.assert_allclose(layer(x).numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank", [2, 3])
def test_bin_dense_matches_numpy(rank):
    shape = (4, 37) if rank == 2 else (3, 2, 37)
    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    layer = keras_xnor.BinDense(5, implementation="simulation")
    layer.build(x.shape)
    _randomize(layer, 7)
    kern, bias = layer.get_weights()
    alpha = np.abs(kern).mean(0)
    k = np.abs(x).mean(-1, keepdims=True)
    ref = (_sign(x) @ _sign(kern)) * alpha * k + bias
    out = layer(x).numpy()
    assert out.shape == shape[:-1] + (5,)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_bwn_and_quant_dense():
    x = np.random.RandomState(0).randn(4, 9).astype(np.float32)
    bwn = keras_xnor.BWNDense(3, use_bias=False)
    bwn.build(x.shape)
    _randomize(bwn, 8)
    (kern,) = bwn.get_weights()
    np.testing.assert_allclose(
        bwn(x).numpy(), x @ _sign(kern) * np.abs(kern).mean(0), rtol=1e-5, atol=1e-6
    )
    plain = keras_xnor.QuantDense(3)
    dense = keras.layers.Dense(3)
    plain.build(x.shape)
    dense.build(x.shape)
    dense.set_weights(plain.get_weights())
    np.testing.assert_allclose(plain(x).numpy(), dense(x).numpy(), rtol=1e-6)


def test_binary_activation_forward_and_ste():
    x = tf.constant([[-2.0, -0.5, 0.0, 0.5, 2.0]])
    layer = keras_xnor.BinaryActivation()
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    np.testing.assert_array_equal(y.numpy(), [[-1, -1, 1, 1, 1]])
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [[0, 1, 1, 1, 0]])


def test_use_k_false_and_kernel_scale_none():
    x = np.random.RandomState(0).randn(1, 5, 5, 4).astype(np.float32)
    layer = keras_xnor.BinConv2D(2, 3, use_k=False, kernel_scale="none", use_bias=False)
    layer.build(x.shape)
    _randomize(layer, 9)
    ref = np_conv(_sign(x), _sign(layer.get_weights()[0]))
    np.testing.assert_array_equal(layer(x).numpy(), ref.astype(np.float32))


def test_learned_alpha_is_a_trainable_weight_initialised_to_mean_abs():
    layer = keras_xnor.BinConv2D(3, 3, kernel_scale="learned")
    layer.build((None, 6, 6, 4))
    names = [v.path.split("/")[-1] for v in layer.trainable_weights]
    assert "alpha" in names
    np.testing.assert_allclose(
        layer.alpha.numpy(), np.abs(layer.kernel.numpy()).reshape(-1, 3).mean(0), rtol=1e-6
    )
    layer.alpha.assign([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(layer.get_alpha().numpy(), [1, 2, 3])
    x = tf.random.normal((1, 6, 6, 4))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x))
    grads = tape.gradient(loss, [layer.alpha, layer.kernel])
    assert all(g is not None for g in grads)


# --------------------------------------------------------------------------------------------
# Gradients


def test_bin_conv2d_input_gradient_is_ste_of_eq11():
    """dL/dI via sign's STE and via K (computed from |I|): compare with an explicit TF twin."""
    x = tf.constant(np.random.RandomState(0).uniform(-1.5, 1.5, (1, 5, 5, 3)).astype(np.float32))
    layer = keras_xnor.BinConv2D(2, 3, padding="same", implementation="simulation")
    layer.build(x.shape)
    _randomize(layer, 10)
    kern, bias = [tf.constant(v) for v in layer.get_weights()]

    def twin(t):
        dot = tf.nn.conv2d(quantizers.ste_sign(t), quantizers.sign(kern), 1, "SAME")
        k = quantizers.conv_k_map(t, 3, 1, "same")
        return dot * quantizers.mean_abs(kern) * k + bias

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        a, b = layer(x), twin(x)
    np.testing.assert_allclose(tape.gradient(a, x).numpy(), tape.gradient(b, x).numpy(), rtol=1e-5)


def test_binary_gradient_option_backward_is_plus_minus_max():
    x = tf.constant(np.random.RandomState(0).uniform(-0.9, 0.9, (2, 6, 6, 3)).astype(np.float32))
    up = tf.constant(np.random.RandomState(1).randn(2, 6, 6, 4).astype(np.float32))
    plain = keras_xnor.BinConv2D(4, 3, padding="same")
    binary = keras_xnor.BinConv2D(4, 3, padding="same", binary_gradient=True)
    plain.build(x.shape)
    binary.build(x.shape)
    _randomize(plain, 11)
    binary.set_weights(plain.get_weights())
    grads = []
    for layer in (plain, binary):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * up)
        grads.append(tape.gradient(loss, x).numpy())
    g, gb = grads
    np.testing.assert_array_equal(gb, np.sign(g) * np.abs(g).max(axis=(1, 2, 3), keepdims=True))
    for n in range(2):
        assert set(np.unique(np.abs(gb[n]))) <= {0.0, np.abs(g[n]).max()}


def test_kernel_gradient_flows_through_ste_and_alpha():
    x = tf.constant(np.random.RandomState(0).randn(2, 5, 5, 3).astype(np.float32))
    layer = keras_xnor.BWNConv2D(2, 3, use_bias=False)
    layer.build(x.shape)
    _randomize(layer, 12)
    kern = tf.constant(layer.get_weights()[0])

    def twin(w):
        return tf.nn.conv2d(x, quantizers.ste_sign(w), 1, "VALID") * quantizers.mean_abs(w)

    with tf.GradientTape() as tape:
        out = tf.reduce_sum(tf.square(layer(x)))
    g_layer = tape.gradient(out, layer.kernel)
    with tf.GradientTape() as tape:
        tape.watch(kern)
        out = tf.reduce_sum(tf.square(twin(kern)))
    np.testing.assert_allclose(g_layer.numpy(), tape.gradient(out, kern).numpy(), rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Config, saving, argument parity and errors


ALL_LAYERS = [
    lambda: keras_xnor.QuantConv2D(4, 3, padding="same", input_quantizer="approx_sign",
                                   kernel_quantizer=quantizers.SteSign(clip_value=2.0)),
    lambda: keras_xnor.BWNConv2D(4, (3, 2), strides=2, kernel_scale="learned"),
    lambda: keras_xnor.BinConv2D(4, 3, padding="same", activation="relu", use_k=False,
                                 binary_gradient=True, kernel_scale="none",
                                 implementation="simulation", name="xnor"),
    lambda: keras_xnor.QuantDense(3, input_quantizer="ste_sign"),
    lambda: keras_xnor.BWNDense(3, kernel_scale="learned"),
    lambda: keras_xnor.BinDense(3, activation="tanh", input_quantizer="approx_sign"),
    lambda: keras_xnor.BinaryActivation(quantizer="approx_sign", binary_gradient=True),
]


@pytest.mark.parametrize("make", ALL_LAYERS)
def test_config_round_trip(make):
    layer = make()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    generic = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(generic) is type(layer)
    assert generic.get_config() == config


def _mixed_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras_xnor.BinConv2D(8, 3, padding="same", activation="relu")(x)
    x = keras_xnor.BinConv2D(8, 3, strides=2, padding="same", kernel_scale="learned",
                             input_quantizer="approx_sign")(x)
    x = keras_xnor.BWNConv2D(8, 3, padding="same", kernel_scale="learned")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras_xnor.BinaryActivation()(x)
    x = keras_xnor.QuantConv2D(8, 3, kernel_quantizer="mean_abs_sign")(x)
    x = keras.layers.Flatten()(x)
    x = keras_xnor.BinDense(16)(x)
    x = keras_xnor.BWNDense(12)(x)
    x = keras_xnor.QuantDense(10, input_quantizer="ste_sign", kernel_quantizer="ste_sign")(x)
    return keras.Model(inputs, x)


def test_keras_save_load_is_bit_identical(tmp_path):
    model = _mixed_model()
    for layer in model.layers:
        if layer.weights:
            _randomize(layer, 13)
    x = np.random.RandomState(0).randn(3, 8, 8, 3).astype(np.float32)
    before = model(x).numpy()
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded(x).numpy(), before)
    for a, b in zip(model.layers, loaded.layers):
        assert type(a) is type(b)
        assert a.get_config() == b.get_config()


def _defaults(callable_):
    return {
        k: p.default
        for k, p in inspect.signature(callable_).parameters.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD
    }


def test_quant_conv2d_arguments_match_keras_conv2d():
    ours = _defaults(keras_xnor.QuantConv2D)
    ref = _defaults(keras.layers.Conv2D)
    ref.pop("lora_rank", None)
    ref.pop("lora_alpha", None)
    for name, default in ref.items():
        assert name in ours, name
        assert ours[name] == default, name
    assert list(ours)[: len(ref)] == list(ref)  # same positional order
    for cls in (keras_xnor.BinConv2D, keras_xnor.BWNConv2D):
        mine = _defaults(cls)
        for name, default in ref.items():
            assert name in mine, (cls, name)
            if name != "kernel_constraint":
                assert mine[name] == default, (cls, name)


def test_quant_dense_arguments_match_keras_dense():
    ours = _defaults(keras_xnor.QuantDense)
    ref = {
        k: v for k, v in _defaults(keras.layers.Dense).items()
        if k not in ("lora_rank", "lora_alpha", "quantization_config")
    }
    for name, default in ref.items():
        assert ours[name] == default, name
    assert list(ours)[: len(ref)] == list(ref)


def test_binary_layers_clip_latent_weights_by_default():
    layer = keras_xnor.BinConv2D(2, 3)
    assert isinstance(layer.kernel_constraint, keras_xnor.constraints.WeightClip)
    assert keras_xnor.BinConv2D(2, 3, kernel_constraint=None).kernel_constraint is None
    assert isinstance(keras_xnor.BinDense(2).kernel_constraint, keras_xnor.constraints.WeightClip)
    assert keras_xnor.QuantConv2D(2, 3).kernel_constraint is None


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: keras_xnor.BinConv2D(4, 3, data_format="channels_first"), "channels_last"),
        (lambda: keras_xnor.QuantConv2D(4, 3, data_format="channels_first"), "channels_last"),
        (lambda: keras_xnor.BinConv2D(0, 3), "filters.*positive"),
        (lambda: keras_xnor.BinConv2D(-2, 3), "filters.*positive"),
        (lambda: keras_xnor.BinDense(0), "units.*positive"),
        (lambda: keras_xnor.BinConv2D(4, 3, input_quantizer="sgn"), "Unknown quantizer.*ste_sign"),
        (lambda: keras_xnor.QuantDense(4, kernel_quantizer="binary"), "Unknown quantizer"),
        (lambda: keras_xnor.BinConv2D(4, 3, padding="causal"), "'valid' or 'same'"),
        (lambda: keras_xnor.BinConv2D(4, 3, padding="full"), "'valid' or 'same'"),
        (lambda: keras_xnor.BinConv2D(4, 3, kernel_scale="max"), "mean_abs"),
        (lambda: keras_xnor.BinConv2D(4, 3, implementation="fast"), "simulation"),
        (lambda: keras_xnor.BinConv2D(4, 0), "kernel_size"),
        (lambda: keras_xnor.BinConv2D(4, 3, strides=2, dilation_rate=2), "dilation_rate"),
        (
            lambda: keras_xnor.BinConv2D(4, 3, input_quantizer=None, implementation="compiled"),
            "sign quantizer",
        ),
        (lambda: keras_xnor.BinaryActivation(quantizer=None), "ste_sign"),
        (
            lambda: keras_xnor.BinaryActivation(quantizer="mean_abs_sign"),
            "BinaryActivation: .*kernel quantizer",
        ),
        (
            lambda: keras_xnor.QuantDense(4, input_quantizer="mean_abs_sign"),
            "QuantDense: .*kernel quantizer",
        ),
        (lambda: keras_xnor.BinConv2D(4, 3, groups=2), "BWNConv2D"),
        (lambda: keras_xnor.QuantConv2D(4, 3, groups=3), "divisible"),
    ],
)
def test_bad_arguments_raise_value_error_saying_what_to_do(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_strides_and_dilation_rejected_like_keras_conv2d():
    with pytest.raises(ValueError):
        keras.layers.Conv2D(4, 3, strides=2, dilation_rate=2)


def test_too_small_input_for_valid_padding():
    layer = keras_xnor.BinConv2D(2, 5)
    with pytest.raises(ValueError, match="padding='same'"):
        layer(np.zeros((1, 3, 3, 2), np.float32))


@pytest.mark.parametrize("implementation", ["simulation", "auto"])
def test_same_padding_on_an_empty_spatial_axis_gives_an_empty_output(implementation):
    # As keras Conv2D: SAME on a zero height or width is an empty output, not an error.
    x = np.zeros((2, 0, 5, 3), np.float32)
    for cls in (keras_xnor.BinConv2D, keras_xnor.QuantConv2D, keras_xnor.BWNConv2D):
        layer = cls(4, 3, padding="same", strides=2, implementation=implementation)
        assert layer(x).shape == (2, 0, 3, 4), cls
        assert layer(x, training=True).shape == (2, 0, 3, 4), cls


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras_xnor.QuantDense(3, input_quantizer="ste_sign", kernel_quantizer="ste_sign"),
        lambda: keras_xnor.QuantDense(3),
        lambda: keras_xnor.BinDense(3),
        lambda: keras_xnor.BWNConv2D(3, 2),
        lambda: keras_xnor.BinConv2D(3, 2, implementation="simulation"),
        lambda: keras_xnor.BinConv2D(3, 2),
        lambda: keras_xnor.BinaryActivation(),
    ],
)
def test_integer_inputs_compute_in_floats(make):
    # An integer input is cast to the compute dtype (as keras Dense does), not the float
    # kernel to the input's integer dtype (which truncated every |w| < 1 to 0).
    rng = np.random.default_rng(0)
    shape = (2, 5) if "Dense" in type(make()).__name__ else (2, 4, 4, 3)
    values = rng.integers(-3, 4, shape)
    layer = make()
    for dtype in (np.int32, np.int64, np.uint8):
        typed = values.astype(dtype)
        out = layer(tf.constant(typed))
        assert out.dtype == tf.float32
        expected = layer(typed.astype(np.float32)).numpy()
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_package_exports():
    for name in ("BinConv2D", "BinDense", "BWNConv2D", "BWNDense", "QuantConv2D", "QuantDense",
                 "BinaryActivation", "summary", "quantizers", "constraints", "spec", "ops",
                 "models", "__version__"):
        assert hasattr(keras_xnor, name), name
        assert name in dir(keras_xnor)
    assert callable(keras_xnor.ops.compiled_ops_available)
    with pytest.raises(AttributeError):
        keras_xnor.no_such_thing  # noqa: B018


def test_implementation_auto_uses_simulation_without_library():
    layer = keras_xnor.BinConv2D(2, 3)
    x = tf.random.normal((1, 5, 5, 3))
    layer(x)
    if not keras_xnor.ops.compiled_ops_available():
        assert not layer._use_compiled(x)


# --------------------------------------------------------------------------------------------
# Property test against the NumPy reference

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=20, deadline=None)
@given(
    h=st.integers(1, 7), w=st.integers(1, 7), c=st.integers(1, 40), f=st.integers(1, 3),
    kh=st.integers(1, 3), kw=st.integers(1, 3), stride=st.integers(1, 2),
    padding=st.sampled_from(["same", "valid"]), seed=st.integers(0, 2**16),
)
def test_bin_conv2d_property_matches_numpy(h, w, c, f, kh, kw, stride, padding, seed):
    if padding == "valid" and (h < kh or w < kw):
        return  # no output position; rejected at build (tested separately)
    rng = np.random.RandomState(seed)
    x = rng.randn(2, h, w, c).astype(np.float32)
    layer = keras_xnor.BinConv2D(f, (kh, kw), strides=stride, padding=padding,
                                 implementation="simulation")
    layer.build(x.shape)
    _randomize(layer, seed + 1)
    kern, bias = layer.get_weights()
    ref, _ = np_xnor_conv(x, kern, bias, (stride, stride), padding, (1, 1))
    np.testing.assert_allclose(layer(x).numpy(), ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Compiled op path (keras_xnor.ops): same numbers and gradients as the simulation

needs_ops = pytest.mark.skipif(
    not keras_xnor.ops.compiled_ops_available(),
    reason="compiled op library not built (make ops)",
)


def _twins(cls, *args, **kwargs):
    compiled = cls(*args, implementation="compiled", **kwargs)
    simulated = cls(*args, implementation="simulation", **kwargs)
    return compiled, simulated


def _forward_and_grads(layer, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * tf.sin(y))
    sources = [x] + list(layer.trainable_weights)
    return y.numpy(), [g.numpy() for g in tape.gradient(loss, sources)]


@needs_ops
@pytest.mark.parametrize("h,w,c,f,kernel,strides,padding,dilation", CONV_CASES)
@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
def test_compiled_bin_conv2d_matches_simulation(
    h, w, c, f, kernel, strides, padding, dilation, activation
):
    x = np.random.RandomState(0).randn(2, h, w, c).astype(np.float32)
    compiled, simulated = _twins(
        keras_xnor.BinConv2D, f, kernel, strides=strides, padding=padding,
        dilation_rate=dilation, activation=activation, kernel_scale="learned",
    )
    compiled.build(x.shape)
    simulated.build(x.shape)
    _randomize(compiled, 1)
    simulated.set_weights(compiled.get_weights())
    y_c, g_c = _forward_and_grads(compiled, x)
    y_s, g_s = _forward_and_grads(simulated, x)
    np.testing.assert_allclose(y_c, y_s, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_c, g_s):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@needs_ops
@pytest.mark.parametrize("h,w,c,f,kernel,strides,padding,dilation", CONV_CASES)
def test_compiled_bin_conv2d_dot_is_bit_identical(h, w, c, f, kernel, strides, padding, dilation):
    x = np.random.RandomState(5).randn(3, h, w, c).astype(np.float32)
    x[0, 0, 0, 0] = 0.0
    compiled, simulated = _twins(
        keras_xnor.BinConv2D, f, kernel, strides=strides, padding=padding,
        dilation_rate=dilation, use_k=False, kernel_scale="none", use_bias=False,
    )
    compiled.build(x.shape)
    simulated.build(x.shape)
    _randomize(compiled, 2)
    simulated.set_weights(compiled.get_weights())
    np.testing.assert_array_equal(compiled(x).numpy(), simulated(x).numpy())


@needs_ops
@pytest.mark.parametrize("shape", [(4, 37), (3, 2, 70), (1, 1)])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_compiled_bin_dense_matches_simulation(shape, activation):
    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    compiled, simulated = _twins(keras_xnor.BinDense, 5, activation=activation)
    compiled.build(x.shape)
    simulated.build(x.shape)
    _randomize(compiled, 3)
    simulated.set_weights(compiled.get_weights())
    y_c, g_c = _forward_and_grads(compiled, x)
    y_s, g_s = _forward_and_grads(simulated, x)
    assert y_c.shape == shape[:-1] + (5,)
    np.testing.assert_allclose(y_c, y_s, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_c, g_s):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@needs_ops
@pytest.mark.parametrize("kernel_size", [13, (1, 12), (12, 3)])
def test_kernels_above_the_core_limit_run_the_simulation(kernel_size, monkeypatch):
    with pytest.raises(ValueError, match="kernels up to 11x11"):
        keras_xnor.BinConv2D(3, kernel_size, implementation="compiled")

    def must_not_run(*args, **kwargs):
        raise AssertionError("op called")

    x = np.random.RandomState(0).randn(2, 15, 14, 5).astype(np.float32)
    auto = keras_xnor.BinConv2D(3, kernel_size, padding="same")
    simulated = keras_xnor.BinConv2D(3, kernel_size, padding="same",
                                     implementation="simulation")
    auto.build(x.shape)
    simulated.build(x.shape)
    simulated.set_weights(auto.get_weights())
    monkeypatch.setattr(keras_xnor.ops, "bin_conv2d", must_not_run)
    monkeypatch.setattr(keras_xnor.ops, "binary_conv2d_dot", must_not_run)
    np.testing.assert_array_equal(auto(x).numpy(), simulated(x).numpy())
    np.testing.assert_array_equal(auto(x, training=True).numpy(), simulated(x).numpy())
    assert auto.supports_jit  # no op, so XLA stays possible


@needs_ops
def test_auto_uses_compiled_op_on_cpu_and_disables_xla(monkeypatch):
    calls = []
    real = keras_xnor.ops.bin_conv2d

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(keras_xnor.ops, "bin_conv2d", spy)
    layer = keras_xnor.BinConv2D(2, 3, activation="relu", padding="same")
    layer(np.zeros((1, 4, 4, 3), np.float32))
    assert len(calls) == 1 and calls[0]["relu"] is True and calls[0]["padding"] == "same"
    assert layer.supports_jit is False
    layer(np.zeros((1, 4, 4, 3), np.float32), training=True)
    assert len(calls) == 1  # auto trains with the simulation (the op's backward needs it)
    keras_xnor.BinConv2D(2, 3, activation="tanh", implementation="simulation")(
        np.zeros((1, 4, 4, 3), np.float32)
    )
    keras_xnor.BinConv2D(2, 3, input_quantizer=lambda x: tf.clip_by_value(x, -1.0, 1.0))(
        np.zeros((1, 4, 4, 3), np.float32)
    )
    assert len(calls) == 1  # forced simulation / non-sign quantizer: no op


@needs_ops
@pytest.mark.parametrize("make", [
    lambda **kw: keras_xnor.BinConv2D(2, 3, **kw),
    lambda **kw: keras_xnor.BinDense(2, **kw),
    lambda **kw: keras_xnor.QuantConv2D(2, 3, input_quantizer="ste_sign",
                                        kernel_quantizer="ste_sign", **kw),
])
def test_xla_stays_possible_for_forced_simulation(make):
    # BinConv2D / BinDense set their implementation after their parent's __init__ ran with
    # "auto" (which, with the ops, turns XLA off): "simulation" must turn it back on.
    assert make(implementation="simulation").supports_jit is True
    assert make(implementation="compiled").supports_jit is False
    assert make().supports_jit is False  # auto on a CPU with the ops runs them


def test_without_library_auto_simulates_and_compiled_raises(monkeypatch):
    ops = keras_xnor.ops

    def missing():
        raise ops.CompiledOpsError("not built; run `make ops`")

    def must_not_run(*args, **kwargs):
        raise AssertionError("op called")

    monkeypatch.setattr(ops, "compiled_ops_available", lambda: False)
    monkeypatch.setattr(ops, "load_ops", missing)
    monkeypatch.setattr(ops, "bin_conv2d", must_not_run)
    monkeypatch.setattr(ops, "bin_dense", must_not_run)
    x = np.random.RandomState(0).randn(1, 4, 4, 3).astype(np.float32)
    keras_xnor.BinConv2D(2, 3)(x)
    keras_xnor.BinDense(2)(x.reshape(1, -1))
    with pytest.raises(ImportError, match="make ops"):
        keras_xnor.BinConv2D(2, 3, implementation="compiled")(x)
