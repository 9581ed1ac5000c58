"""Keras vs TFLite + keras-xnor delegate: the exported model computes what the Keras model does.

Every binary layer type (BinConv2D SAME / VALID / stride 2 / non-square kernel, BinDense, fused
ReLU, BN after a binary conv and dense to exercise folding), batch > 1, 1 and 2 threads, and
inputs resized after allocation. The integer path (no scales, no bias) is compared bit-exactly.
"""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")
import keras_xnor  # noqa: E402
from keras_xnor import tflite_export  # noqa: E402
from keras_xnor.tflite_export import (  # noqa: E402
    Interpreter,
    builtin_op_names,
    convert,
    custom_ops,
)


def _randomize_batch_norms(model, rng):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 2.0, n), rng.normal(0, 0.3, n), rng.normal(0, 0.3, n),
                 rng.uniform(0.5, 2.0, n)]
            )


def _all_kinds_model(rng):
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras_xnor.BinConv2D(40, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)  # folded into the conv above
    x = keras.layers.ReLU()(x)
    x = keras_xnor.BinConv2D(33, 3, strides=2, padding="valid", activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)  # after a ReLU: not folded
    x = keras_xnor.BinConv2D(16, (3, 2), strides=2, padding="same", kernel_scale="none",
                             use_k=False)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras_xnor.BinDense(70, kernel_scale="learned")(x)
    x = keras.layers.BatchNormalization()(x)  # folded into the dense above
    x = keras.layers.Dense(10)(x)
    model = keras.Model(inp, x)
    _randomize_batch_norms(model, rng)
    return model


@pytest.fixture(scope="module")
def all_kinds():
    rng = np.random.default_rng(0)
    model = _all_kinds_model(rng)
    return model, convert(model)


def _run(interpreter, x):
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.parametrize("num_threads", [1, 2])
def test_keras_and_tflite_agree_with_resizes(all_kinds, num_threads):
    model, data = all_kinds
    rng = np.random.default_rng(num_threads)
    interpreter = Interpreter(model_content=data, num_threads=num_threads)
    # Batch > 1, then a different batch and spatial size on the same interpreter.
    for shape in [(3, 13, 11, 3), (1, 9, 16, 3), (4, 13, 11, 3)]:
        x = rng.standard_normal(shape).astype(np.float32)
        expected = model(x, training=False).numpy()
        got = _run(interpreter, x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_binary_layers_are_custom_ops_and_bn_is_folded(all_kinds):
    _, data = all_kinds
    names = builtin_op_names(data)
    assert names.count("KerasXnorBinConv2D") == 3
    assert names.count("KerasXnorBinDense") == 1
    # BN -> MUL + ADD when not folded. Left: the one after the ReLU'd conv and the one before
    # the dense (the converter folds the BN after the float conv itself).
    assert names.count("MUL") == 2 and names.count("ADD") == 2, names
    ops = custom_ops(data)
    # Folded BN: alpha and bias of the first conv carry the BN's scale and shift.
    first = ops[0]
    assert first["options"]["padding"] == "SAME"
    assert first["inputs"][0] is None  # run-time input
    assert first["inputs"][1].dtype == np.int32 and first["inputs"][1].shape == (40, 3, 3, 1)


def _integer_model():
    inp = keras.Input((9, 7, 37))
    a = keras_xnor.BinConv2D(5, 3, padding="same", kernel_scale="none", use_k=False,
                             use_bias=False)(inp)
    b = keras_xnor.BinConv2D(6, 3, strides=2, padding="valid", kernel_scale="none", use_k=False,
                             use_bias=False)(inp)
    c = keras_xnor.BinConv2D(7, (2, 3), strides=2, padding="same", kernel_scale="none",
                             use_k=False, use_bias=False)(inp)
    d = keras_xnor.BinDense(65, kernel_scale="none", use_k=False, use_bias=False)(
        keras.layers.Flatten()(inp))
    e = keras_xnor.BinConv2D(4, 3, dilation_rate=2, padding="same", kernel_scale="none",
                             use_k=False, use_bias=False)(inp)
    return keras.Model(inp, [a, b, c, d, e])


def test_integer_path_is_bit_exact():
    model = _integer_model()
    data = convert(model)
    x = np.random.default_rng(5).standard_normal((2, 9, 7, 37)).astype(np.float32)
    x[0, 0, 0, :5] = 0.0  # sign(0) = +1 on both sides
    expected = [y.numpy() for y in model(x, training=False)]
    interpreter = Interpreter(model_content=data, num_threads=2)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    outputs = {tuple(d["shape"]): interpreter.get_tensor(d["index"])
               for d in interpreter.get_output_details()}
    for want in expected:
        got = outputs[want.shape]
        assert np.array_equal(got, want), np.abs(got - want).max()
        assert np.array_equal(got, np.round(got))  # integer dot products


def test_packed_weights_are_constants_and_32x_smaller():
    inp = keras.Input((8, 8, 256))
    x = keras_xnor.BinConv2D(256, 3, padding="same")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras_xnor.BinDense(512)(x))
    data = convert(model)
    float_bytes = 4 * (3 * 3 * 256 * 256 + 256 * 512)
    assert len(data) < float_bytes / 25, (len(data), float_bytes)
    conv, dense = custom_ops(data)
    kernel = np.asarray(model.layers[1].kernel)
    expected = tflite_export.pack_signs(np.transpose(kernel, (3, 0, 1, 2)))
    np.testing.assert_array_equal(conv["inputs"][1], expected)
    np.testing.assert_allclose(conv["inputs"][2], np.mean(np.abs(kernel), axis=(0, 1, 2)),
                               rtol=1e-5)
    np.testing.assert_array_equal(
        dense["inputs"][1], tflite_export.pack_signs(np.asarray(model.layers[3].kernel).T))
    assert "PackBits" not in " ".join(builtin_op_names(data))


