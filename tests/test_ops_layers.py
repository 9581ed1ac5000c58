"""The compiled ops under the real layers: BinConv2D / BinDense with implementation="compiled"
against the same layers with implementation="simulation" (the float oracle).

Forward: bit-exact where the maths is integer (no scales), float stage within 1e-5 relative.
Backward: in inference the fused op is differentiated through the simulation; in training the
op computes only the +-1 dot, differentiated as the float conv. Gradients agree to rounding.
Training: model.fit with tf.function (Keras' jit_compile="auto" is off on CPU) follows the
simulation's loss curve.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_xnor
from keras_xnor import ops

# A helper of a neighbouring test module (tests/ is on sys.path under pytest).
from test_ops_weight_cache import packs  # noqa: E402

pytestmark = pytest.mark.skipif(
    not ops.compiled_ops_available(), reason="compiled ops not built (run `make ops`)"
)


def twin_layers(cls, input_shape, **kwargs):
    compiled = cls(implementation="compiled", **kwargs)
    simulated = cls(implementation="simulation", **kwargs)
    compiled.build(input_shape)
    simulated.build(input_shape)
    rng = np.random.default_rng(0)
    weights = [rng.uniform(-1, 1, w.shape).astype(np.float32) for w in compiled.get_weights()]
    compiled.set_weights(weights)
    simulated.set_weights(weights)
    return compiled, simulated


def input_batch(shape, seed=1):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 0.8).astype(np.float32)
    x[rng.random(shape) < 0.05] = 0.0
    return tf.constant(x)


def run(layer, x, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(y * y) / 2
    return y, tape.gradient(loss, [x] + layer.trainable_weights)


def assert_twins_agree(compiled, simulated, x, training):
    """Outputs and gradients (input, weights) of the two paths agree."""
    y_c, g_c = run(compiled, x, training)
    y_s, g_s = run(simulated, x, training)
    np.testing.assert_allclose(y_c.numpy(), y_s.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(g_c, g_s):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


CONV_CASES = [
    dict(filters=8, kernel_size=3, padding="same"),
    dict(filters=5, kernel_size=(5, 3), strides=2, padding="valid", use_bias=False),
    dict(filters=7, kernel_size=3, dilation_rate=2, padding="same", activation="relu"),
    dict(filters=6, kernel_size=1, kernel_scale="learned", use_k=False),
    dict(filters=4, kernel_size=3, strides=(2, 1), kernel_scale="none", padding="same"),
]


# training=True: the op computes the +-1 dot, TF the scales (binary_conv2d_dot);
# training=False: the fused op differentiated through the simulation (bin_conv2d).
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kwargs", CONV_CASES)
@pytest.mark.parametrize("channels", [1, 33, 70])
def test_bin_conv2d_layer_compiled_equals_simulation(kwargs, channels, training):
    shape = (2, 11, 10, channels)
    compiled, simulated = twin_layers(keras_xnor.BinConv2D, shape, **kwargs)
    x = input_batch(shape)
    assert_twins_agree(compiled, simulated, x, training)


def test_bin_conv2d_layer_integer_path_is_bit_exact():
    kwargs = dict(filters=9, kernel_size=3, padding="same", kernel_scale="none", use_k=False,
                  use_bias=False)
    shape = (3, 9, 7, 45)
    compiled, simulated = twin_layers(keras_xnor.BinConv2D, shape, **kwargs)
    x = input_batch(shape, seed=5)
    np.testing.assert_array_equal(compiled(x).numpy(), simulated(x).numpy())
    np.testing.assert_array_equal(compiled(x, training=True).numpy(), simulated(x).numpy())


@pytest.mark.parametrize("input_shape", [(3, 70), (2, 4, 33)])
@pytest.mark.parametrize("kwargs", [dict(units=10), dict(units=3, use_k=False,
                                                          activation="relu", use_bias=False)])
@pytest.mark.parametrize("training", [True, False])
def test_bin_dense_layer_compiled_equals_simulation(input_shape, kwargs, training):
    compiled, simulated = twin_layers(keras_xnor.BinDense, input_shape, **kwargs)
    x = input_batch(input_shape)
    assert_twins_agree(compiled, simulated, x, training)


# Quantized layers whose quantizers are both signs compute a +-1 product too: they run the
# ops (the fused op for inference, the dot op for training) with unit / BWN scales, no K.
SIGNS = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")
QUANT_CASES = [
    (keras_xnor.QuantConv2D, (2, 11, 10, 33), dict(filters=8, kernel_size=3, padding="same",
                                                  **SIGNS)),
    (keras_xnor.QuantConv2D, (1, 12, 9, 70),
     dict(filters=5, kernel_size=(5, 3), strides=2, activation="relu", use_bias=False,
          input_quantizer="approx_sign", kernel_quantizer="ste_sign")),
    (keras_xnor.QuantConv2D, (2, 9, 9, 6), dict(filters=7, kernel_size=3, dilation_rate=2,
                                               padding="same", activation="tanh", **SIGNS)),
    (keras_xnor.BWNConv2D, (2, 10, 10, 40), dict(filters=6, kernel_size=3, padding="same",
                                                kernel_scale="learned",
                                                input_quantizer="ste_sign")),
    (keras_xnor.QuantDense, (3, 70), dict(units=9, **SIGNS)),
    (keras_xnor.QuantDense, (2, 4, 33), dict(units=4, activation="relu", **SIGNS)),
    (keras_xnor.BWNDense, (3, 50), dict(units=5, input_quantizer="ste_sign")),
    # mean_abs_sign kernels: the op computes the +-1 product, mean|W| multiplies its output
    # (times the layer's own alpha for the BWN / XNOR layers).
    (keras_xnor.QuantConv2D, (2, 10, 9, 37), dict(filters=6, kernel_size=3, padding="same",
                                                 input_quantizer="ste_sign",
                                                 kernel_quantizer="mean_abs_sign")),
    (keras_xnor.QuantConv2D, (1, 11, 11, 20),
     dict(filters=4, kernel_size=5, strides=2, activation="relu", input_quantizer="ste_sign",
          kernel_quantizer=keras_xnor.quantizers.MeanAbsSign(clip_value=None))),
    (keras_xnor.QuantDense, (2, 3, 45), dict(units=7, input_quantizer="ste_sign",
                                             kernel_quantizer="mean_abs_sign")),
    (keras_xnor.BWNConv2D, (2, 8, 8, 12), dict(filters=5, kernel_size=3, kernel_scale="learned",
                                              input_quantizer="ste_sign",
                                              kernel_quantizer="mean_abs_sign")),
    (keras_xnor.BWNDense, (3, 40), dict(units=6, kernel_scale="none", input_quantizer="ste_sign",
                                        kernel_quantizer="mean_abs_sign")),
    (keras_xnor.BinConv2D, (2, 9, 9, 33), dict(filters=8, kernel_size=3, padding="same",
                                              kernel_quantizer="mean_abs_sign")),
    (keras_xnor.BinDense, (2, 50), dict(units=6, kernel_scale="learned",
                                        kernel_quantizer="mean_abs_sign")),
    # Grouped convs: one op per group (its input channels, its filters), concatenated.
    (keras_xnor.QuantConv2D, (2, 9, 8, 40), dict(filters=8, kernel_size=3, padding="same",
                                                groups=4, **SIGNS)),
    (keras_xnor.QuantConv2D, (1, 12, 11, 66),
     dict(filters=6, kernel_size=(3, 5), strides=2, groups=3, activation="relu",
          input_quantizer="approx_sign", kernel_quantizer="mean_abs_sign")),
    (keras_xnor.QuantConv2D, (2, 9, 9, 12), dict(filters=12, kernel_size=3, dilation_rate=2,
                                                groups=12, use_bias=False, **SIGNS)),
    (keras_xnor.BWNConv2D, (2, 8, 8, 70), dict(filters=10, kernel_size=1, groups=2,
                                              kernel_scale="learned",
                                              input_quantizer="ste_sign")),
]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cls, shape, kwargs", QUANT_CASES)
def test_quantized_layers_with_sign_quantizers_run_the_ops(cls, shape, kwargs, training):
    compiled, simulated = twin_layers(cls, shape, **kwargs)
    x = input_batch(shape)
    assert cls(**kwargs)._use_compiled(x)  # what "auto" picks on CPU
    assert_twins_agree(compiled, simulated, x, training)


@pytest.mark.parametrize("groups", [1, 3])
def test_quantized_conv_integer_path_is_bit_exact(groups):
    shape = (2, 9, 7, 45 * groups)
    compiled, simulated = twin_layers(keras_xnor.QuantConv2D, shape, filters=9, kernel_size=3,
                                      padding="same", use_bias=False, groups=groups, **SIGNS)
    x = input_batch(shape, seed=6)
    np.testing.assert_array_equal(compiled(x).numpy(), simulated(x).numpy())
    np.testing.assert_array_equal(compiled(x, training=True).numpy(), simulated(x).numpy())


def test_grouped_conv_packs_unchanged_weights_once():
    model = keras.Sequential([keras.Input((6, 6, 40)),
                              keras_xnor.QuantConv2D(8, 3, groups=4, **SIGNS)])
    x = np.random.default_rng(7).standard_normal((2, 6, 6, 40)).astype(np.float32)
    start = packs()
    for _ in range(3):
        model.predict(x, verbose=0)
    assert packs() - start == 1  # one filter for the four group ops


def test_auto_runs_the_simulation_for_very_many_groups():
    # Hundreds of per-group op calls are slower than TF's one grouped float conv; "compiled"
    # still runs them.
    shape = (1, 6, 6, 128)
    x = input_batch(shape)
    assert keras_xnor.QuantConv2D(128, 3, groups=64, **SIGNS)._use_compiled(x)
    many = keras_xnor.QuantConv2D(128, 3, groups=128, **SIGNS)
    assert not many._use_compiled(x)
    compiled, simulated = twin_layers(keras_xnor.QuantConv2D, shape, filters=128, kernel_size=3,
                                      padding="same", groups=128, **SIGNS)
    assert compiled._use_compiled(x)
    assert_twins_agree(compiled, simulated, x, training=False)


def test_grouped_bin_conv2d_refuses_the_k_map():
    with pytest.raises(ValueError, match="groups=2 needs use_k=False"):
        ops.bin_conv2d(tf.zeros([1, 5, 5, 4]), tf.zeros([3, 3, 2, 4]), None, None, strides=1,
                       padding="same", dilation_rate=1, use_k=True, relu=False,
                       simulation=None, groups=2)


@pytest.mark.parametrize("make, reason", [
    (lambda **k: keras_xnor.QuantConv2D(4, 3, input_quantizer="ste_sign", **k),
     "kernel_quantizer must be a sign quantizer"),
    (lambda **k: keras_xnor.QuantConv2D(4, 13, **SIGNS, **k), "kernels up to 11x11"),
    (lambda **k: keras_xnor.QuantDense(4, kernel_quantizer=tf.tanh,
                                       input_quantizer="ste_sign", **k),
     "kernel_quantizer must be a sign quantizer"),
    (lambda **k: keras_xnor.BWNDense(4, **k), "input_quantizer must be a sign quantizer"),
])
def test_quantized_layers_the_ops_cannot_serve_run_the_simulation(make, reason):
    layer = make()
    assert layer.implementation == "auto" and reason in "; ".join(
        layer._check_compiled_possible())
    with pytest.raises(ValueError, match=r"compiled'\) is not possible: .*" + reason):
        make(implementation="compiled")
    shape = (2, 16, 16, 4) if isinstance(layer, keras_xnor.QuantConv2D) else (2, 4)
    x = input_batch(shape)
    assert not layer._use_compiled(x)
    assert layer(x).shape[0] == 2


def small_model(implementation):
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((12, 12, 3)),
        keras.layers.Conv2D(16, 3, padding="same"),
        keras.layers.BatchNormalization(),
        keras_xnor.BinConv2D(32, 3, padding="same", implementation=implementation),
        keras.layers.MaxPooling2D(),
        keras.layers.BatchNormalization(),
        keras_xnor.BinConv2D(32, 3, strides=2, implementation=implementation),
        keras.layers.Flatten(),
        keras.layers.BatchNormalization(),
        keras_xnor.BinDense(16, implementation=implementation),
        keras.layers.Dense(4),
    ])


@pytest.mark.parametrize("jit_compile", ["auto", False])
def test_model_fit_with_compiled_ops_follows_simulation(jit_compile):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 12, 12, 3)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    histories = {}
    for implementation in ("compiled", "simulation"):
        model = small_model(implementation)
        model.compile(optimizer=keras.optimizers.SGD(0.05),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=jit_compile)
        history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
        assert model.jit_compile is False  # no XLA on a CPU-only machine / custom op
        histories[implementation] = history.history["loss"]
    assert all(np.isfinite(histories["compiled"]))
    assert histories["compiled"][-1] < histories["compiled"][0]
    np.testing.assert_allclose(histories["compiled"], histories["simulation"], rtol=2e-3)


def test_auto_implementation_trains_even_when_xla_is_requested():
    # The op has no XLA kernel: layers that will run it must opt the model out of XLA.
    model = small_model("auto")
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    x = np.random.default_rng(1).standard_normal((16, 12, 12, 3)).astype(np.float32)
    history = model.fit(x, np.zeros((16, 4), np.float32), batch_size=8, verbose=0)
    assert model.jit_compile is False
    assert np.isfinite(history.history["loss"][0])


def test_auto_layers_run_the_simulation_inside_xla_functions():
    # A user's tf.function(jit_compile=True) around the model: the auto layers trace the
    # simulation there (XLA has no kernel for the op), and it computes what the op does.
    model = small_model("auto")
    x = np.random.default_rng(3).standard_normal((4, 12, 12, 3)).astype(np.float32)
    xla = tf.function(lambda inputs: model(inputs), jit_compile=True)
    np.testing.assert_allclose(xla(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)

    @tf.function(jit_compile=True)
    def train_gradients(inputs):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(inputs, training=True) ** 2)
        return tape.gradient(loss, model.trainable_weights)

    assert all(np.all(np.isfinite(g.numpy())) for g in train_gradients(x))
    forced = small_model("compiled")
    with pytest.raises(ValueError, match=r"compiled'\) is not possible: XLA"):
        tf.function(lambda inputs: forced(inputs), jit_compile=True)(x)


def test_saved_model_export_runs_the_ops_after_load_ops(tmp_path):
    # model.export traces the inference graph, fused op and all; a fresh process registers
    # the ops with load_ops() and then serves the SavedModel with the same outputs.
    model = small_model("auto")
    x = np.random.default_rng(2).standard_normal((3, 12, 12, 3)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    path = str(tmp_path / "served")
    model.export(path, verbose=False)
    np.save(str(tmp_path / "x.npy"), x)
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import tensorflow as tf
        from keras_xnor import ops
        ops.load_ops()
        served = tf.saved_model.load(sys.argv[1])
        ops_in_graph = {op.type for f in served.serve.concrete_functions
                        for op in f.graph.get_operations()}
        ops_in_graph |= {n.op for f in served.serve.concrete_functions
                         for d in f.graph.as_graph_def().library.function for n in d.node_def}
        print("OPS", " ".join(sorted(t for t in ops_in_graph if t.startswith("KerasXnor"))))
        np.save(sys.argv[3], served.serve(np.load(sys.argv[2])).numpy())
    """)
    out_path = str(tmp_path / "y.npy")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", script, path, str(tmp_path / "x.npy"),
                             out_path], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "KerasXnorBinConv2D" in result.stdout and "KerasXnorBinDense" in result.stdout
    np.testing.assert_array_equal(np.load(out_path), expected)
