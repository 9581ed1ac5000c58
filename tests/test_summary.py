"""keras_xnor.summary on a tiny model, against numbers computed by hand."""

import keras
import pytest

import keras_xnor


def _tiny():
    return keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras_xnor.BinConv2D(4, 3, padding="same", name="xnor"),
            keras.layers.BatchNormalization(name="bn"),
            keras_xnor.BWNConv2D(4, 3, kernel_scale="learned", name="bwn"),
            keras.layers.Flatten(name="flat"),
            keras_xnor.BinDense(5, use_bias=False, name="xnor_fc"),
            keras.layers.Dense(2, name="fc"),
        ]
    )


def test_summary_numbers_by_hand():
    lines = []
    s = keras_xnor.summary(_tiny(), print_fn=lines.append)
    assert len(lines) == 1 and "xnor (BinConv2D)" in lines[0] and "Total" in lines[0]
    assert [r.name for r in s] == ["xnor", "bn", "bwn", "flat", "xnor_fc", "fc"]

    xnor = s["xnor"]
    # 3x3x3x4 sign bits; bias 4 floats; alpha = mean|W| stored at deployment: 4 floats.
    assert (xnor.input_bits, xnor.weight_bits) == (1, 1)
    assert (xnor.binary_params, xnor.float_params, xnor.scale_params) == (108, 4, 4)
    assert xnor.memory_bytes == 108 / 8 + 4 * 8
    # 6*6 positions * 4 filters = 144 outputs, each c*N_W = 3*9 = 27 XNOR MACs.
    assert (xnor.binary_ops, xnor.float_macs, xnor.scaling_ops) == (144 * 27, 0, 144)
    assert xnor.speedup == pytest.approx(64 * 27 / (27 + 64))

    bn = s["bn"]
    assert (bn.binary_params, bn.float_params, bn.memory_bytes) == (0, 16, 64)
    assert bn.input_bits is None and bn.speedup is None

    bwn = s["bwn"]  # valid 3x3 on 6x6 -> 4x4x4 outputs, 36 real x 1-bit MACs each
    assert (bwn.input_bits, bwn.weight_bits) == (32, 1)
    assert (bwn.binary_params, bwn.float_params, bwn.scale_params) == (144, 8, 0)
    assert (bwn.binary_ops, bwn.float_macs, bwn.scaling_ops) == (0, 64 * 36, 0)
    assert bwn.speedup is None

    fc1 = s["xnor_fc"]  # 64 -> 5, no bias
    assert (fc1.binary_params, fc1.float_params, fc1.scale_params) == (320, 0, 5)
    assert (fc1.binary_ops, fc1.scaling_ops) == (320, 5)
    assert fc1.speedup == pytest.approx(64 * 64 / (64 + 64))

    fc = s["fc"]
    assert (fc.input_bits, fc.weight_bits, fc.float_params, fc.float_macs) == (32, 32, 12, 10)

    assert s.binary_params == 108 + 144 + 320
    assert s.float_params == 4 + 16 + 8 + 12
    assert s.scale_params == 4 + 5
    memory = (108 + 144 + 320) / 8 + 4 * (40 + 9)
    assert s.memory_bytes == pytest.approx(memory)
    assert s.float32_memory_bytes == 4 * (572 + 40)
    assert s.compression_ratio == pytest.approx(4 * 612 / memory)
    assert s.binary_ops == 3888 + 320 and s.float_macs == 2304 + 10
    assert s.scaling_ops == 149
    cost = (3888 + 320) / 64 + 149 + 2314
    assert s.speedup == pytest.approx((3888 + 320 + 2314) / cost)
    assert s[0].to_dict()["binary_ops"] == 3888
    assert s.to_dict()["layers"][0]["name"] == "xnor"


def test_summary_expands_nested_models_and_counts_quant_layers():
    inner = keras.Sequential(
        [keras.Input((8, 8, 2)), keras_xnor.QuantConv2D(3, 1, input_quantizer="ste_sign",
                                                        kernel_quantizer="mean_abs_sign")]
    )
    inputs = keras.Input((8, 8, 2))
    outputs = keras_xnor.BinaryActivation(name="act")(inner(inputs))
    s = keras_xnor.summary(keras.Model(inputs, outputs), print_fn=None)
    assert [r.type for r in s] == ["QuantConv2D", "BinaryActivation"]
    q = s[0]
    assert (q.binary_params, q.float_params, q.scale_params) == (6, 3, 3)
    assert q.binary_ops == 64 * 3 * 2 and q.speedup == pytest.approx(64 * 2 / 66)


def test_summary_of_unbuilt_model_raises():
    with pytest.raises(ValueError, match="build"):
        keras_xnor.summary(keras.Sequential([keras_xnor.BinDense(3)]), print_fn=None)