def test_pack_signs_layout():
    values = np.zeros((2, 40), np.float32)
    values[0, [0, 31, 32, 39]] = -1.0
    values[1, :] = -0.0  # -0.0 is +1: no bits
    values[1, 5] = np.nan  # NaN is +1
    packed = tflite_export.pack_signs(values)
    assert packed.dtype == np.int32 and packed.shape == (2, 2)
    assert packed[0, 0] == np.int32(np.uint32(1 | 1 << 31).view(np.int32))
    assert packed[0, 1] == (1 | 1 << 7)
    assert packed[1].tolist() == [0, 0]


def test_subclassed_model_is_refused_clearly():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras_xnor.BinConv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    model = Sub()
    model(np.zeros((1, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="functional"):
        convert(model)


def test_cli_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    inp = keras.Input((6, 6, 4))
    x = keras_xnor.BinConv2D(8, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))
    _randomize_batch_norms(model, rng)
    path = str(tmp_path / "m.keras")
    out = str(tmp_path / "m.tflite")
    model.save(path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "keras_xnor.tflite_export", path, out],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # stdout is the CLI's own line only, not the converter's SavedModel listing
    assert result.stdout.splitlines() == ["wrote %s (%d bytes)" % (out, os.path.getsize(out))]
    x = rng.standard_normal((2, 6, 6, 4)).astype(np.float32)
    got = _run(Interpreter(model_path=out), x)
    np.testing.assert_allclose(got, model(x, training=False).numpy(), rtol=1e-4, atol=1e-4)
    from keras_xnor.tflite_export import cli  # noqa: PLC0415

    with pytest.raises(SystemExit) as exit_info:
        cli.run([str(tmp_path / "missing.keras"), out])
    assert exit_info.value.code != 0


def test_convert_prints_nothing(capsys):
    inp = keras.Input((5, 5, 3))
    model = keras.Model(inp, keras_xnor.BinConv2D(4, 3)(inp))
    capsys.readouterr()
    assert len(convert(model)) > 0
    assert capsys.readouterr().out == ""


def test_float16_float_layers_and_rank3_dense():
    rng = np.random.default_rng(7)
    inp = keras.Input((5, 12))
    x = keras.layers.Dense(40)(inp)
    x = keras_xnor.BinDense(24)(x)  # rank-3 input: per position along the last axis
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inp, keras.layers.Dense(6)(x))
    _randomize_batch_norms(model, rng)
    full = convert(model)
    half = convert(model, float_weights="float16")
    assert len(half) < len(full)
    x = rng.standard_normal((3, 5, 12)).astype(np.float32)
    expected = model(x, training=False).numpy()
    np.testing.assert_allclose(_run(Interpreter(model_content=full), x), expected,
                               rtol=1e-4, atol=1e-4)
    got = _run(Interpreter(model_content=half), x)
    # float16 weights: a weight rounding can flip a sign feeding the binary layer, so compare
    # loosely (the binary layer's own operands stay exact: packed int32 and float32 alpha).
    assert np.mean(np.abs(got - expected)) < 0.05 * np.mean(np.abs(expected))
    with pytest.raises(ValueError, match="float_weights"):
        convert(model, float_weights="int8")


