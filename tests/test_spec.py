"""The Python and C++ sides state the shared facts once each; this checks they agree."""

import os
import re

from keras_xnor import spec

HEADER = os.path.join(os.path.dirname(__file__), "..", "custom_ops", "core", "spec.h")

# C++ name -> Python name. A constant added on one side must be added here too.
TWINS = {
    "kOpPrefix": "OP_PREFIX",
    "kPackBitsOp": "PACK_BITS_OP",
    "kBinConv2DOp": "BIN_CONV2D_OP",
    "kBinDenseOp": "BIN_DENSE_OP",
    "kPackFilterOp": "PACK_FILTER_OP",
    "kBitsPerWord": "BITS_PER_WORD",
    "kNegativeBit": "NEGATIVE_BIT",
    "kBitOrder": "BIT_ORDER",
    "kAttrStrides": "ATTR_STRIDES",
    "kAttrPadding": "ATTR_PADDING",
    "kAttrDilations": "ATTR_DILATIONS",
    "kAttrInChannels": "ATTR_IN_CHANNELS",
    "kAttrUseK": "ATTR_USE_K",
    "kAttrRelu": "ATTR_RELU",
    "kPaddingSame": "PADDING_SAME",
    "kPaddingValid": "PADDING_VALID",
    "kSpecVersion": "SPEC_VERSION",
    "kMaxKernelSize": "MAX_KERNEL_SIZE",
}


def _cpp_constants():
    with open(HEADER) as f:
        text = f.read()
    strings = dict(re.findall(r'constexpr const char (k\w+)\[\] = "([^"]*)";', text))
    ints = {k: int(v) for k, v in re.findall(r"constexpr int (k\w+) = (-?\d+);", text)}
    return {**strings, **ints}


def test_every_cpp_constant_has_an_equal_python_twin():
    cpp = _cpp_constants()
    assert set(cpp) == set(TWINS), "spec.h and TWINS disagree: %s" % (set(cpp) ^ set(TWINS))
    for cpp_name, value in cpp.items():
        assert getattr(spec, TWINS[cpp_name]) == value, (cpp_name, value)


def test_op_names_share_the_prefix():
    for name in (spec.PACK_BITS_OP, spec.BIN_CONV2D_OP, spec.BIN_DENSE_OP, spec.PACK_FILTER_OP):
        assert name.startswith(spec.OP_PREFIX)


def test_packed_words():
    assert [spec.packed_words(c) for c in (1, 31, 32, 33, 64, 65, 300)] == [1, 1, 1, 2, 2, 3, 10]
