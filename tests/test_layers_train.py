"""A small model mixing every keras_xnor layer trains with model.fit."""

import keras
import numpy as np
import pytest

import keras_xnor


def _data(n=256, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 8, 8, 2).astype(np.float32)
    # Label: which quadrant has the largest mean of channel 0 (learnable by a small conv net).
    quads = np.stack(
        [x[:, :4, :4, 0], x[:, :4, 4:, 0], x[:, 4:, :4, 0], x[:, 4:, 4:, 0]], axis=1
    ).mean(axis=(2, 3))
    return x, quads.argmax(1)


def _model():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(16, 3, padding="same")(inputs)  # first layer full precision
    x = keras.layers.BatchNormalization()(x)
    x = keras_xnor.BinConv2D(16, 3, padding="same", activation="relu")(x)  # B-A-C block
    x = keras.layers.BatchNormalization()(x)
    x = keras_xnor.BinConv2D(16, 3, padding="same", kernel_scale="learned",
                             input_quantizer="approx_sign", binary_gradient=True)(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras_xnor.BWNConv2D(16, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras_xnor.BinaryActivation()(x)
    x = keras_xnor.QuantConv2D(16, 1, kernel_quantizer="mean_abs_sign")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras_xnor.BinDense(32)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras_xnor.BWNDense(16, kernel_scale="learned")(x)
    x = keras_xnor.QuantDense(16, input_quantizer="ste_sign", kernel_quantizer="ste_sign")(x)
    outputs = keras.layers.Dense(4)(x)  # last layer full precision
    return keras.Model(inputs, outputs)


def test_mixed_model_fit_decreases_loss_and_keeps_latent_weights_clipped():
    keras.utils.set_random_seed(0)
    x, y = _data()
    model = _model()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, batch_size=32, epochs=6, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert after < before, (before, after)
    assert history.history["loss"][-1] < history.history["loss"][0]
    for layer in model.layers:
        if isinstance(layer, (keras_xnor.BWNConv2D, keras_xnor.BWNDense)):
            kernel = layer.kernel.numpy()
            assert np.abs(kernel).max() <= 1.0, layer.name


@pytest.mark.skipif(
    not keras_xnor.ops.compiled_ops_available(), reason="compiled op library not built (make ops)"
)
def test_fit_with_forced_compiled_op_matches_simulation_training():
    """implementation="compiled" in model.fit (graph mode): forward by the op, gradients of the
    simulation, so training follows the simulation's trajectory up to float rounding."""
    x, y = _data(n=64, seed=1)
    losses = {}
    for impl in ("compiled", "simulation"):
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [
                keras.Input((8, 8, 2)),
                keras.layers.Conv2D(8, 3, padding="same"),
                keras.layers.BatchNormalization(),
                keras_xnor.BinConv2D(8, 3, padding="same", activation="relu", implementation=impl),
                keras.layers.Flatten(),
                keras.layers.BatchNormalization(),
                keras_xnor.BinDense(16, implementation=impl),
                keras.layers.Dense(4),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.SGD(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        losses[impl] = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False).history[
            "loss"
        ]
    np.testing.assert_allclose(losses["compiled"], losses["simulation"], rtol=1e-3)
