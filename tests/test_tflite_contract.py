"""Pins what the exporter writes against what the delegate reads, and both against spec.py.

The delegate describes what it parses (``keras_xnor_delegate_describe()``, JSON); the exporter's
output is decoded from the .tflite (custom codes, FlexBuffer custom_options, constant operands).
"""

import ctypes
import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
import keras_xnor  # noqa: E402
from keras_xnor import spec  # noqa: E402
from keras_xnor.tflite_export import convert, custom_ops, delegate_path, pack_signs  # noqa: E402


@pytest.fixture(scope="module")
def described():
    lib = ctypes.CDLL(delegate_path())
    lib.keras_xnor_delegate_describe.restype = ctypes.c_char_p
    return json.loads(lib.keras_xnor_delegate_describe().decode())


def _required(attrs):
    return {k for k, v in attrs.items() if not v.endswith("?")}


def test_delegate_reads_the_shared_spec(described):
    assert described["spec_version"] == spec.SPEC_VERSION
    assert described["bits_per_word"] == spec.BITS_PER_WORD
    assert described["negative_bit"] == spec.NEGATIVE_BIT
    assert described["bit_order"] == spec.BIT_ORDER
    assert set(described["paddings"]) == {spec.PADDING_SAME, spec.PADDING_VALID}
    ops = described["ops"]
    assert set(ops) == {spec.BIN_CONV2D_OP, spec.BIN_DENSE_OP, spec.PACK_BITS_OP}
    assert set(ops[spec.BIN_CONV2D_OP]["attrs"]) == {
        spec.ATTR_STRIDES, spec.ATTR_PADDING, spec.ATTR_DILATIONS, spec.ATTR_IN_CHANNELS,
        spec.ATTR_USE_K, spec.ATTR_RELU}
    assert set(ops[spec.BIN_DENSE_OP]["attrs"]) == {
        spec.ATTR_IN_CHANNELS, spec.ATTR_USE_K, spec.ATTR_RELU}
    # The struct sizes of the TF 2.21 / LiteRT 2.3 C ABI the delegate was compiled for.
    assert described["abi"] == {"tensor": 112, "node": 80, "registration": 88, "delegate": 56}


def test_exported_options_and_operands_match_what_the_delegate_reads(described):
    inp = keras.Input((7, 7, 45))
    conv_a_layer = keras_xnor.BinConv2D(6, 3, strides=2, padding="same", dilation_rate=1,
                                        activation="relu")
    a = conv_a_layer(inp)
    b = keras_xnor.BinConv2D(3, (1, 2), padding="valid", use_k=False, use_bias=False)(inp)
    dense_layer = keras_xnor.BinDense(4)
    d = dense_layer(keras.layers.Flatten()(inp))
    model = keras.Model(inp, [a, b, d])
    ops = custom_ops(convert(model))
    assert [op["name"] for op in ops].count(spec.BIN_CONV2D_OP) == 2
    by_name = {}
    for op in ops:
        attrs = described["ops"][op["name"]]["attrs"]
        options = op["options"]
        assert set(options) <= set(attrs), (op["name"], options)
        assert _required(attrs) <= set(options)
        by_name.setdefault(op["name"], []).append(op)
        assert len(op["inputs"]) == len(described["ops"][op["name"]]["inputs"])
        assert op["inputs"][0] is None  # the activation comes at run time
        assert all(x is not None for x in op["inputs"][1:])  # filter/alpha/bias are constants
        assert op["inputs"][1].dtype == np.int32
    conv_a = [op for op in by_name[spec.BIN_CONV2D_OP] if op["options"]["relu"]][0]
    assert conv_a["options"] == {
        spec.ATTR_STRIDES: [2, 2], spec.ATTR_PADDING: spec.PADDING_SAME,
        spec.ATTR_DILATIONS: [1, 1], spec.ATTR_IN_CHANNELS: 45, spec.ATTR_USE_K: True,
        spec.ATTR_RELU: True}
    kernel = np.asarray(conv_a_layer.kernel)
    assert conv_a["inputs"][1].shape == (6, 3, 3, spec.packed_words(45))
    # Bit layout: channel c of filter o, tap (i, j) is bit c % 32 of word c // 32, 1 = negative.
    words = conv_a["inputs"][1].view(np.uint32)
    for o, i, j, c in [(0, 0, 0, 0), (5, 2, 1, 31), (3, 1, 2, 32), (1, 0, 2, 44)]:
        bit = (int(words[o, i, j, c // 32]) >> (c % 32)) & 1
        assert bit == int(kernel[i, j, c, o] < 0)
    assert int(words[0, 0, 0, 1]) >> 13 == 0  # padding bits past channel 44 are 0
    conv_b = [op for op in by_name[spec.BIN_CONV2D_OP] if not op["options"]["relu"]][0]
    assert conv_b["options"][spec.ATTR_PADDING] == spec.PADDING_VALID
    assert conv_b["options"][spec.ATTR_USE_K] is False
    np.testing.assert_array_equal(conv_b["inputs"][3], np.zeros(3, np.float32))
    dense = by_name[spec.BIN_DENSE_OP][0]
    assert dense["options"][spec.ATTR_IN_CHANNELS] == 7 * 7 * 45
    np.testing.assert_array_equal(
        dense["inputs"][1], pack_signs(np.asarray(dense_layer.kernel).T))
