"""The Python and C++ sides state the shared facts once each; this checks they agree."""

import os
import re

from keras_xnor import spec

HEADER = os.path.join(os.path.dirname(__file__), "..", "custom_ops", "core", "spec.h")


def _cpp_constants():
    with open(HEADER) as f:
        text = f.read()
    strings = dict(re.findall(r'constexpr const char (k\w+)\[\] = "([^"]*)";', text))
    ints = {k: int(v) for k, v in re.findall(r"constexpr int (k\w+) = (-?\d+);", text)}
    return strings, ints


def _snake(name):
    """kBinConv2DOp -> BIN_CONV2D_OP (the Python spelling of a C++ constant)."""
    words = re.findall(r"[A-Z][a-z]*\d*[A-Z]?(?![a-z])|[A-Z][a-z]+\d*", name[1:])
    return "_".join(w.upper() for w in words)


def test_every_cpp_constant_has_an_equal_python_twin():
    strings, ints = _cpp_constants()
    assert len(strings) >= 12 and len(ints) >= 3
    for cpp_name, value in {**strings, **ints}.items():
        py_name = _snake(cpp_name)
        assert hasattr(spec, py_name), f"spec.py lacks {py_name} (C++ {cpp_name})"
        assert getattr(spec, py_name) == value, f"{py_name}: {getattr(spec, py_name)!r} != {value!r}"


def test_op_names_share_the_prefix():
    for name in (spec.PACK_BITS_OP, spec.BIN_CONV2D_OP, spec.BIN_DENSE_OP):
        assert name.startswith(spec.OP_PREFIX)


def test_packed_words():
    assert [spec.packed_words(c) for c in (1, 31, 32, 33, 64, 65, 300)] == [1, 1, 1, 2, 2, 3, 10]