def test_summary_counts_float_macs_of_other_keras_conv_layers():
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw"),
            L.SeparableConv2D(4, 3, name="sep"),
            L.Conv2DTranspose(2, 3, strides=2, name="tr"),
            L.Reshape((-1, 2)),
            L.Conv1D(3, 2, name="c1"),
        ]
    )
    s = keras_xnor.summary(model, print_fn=None)
    assert s["dw"].float_macs == 8 * 8 * (3 * 3 * 3 * 2)
    assert s["sep"].float_macs == 6 * 6 * (3 * 3 * 6 + 6 * 4)
    assert s["tr"].float_macs == 6 * 6 * (3 * 3 * 2 * 4)  # per input position
    assert s["c1"].float_macs == 168 * (2 * 2 * 3)
    assert s.speedup == 1.0 and s.compression_ratio == 1.0


def test_summary_counts_every_call_of_shared_layers_and_nested_models():
    # Ops are per sample: a layer called twice runs twice, and so does every layer of a
    # nested model called twice. Calls of the layers in other graphs do not count.
    shared = keras_xnor.BinConv2D(4, 3, name="shared")
    block = keras.Sequential([keras.Input((4, 4, 4)), keras_xnor.BinConv2D(4, 1, name="inner")],
                             name="block")
    a, b = keras.Input((6, 6, 4)), keras.Input((6, 6, 4))
    merged = keras.layers.Add(name="add")([block(shared(a)), block(shared(b))])
    model = keras.Model([a, b], merged)
    keras.Model(a, shared(a))  # another graph using the layer: not part of `model`
    lines = []
    s = keras_xnor.summary(model, print_fn=lines.append)
    assert [r.name for r in s] == ["shared", "inner", "add"]
    assert s["shared"].calls == 2 and s["inner"].calls == 2 and s["add"].calls == 1
    # shared: 4x4x4 outputs of 4*9 MACs per call; inner (1x1 on 4x4x4): 4x4x4 outputs of 4.
    assert s["shared"].binary_ops == 2 * 64 * 36 and s["shared"].scaling_ops == 2 * 64
    assert s["inner"].binary_ops == 2 * 64 * 4
    assert s["shared"].output_shape == (None, 4, 4, 4)
    assert s["shared"].binary_params == 4 * 9 * 4  # weights count once
    assert s.binary_ops == 2 * 64 * 36 + 2 * 64 * 4 and s.ops_known
    assert "shared (BinConv2D) x2" in lines[0] and "runs N times" in lines[0]


def test_summary_marks_ops_of_unfixed_spatial_sizes_unknown():
    inputs = keras.Input((None, None, 3))
    x = keras_xnor.BinConv2D(4, 3, name="xnor")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras_xnor.BinDense(5, name="fc")(x))
    lines = []
    s = keras_xnor.summary(model, print_fn=lines.append)
    xnor = s["xnor"]
    assert not xnor.ops_known and xnor.binary_ops == 0
    assert xnor.speedup == pytest.approx(64 * 27 / (27 + 64))  # the kernel's, still known
    assert s["gap"].ops_known and s["fc"].ops_known and s["fc"].binary_ops == 4 * 5
    assert not s.ops_known and s.speedup is None and s.binary_ops == 20
    table = lines[0].splitlines()
    assert table[2].split()[-3:-1] == ["?", "?"]  # the conv's binary ops and float MACs
    assert "20+?" in table[-3] and table[-3].rstrip().endswith("?")
    assert "spatial size is not fixed" in lines[0]


def test_summary_counts_layers_inside_time_distributed_once_per_step():
    steps = keras.Input((5, 6, 6, 3))
    x = keras.layers.TimeDistributed(keras_xnor.BinConv2D(4, 3, name="xnor"), name="td")(steps)
    frames = keras.layers.TimeDistributed(keras.layers.Flatten())(x)
    model = keras.Model(steps, keras.layers.TimeDistributed(keras.layers.Dense(2, name="fc"))(
        frames))
    s = keras_xnor.summary(model, print_fn=None)
    xnor = s["xnor"]
    # 5 steps of a 4x4x4 output, 27 binary MACs each; the weights count once.
    assert xnor.calls == 5 and xnor.output_shape == (None, 4, 4, 4)
    assert xnor.binary_ops == 5 * 64 * 27 and xnor.scaling_ops == 5 * 64
    assert xnor.binary_params == 27 * 4 and xnor.float_params == 4
    assert s["fc"].float_macs == 5 * 64 * 2 and s.speedup > 1.0
    # An unknown number of steps: the inner layer's ops are unknown, not 0.
    steps = keras.Input((None, 6, 6, 3))
    model = keras.Model(steps, keras.layers.TimeDistributed(keras_xnor.BinConv2D(
        4, 3, name="xnor"))(steps))
    s = keras_xnor.summary(model, print_fn=None)
    assert not s["xnor"].ops_known and s["xnor"].binary_params == 27 * 4 and s.speedup is None


def test_summary_counts_float_macs_of_channels_first_layers():
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((3, 8, 8)),
            L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw",
                              data_format="channels_first"),
            L.Reshape((6, 64)),
            L.Conv1D(4, 3, name="c1", data_format="channels_first"),
        ]
    )
    s = keras_xnor.summary(model, print_fn=None)
    assert s["dw"].float_macs == 8 * 8 * (3 * 3 * 3 * 2)
    assert s["c1"].float_macs == 62 * (3 * 6 * 4)
