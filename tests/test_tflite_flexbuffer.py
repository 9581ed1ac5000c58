"""The delegate's FlexBuffer map reader (custom_ops/tflite/flexbuffer_reader.cc), driven from
Python through ``keras_xnor_flexbuffer_dump``: valid maps from the reference encoder
(flatbuffers.flexbuffers), then every truncation and random corruptions (bounds checks: errors,
never a read outside the buffer; run in a subprocess so a crash fails the test cleanly)."""

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest
from flatbuffers import flexbuffers

from keras_xnor.tflite_export import delegate_path


@pytest.fixture(scope="module")
def dump():
    lib = ctypes.CDLL(delegate_path())
    fn = lib.keras_xnor_flexbuffer_dump
    fn.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    fn.restype = ctypes.c_int

    def run(data):
        out = ctypes.create_string_buffer(1 << 16)
        data = bytes(data)
        status = fn(data, len(data), out, len(out))
        return status, out.value.decode()

    return run


def test_reads_the_value_kinds_the_converter_writes(dump):
    data = flexbuffers.Dumps({
        "strides": [1, 2], "dilations": [1, 1, 1, 1], "padding": "SAME", "in_channels": 300,
        "use_k": True, "relu": False, "T": 1, "big": 2**40, "neg": -5, "scale": 0.5,
    })
    status, text = dump(data)
    assert status == 0, text
    assert text == ('{"T": 1, "big": 1099511627776, "dilations": [1, 1, 1, 1], '
                    '"in_channels": 300, "neg": -5, "padding": "SAME", "relu": 0, '
                    '"scale": 0.5, "strides": [1, 2], "use_k": 1}')


def test_wide_and_empty_maps(dump):
    status, text = dump(flexbuffers.Dumps({}))
    assert status == 0 and text == "{}"
    many = {"key_%03d" % i: list(range(i % 7)) for i in range(300)}  # 16-bit offsets
    status, text = dump(flexbuffers.Dumps(many))
    assert status == 0, text
    assert '"key_299": [0, 1, 2, 3, 4]}' in text


def test_non_map_roots_and_tiny_buffers_are_errors(dump):
    assert dump(flexbuffers.Dumps([1, 2, 3]))[1].startswith("FlexBuffer root is a")
    for data in (b"", b"\x01", b"\x00\x01"):
        status, text = dump(data)
        assert status == 1 and "truncated" in text


def test_every_truncation_and_random_corruption_is_bounded():
    script = """
        import ctypes, random, sys
        from flatbuffers import flexbuffers
        lib = ctypes.CDLL(sys.argv[1])
        fn = lib.keras_xnor_flexbuffer_dump
        fn.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
        out = ctypes.create_string_buffer(512)
        good = bytes(flexbuffers.Dumps({"strides": [1, 2], "padding": "VALID", "in_channels": 70000,
                                  "use_k": True, "relu": False, "dilations": [1, 1]}))
        errors = 0
        for n in range(len(good)):
            # Copy into an exact-size buffer so reading past it would be a real overread.
            chunk = ctypes.create_string_buffer(good[:n], n)
            errors += fn(chunk, n, out, 512)
        rng = random.Random(0)
        for _ in range(20000):
            data = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            chunk = ctypes.create_string_buffer(bytes(data), len(data))
            fn(chunk, len(data), out, 512)
        for _ in range(2000):
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
            fn(ctypes.create_string_buffer(data, len(data)), len(data), out, 512)
        print("TRUNCATION_ERRORS", errors, len(good))
    """
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script), delegate_path()],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("TRUNCATION_ERRORS")][0]
    errors, total = map(int, line.split()[1:])
    assert errors == total  # no strict prefix of a FlexBuffer is a valid map