def test_sequential_and_nested_models_fold_only_where_exact():
    rng = np.random.default_rng(11)
    seq = keras.Sequential([
        keras.Input((8, 8, 5)), keras_xnor.BinConv2D(7, 3, padding="same"),
        keras.layers.BatchNormalization(), keras.layers.GlobalAveragePooling2D(),
        keras_xnor.BinDense(4)])
    # A nested model that outputs both the conv and its BN: folding would change the first.
    i = keras.Input((8, 8, 5))
    conv = keras_xnor.BinConv2D(6, 3)(i)
    inner = keras.Model(i, [conv, keras.layers.BatchNormalization()(conv)], name="inner")
    o = keras.Input((8, 8, 5))
    p, q = inner(o)
    nested = keras.Model(o, keras.layers.Add()([p, q]))
    # A shared layer whose second call reads the conv output: no fold either.
    j = keras.Input((8, 8, 5))
    shared = keras.layers.Activation("tanh")
    conv2 = keras_xnor.BinConv2D(5, 3, padding="same")(shared(j))
    bn2 = keras.layers.BatchNormalization()(conv2)
    with_shared = keras.Model(j, keras.layers.Add()([bn2, shared(conv2)]))
    x = rng.standard_normal((2, 8, 8, 5)).astype(np.float32)
    for model, expected_ops in [
        (seq, ["KerasXnorBinConv2D", "MEAN", "KerasXnorBinDense"]),
        (nested, ["KerasXnorBinConv2D", "MUL", "ADD", "ADD"]),
        (with_shared, ["TANH", "KerasXnorBinConv2D", "MUL", "ADD", "TANH", "ADD"]),
    ]:
        _randomize_batch_norms(model, rng)
        _randomize_batch_norms(inner, rng)
        data = convert(model)
        assert sorted(builtin_op_names(data)) == sorted(expected_ops)
        np.testing.assert_allclose(_run(Interpreter(model_content=data), x),
                                   model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_bwn_layers_export_as_constant_float_kernels():
    # BWN keeps real inputs: no XNOR op, but alpha*sign(W) must be a constant in the file, not
    # recomputed (select/batch-matmul on the latent weights) at every invocation.
    inp = keras.Input((9, 9, 5))
    x = keras_xnor.BWNConv2D(6, 3, padding="same")(inp)
    x = keras.layers.Flatten()(x)
    x = keras_xnor.BWNDense(7)(x)
    model = keras.Model(inp, x)
    data = convert(model)
    ops = builtin_op_names(data)
    assert custom_ops(data) == []
    assert "CONV_2D" in ops and "FULLY_CONNECTED" in ops
    assert not {"SIGN", "SELECT", "SELECT_V2", "BATCH_MATMUL"} & set(ops), ops
    x = np.random.default_rng(7).standard_normal((3, 9, 9, 5)).astype(np.float32)
    np.testing.assert_allclose(_run(Interpreter(model_content=data), x),
                               model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_bwn_twins_keep_activation_learned_alpha_and_missing_bias():
    inp = keras.Input((9, 9, 5))
    x = keras_xnor.BWNConv2D(5, 3, padding="same", activation="relu")(inp)
    x = keras_xnor.BWNConv2D(4, 3, strides=2, use_bias=False, kernel_scale="learned")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras_xnor.BWNDense(3, kernel_scale="none", activation="tanh")(x)
    model = keras.Model(inp, x)
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.uniform(-1, 1, w.shape) for w in layer.get_weights()])
    data = convert(model)
    assert custom_ops(data) == []
    x = rng.standard_normal((2, 9, 9, 5)).astype(np.float32)
    np.testing.assert_allclose(_run(Interpreter(model_content=data), x),
                               model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_kernels_above_the_core_limit_export_as_float_simulation():
    # The binary conv serves kernels up to spec.MAX_KERNEL_SIZE; a larger BinConv2D runs (and
    # exports) as its float simulation, with a warning, and the .tflite computes the same.
    model = keras.Sequential([
        keras.Input((20, 20, 6)),
        keras_xnor.BinConv2D(5, 13, padding="same"),
        keras_xnor.BinConv2D(4, 3),
    ])
    with pytest.warns(UserWarning, match=r"kernels up to 11x11, got kernel_size=\(13, 13\)"):
        data = convert(model)
    assert [op["name"] for op in custom_ops(data)] == ["KerasXnorBinConv2D"]  # the 3x3 only
    x = np.random.default_rng(12).standard_normal((2, 20, 20, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(Interpreter(model_content=data), x), model(x).numpy(),
                               rtol=1e-5, atol=1e-5)


def _floatx_model():
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(12, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras_xnor.BinConv2D(16, 3, padding="same")(x)
    x = keras_xnor.BWNConv2D(8, 3, strides=2)(x)
    x = keras.layers.Flatten()(x)
    x = keras_xnor.BinDense(10)(x)
    return keras.Model(inp, keras.layers.Dense(4)(x))


def test_float64_model_exports_in_float32():
    # Under keras.config.set_floatx("float64") every layer computes in float64; the .tflite
    # computes in float32 (its builtins would otherwise be unresolvable float64 custom ops)
    # and takes a float32 input, with the same binary custom ops.
    keras.config.set_floatx("float64")
    try:
        model = _floatx_model()
        assert model.inputs[0].dtype == "float64"
        data = convert(model, batch_size=2)
    finally:
        keras.config.set_floatx("float32")
    assert [op["name"] for op in custom_ops(data)] == ["KerasXnorBinConv2D", "KerasXnorBinDense"]
    interpreter = Interpreter(model_content=data)
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    x = np.random.default_rng(13).standard_normal((2, 8, 8, 3))
    got = _run(interpreter, x.astype(np.float32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_integer_input_keeps_its_dtype_with_a_fixed_batch():
    # A uint8 image input (rescaled in the model) stays uint8 when convert() fixes the batch.
    inp = keras.Input((6, 6, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras_xnor.BinConv2D(5, 3)(x)
    model = keras.Model(inp, x)
    data = convert(model, batch_size=3)
    interpreter = Interpreter(model_content=data)
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.uint8
    assert list(detail["shape"]) == [3, 6, 6, 3]
    x = np.random.default_rng(14).integers(0, 256, (3, 6, 6, 3)).astype(np.uint8)
    np.testing.assert_allclose(_run(interpreter, x), model(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("structure", ["list", "dict"])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_multi_input_models_keep_their_input_names(structure, batch_size):
    # The signature's input keys are the model's input names (dict inputs: the keys), also
    # when convert() rebuilds the inputs for a fixed batch; dict inputs, which TFLite's own
    # converter cannot trace under Keras 3, convert too.
    img = keras.Input((8, 8, 4), name="img")
    feat = keras.Input((12,), name="feat")
    x = keras.layers.Flatten()(keras_xnor.BinConv2D(8, 3)(img))
    y = keras_xnor.BinDense(6)(feat)
    logits = keras_xnor.BinDense(5)(keras.layers.Concatenate()([x, y]))
    inputs = [img, feat] if structure == "list" else {"img": img, "feat": feat}
    model = keras.Model(inputs, {"logits": logits, "aux": keras.layers.Dense(2)(y)})
    rng = np.random.default_rng(15)
    feed = {"img": rng.standard_normal((2, 8, 8, 4)).astype(np.float32),
            "feat": rng.standard_normal((2, 12)).astype(np.float32)}
    expected = model([feed["img"], feed["feat"]] if structure == "list" else feed)
    data = convert(model, batch_size=batch_size)
    assert sorted(op["name"] for op in custom_ops(data)) == [
        "KerasXnorBinConv2D", "KerasXnorBinDense", "KerasXnorBinDense"]
    interpreter = Interpreter(model_content=data)
    signature = interpreter.get_signature_list()["serving_default"]
    assert sorted(signature["inputs"]) == ["feat", "img"]
    got = interpreter.get_signature_runner()(**feed)
    assert sorted(got) == ["aux", "logits"]
    for key in got:
        np.testing.assert_allclose(got[key], expected[key].numpy(), rtol=1e-5, atol=1e-5)


def _larq_style_model():
    # Quantized layers with sign input quantizers: they say they are XNOR through their
    # quantizers. q5 has a float kernel: not binary, stays a float conv of +-1 inputs.
    inp = keras.Input((9, 9, 8))
    x = keras_xnor.QuantConv2D(64, 3, padding="same", input_quantizer="ste_sign",
                               kernel_quantizer="ste_sign", name="q1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)  # folded into q1
    x = keras_xnor.QuantConv2D(16, 3, padding="same", groups=4, input_quantizer="approx_sign",
                               kernel_quantizer="mean_abs_sign", activation="relu",
                               name="q2")(x)
    x = keras_xnor.BWNConv2D(12, 3, strides=2, input_quantizer="ste_sign",
                             kernel_scale="learned", name="q3")(x)
    x = keras.layers.Flatten()(x)
    x = keras_xnor.QuantDense(10, input_quantizer="ste_sign", kernel_quantizer="mean_abs_sign",
                              name="q4")(x)
    x = keras.layers.Reshape((1, 1, 10))(x)
    x = keras_xnor.QuantConv2D(3, 1, input_quantizer="ste_sign", kernel_quantizer=None,
                               name="q5")(x)
    model = keras.Model(inp, x)
    rng = np.random.default_rng(16)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.uniform(-1, 1, w.shape) for w in layer.get_weights()])
    _randomize_batch_norms(model, rng)
    return model


def test_quantized_layers_with_sign_inputs_export_as_xnor_ops():
    model = _larq_style_model()
    data = convert(model)
    # q1, q2 (4 groups: an op each), q3; q4 the dense. The BN is folded away.
    assert [op["name"] for op in custom_ops(data)] == ["KerasXnorBinConv2D"] * 6 + [
        "KerasXnorBinDense"]
    builtins = builtin_op_names(data)
    assert {"SPLIT", "CONCATENATION", "CONV_2D"} <= set(builtins)  # groups; q5 stays float
    assert builtins.count("CONV_2D") == 1
    x = np.random.default_rng(17).standard_normal((3, 9, 9, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(Interpreter(model_content=data), x), model(x).numpy(),
                               rtol=1e-5, atol=1e-5)
    # The integer part is exact: with unit scales and no bias the outputs are the +-1 dots
    # (here of a grouped conv: 4 ops over 17 input channels each).
    inp = keras.Input((7, 7, 68))
    y = keras_xnor.QuantConv2D(8, 3, padding="same", groups=4, input_quantizer="ste_sign",
                               kernel_quantizer="ste_sign", use_bias=False)(inp)
    integer = keras.Model(inp, y)
    integer_data = convert(integer)
    assert [op["name"] for op in custom_ops(integer_data)] == ["KerasXnorBinConv2D"] * 4
    x = np.random.default_rng(18).standard_normal((2, 7, 7, 68)).astype(np.float32)
    x[0, 1, 1, :5] = 0.0  # sign(0) = +1
    np.testing.assert_array_equal(
        _run(Interpreter(model_content=integer_data), x), integer(x).numpy())


def test_grouped_binary_convs_with_few_channels_per_group_export_as_float():
    # Under 16 input channels per group the float grouped conv is faster than one op per
    # group: such a layer is exported as its simulation, silently (a choice, not a failure).
    # (The first layer's outputs are integers, so the second binarizes the same values.)
    model = keras.Sequential([
        keras.Input((8, 8, 32)),
        keras_xnor.QuantConv2D(32, 3, padding="same", groups=4, input_quantizer="ste_sign",
                               kernel_quantizer="ste_sign", name="small_groups"),
        keras_xnor.QuantConv2D(32, 3, padding="same", groups=2, input_quantizer="ste_sign",
                               kernel_quantizer="mean_abs_sign", name="wide_groups"),
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = convert(model)
    assert [op["name"] for op in custom_ops(data)] == ["KerasXnorBinConv2D"] * 2  # wide only
    x = np.random.default_rng(21).standard_normal((2, 8, 8, 32)).astype(np.float32)
    np.testing.assert_allclose(_run(Interpreter(model_content=data), x), model(x).numpy(),
                               rtol=1e-5, atol=1e-4)


def test_xnor_layers_with_mean_abs_sign_kernels_export_as_xnor_ops():
    # eq. 11 with W ~ mean|W| sign(W) inside the product: the op's alpha is the layer's alpha
    # times mean|W| (here eq. 6's mean|W| twice, and a learned alpha).
    model = keras.Sequential([
        keras.Input((8, 8, 20)),
        keras_xnor.BinConv2D(12, 3, padding="same", kernel_quantizer="mean_abs_sign"),
        keras.layers.Flatten(),
        keras_xnor.BinDense(5, kernel_scale="learned", kernel_quantizer="mean_abs_sign"),
    ])
    rng = np.random.default_rng(20)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.uniform(-1, 1, w.shape) for w in layer.get_weights()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing falls back to the simulation
        data = convert(model)
    assert [op["name"] for op in custom_ops(data)] == ["KerasXnorBinConv2D", "KerasXnorBinDense"]
    x = rng.standard_normal((2, 8, 8, 20)).astype(np.float32)
    np.testing.assert_allclose(_run(Interpreter(model_content=data), x), model(x).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_quantized_binary_layers_beyond_the_core_warn_and_export_as_simulation():
    model = keras.Sequential([
        keras.Input((16, 16, 4)),
        keras_xnor.QuantConv2D(6, 13, padding="same", input_quantizer="ste_sign",
                               kernel_quantizer="ste_sign", name="big"),
    ])
    with pytest.warns(UserWarning, match=r"big \(the compiled conv serves kernels up to 11x11"):
        data = convert(model)
    assert custom_ops(data) == []
    x = np.random.default_rng(19).standard_normal((1, 16, 16, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(Interpreter(model_content=data), x), model(x).numpy(),
                               rtol=1e-5, atol=1e-5)


class _ScaleByArray(keras.layers.Layer):
    """A user layer whose __init__ takes an array: Keras cannot make its config."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * self.w * self.factor


def test_layers_that_cannot_be_rebuilt_from_their_config_are_exported_as_they_are():
    # A Lambda of a Python lambda (refused by Keras' safe mode) and a custom layer without a
    # usable config: the export uses the layers themselves, and the model keeps working.
    inp = keras.Input((6, 6, 8))
    x = _ScaleByArray(np.full(8, 0.5, np.float32), name="scale")(inp)
    x = keras.layers.Lambda(lambda t: t - 0.1, name="shift")(x)
    model = keras.Model(inp, keras_xnor.BinConv2D(4, 3, name="xnor")(x))
    model.get_layer("scale").w.assign(np.linspace(-1.0, 1.0, 8))
    x = np.random.default_rng(20).standard_normal((2, 6, 6, 8)).astype(np.float32)
    expected = model(x).numpy()
    data = convert(model)
    assert [op["name"] for op in custom_ops(data)] == ["KerasXnorBinConv2D"]
    np.testing.assert_allclose(_run(Interpreter(model_content=data), x), expected,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model(x).numpy(), expected)
    assert keras_xnor.summary(model, print_fn=None)["xnor"].calls == 1


def test_a_half_precision_layer_that_cannot_be_rebuilt_in_float32_is_a_clear_error():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        inp = keras.Input((6, 6, 8))
        scaled = _ScaleByArray(np.full(8, 2.0, np.float32), name="scale")(inp)
        model = keras.Model(inp, keras_xnor.BinConv2D(4, 3)(scaled))
        with pytest.raises(ValueError, match=r"computes in mixed_bfloat16 and cannot be rebuilt"):
            convert(model)
    finally:
        keras.config.set_dtype_policy("float32")


class _NoInferenceTrace(keras.layers.Layer):
    """A user layer that cannot be traced for inference (``training=False``)."""

    def call(self, inputs, training=None):
        if training is False:
            raise ValueError("this layer has no inference mode")
        return inputs


def test_a_model_the_converter_cannot_write_out_reports_why():
    # TFLite's converter hides why a Keras 3 model could not be written as a SavedModel
    # ("'NoneType' object is not callable"); convert() names the cause.
    inp = keras.Input((6, 6, 8))
    model = keras.Model(inp, keras_xnor.BinConv2D(4, 3)(_NoInferenceTrace(name="fussy")(inp)))
    with pytest.raises(RuntimeError, match=r"(?s)could not write the model out as a "
                                           r"SavedModel \(ValueError: .*no inference mode"):
        convert(model)


def test_layer_names_tensorflow_refuses_are_a_clear_error():
    inp = keras.Input((6, 6, 8))
    x = keras_xnor.BinConv2D(4, 3, name="_conv one")(inp)
    model = keras.Model(inp, keras.layers.Flatten(name="ok.flat")(x))
    with pytest.raises(ValueError, match=r"cannot export layers named '_conv one': .* Rename"):
        convert(model)
    # Refused before any conversion starts, so nothing is left behind for the next model.
    model = keras.Model(inp, keras_xnor.BinConv2D(4, 3, name="conv_one")(inp))
    assert [op["name"] for op in custom_ops(convert(model))] == ["KerasXnorBinConv2D"]


def _agree(model, x, **convert_kwargs):
    data = convert(model, **convert_kwargs)
    np.testing.assert_allclose(_run(Interpreter(model_content=data), x),
                               model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
    return data


@keras.saving.register_keras_serializable(package="keras_xnor_tests")
class _SubclassedBlock(keras.Model):
    """A subclassed model used as a block (rebuilt by from_config, with new sublayer names)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras_xnor.BinConv2D(8, 3, padding="same")
        self.dense = keras.layers.Dense(4)

    def call(self, x):
        return self.dense(self.conv(x))


def test_nested_subclassed_models_keep_their_trained_weights():
    rng = np.random.default_rng(21)
    inp = keras.Input((6, 6, 8))
    block = _SubclassedBlock(name="block")
    model = keras.Model(inp, block(inp))
    for weight in block.weights:  # not the initial values
        weight.assign(rng.uniform(-1, 1, weight.shape))
    data = _agree(model, rng.standard_normal((2, 6, 6, 8)).astype(np.float32))
    assert [op["name"] for op in custom_ops(data)] == ["KerasXnorBinConv2D"]


def test_adapted_normalization_keeps_its_statistics():
    rng = np.random.default_rng(22)
    norm = keras.layers.Normalization()
    norm.adapt(rng.normal(3, 2, (64, 6, 6, 3)).astype(np.float32))
    inp = keras.Input((6, 6, 3))
    model = keras.Model(inp, keras_xnor.BinConv2D(8, 3)(norm(inp)))
    _agree(model, rng.normal(3, 2, (2, 6, 6, 3)).astype(np.float32))


@pytest.mark.parametrize("merge", ["add", "concatenate"])
def test_batch_norm_is_not_folded_when_a_keras_op_also_reads_the_binary_output(merge):
    # `n + c` and keras.ops.concatenate are operations of the graph but not layers.
    rng = np.random.default_rng(23)
    inp = keras.Input((6, 6, 8))
    c = keras_xnor.BinConv2D(8, 3, padding="same")(inp)
    n = keras.layers.BatchNormalization()(c)
    out = n + c if merge == "add" else keras.ops.concatenate([n, c], axis=-1)
    model = keras.Model(inp, out)
    _randomize_batch_norms(model, rng)
    data = _agree(model, rng.standard_normal((2, 6, 6, 8)).astype(np.float32))
    assert "MUL" in builtin_op_names(data)  # the BN stayed


def test_models_with_other_grouped_layers_and_a_bn_name_taken_by_another_layer():
    # GroupNormalization has `groups` but no kernel; a folded BN named "bn" must not clash
    # with a layer named "bn_folded".
    rng = np.random.default_rng(24)
    inp = keras.Input((6, 6, 8))
    x = keras.layers.GroupNormalization(groups=2)(inp)
    x = keras_xnor.BinConv2D(8, 3, padding="same")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Activation("relu", name="bn_folded")(x)
    model = keras.Model(inp, x)
    _randomize_batch_norms(model, rng)
    data = _agree(model, rng.standard_normal((2, 6, 6, 8)).astype(np.float32))
    unfolded = convert(model, fold_batch_norm=False)
    assert len(builtin_op_names(data)) < len(builtin_op_names(unfolded))  # the BN was folded


@keras.saving.register_keras_serializable(package="keras_xnor_tests")
class _Svd(keras.layers.Layer):
    def call(self, x):
        import tensorflow as tf  # noqa: PLC0415

        return tf.linalg.svd(x, compute_uv=False)


def test_ops_without_a_tflite_builtin_are_refused_at_conversion():
    inp = keras.Input((4, 4))
    model = keras.Model(inp, _Svd(name="svd")(keras_xnor.BinDense(4)(inp)))
    with pytest.raises(ValueError, match="no builtin for: Svd. The .tflite would fail to load"):
        convert(model)


def test_batch_size_none_makes_a_fixed_keras_batch_dynamic():
    rng = np.random.default_rng(25)
    inp = keras.Input((6, 6, 4), batch_size=1)
    model = keras.Model(inp, keras_xnor.BinConv2D(4, 3)(inp))
    _agree(model, rng.standard_normal((3, 6, 6, 4)).astype(np.float32))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1, or None"):
            convert(model, batch_size=bad)


def test_interpreter_argument_types():
    inp = keras.Input((6, 6, 4))
    data = convert(keras.Model(inp, keras_xnor.BinConv2D(4, 3)(inp)))
    Interpreter(model_content=data, num_threads=np.int64(2)).allocate_tensors()
    with pytest.raises(ValueError, match="model_content is empty"):
        Interpreter(model_content=b"")


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    from keras_xnor.tflite_export import cli  # noqa: PLC0415

    inp = keras.Input((4, 4))
    path = str(tmp_path / "svd.keras")
    keras.Model(inp, keras.layers.Dense(3)(inp)).save(path)
    for output in (str(tmp_path / "missing" / "m.tflite"), str(tmp_path)):
        with pytest.raises(SystemExit) as exit_info:
            cli.run([path, output])
        assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err
    # Refused before converting: an empty output, a directory-like output that does not
    # exist yet, a model path that is a directory.
    for args, message in (([path, ""], "output path is empty"),
                          ([path, str(tmp_path / "new_dir") + os.sep], "is a directory"),
                          ([str(tmp_path), str(tmp_path / "m.tflite")], "is a directory")):
        with pytest.raises(SystemExit) as exit_info:
            cli.run(args)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="is a directory"):
        Interpreter(model_path=str(tmp_path))
    bad = keras.Model(inp, _Svd(name="svd")(inp))
    bad.save(str(tmp_path / "bad.keras"))
    assert cli.run([str(tmp_path / "bad.keras"), str(tmp_path / "bad.tflite")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not convert") and "Svd" in err
    assert not os.path.exists(tmp_path / "bad.tflite")
