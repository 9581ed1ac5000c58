"""The keras-xnor TFLite delegate on stock LiteRT: loading, options, errors, robustness, memory.

Crash-prone cases (corrupt files, many create/destroy cycles) run in a subprocess so that a
crash is a test failure, not a dead test run.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")
import keras_xnor  # noqa: E402
from ai_edge_litert import interpreter as litert  # noqa: E402
from keras_xnor.tflite_export import (  # noqa: E402
    Interpreter,
    convert,
    custom_ops,
    delegate_path,
    load_delegate,
)


@pytest.fixture(scope="module")
def two_conv_model():
    """Two adjacent binary convs (one delegate partition with an internal tensor) + dense."""
    inp = keras.Input((6, 6, 8))
    x = keras_xnor.BinConv2D(8, 3, padding="same")(inp)
    x = keras_xnor.BinConv2D(12, 3, strides=2, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras_xnor.BinDense(5)(x))
    return model, convert(model)


@pytest.fixture(scope="module")
def model_file(two_conv_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tflite") / "model.tflite"
    path.write_bytes(two_conv_model[1])
    return str(path)


def _run(interpreter, x):
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _subprocess(script, *args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )


def test_partition_with_internal_tensor_matches_keras(two_conv_model):
    model, data = two_conv_model
    x = np.random.default_rng(0).standard_normal((3, 6, 6, 8)).astype(np.float32)
    got = _run(Interpreter(model_content=data, num_threads=2), x)
    np.testing.assert_allclose(got, model(x, training=False).numpy(), rtol=1e-4, atol=1e-5)


def test_dense_layers_match_keras_at_every_batch_size():
    # Constant dense filters are prepared at Prepare for batches of 2 or more, which run on the
    # channel-lane table tile as a 1 x batch image; one row runs the GEMV on the plain filter.
    # Every resize re-runs Prepare (keeping a preparation that still matches).
    keras.utils.set_random_seed(11)
    inp = keras.Input((300,))
    x = keras_xnor.BinDense(70)(inp)
    model = keras.Model(inp, keras_xnor.BinDense(33)(x))
    interpreter = Interpreter(model_content=convert(model), num_threads=2)
    rng = np.random.default_rng(12)
    for batch in (1, 2, 7, 40, 3):
        x = rng.standard_normal((batch, 300)).astype(np.float32)
        np.testing.assert_allclose(_run(interpreter, x), model(x, training=False).numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_without_delegate_the_error_says_how_to_load_it(model_file):
    with pytest.raises(RuntimeError) as info:
        interpreter = Interpreter(model_path=model_file, use_delegate=False)
        interpreter.allocate_tensors()
    message = str(info.value)
    assert "KerasXnorBinConv2D" in message and "delegate" in message
    assert "load_delegate" in message and "delegate_path()" in message


def test_plain_litert_and_tf_lite_load_the_delegate(two_conv_model, model_file):
    model, _ = two_conv_model
    x = np.random.default_rng(1).standard_normal((2, 6, 6, 8)).astype(np.float32)
    expected = model(x, training=False).numpy()
    delegate = litert.load_delegate(delegate_path(), {"num_threads": 2})
    got = _run(litert.Interpreter(model_path=model_file, experimental_delegates=[delegate]), x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    tf = pytest.importorskip("tensorflow")
    delegate = tf.lite.experimental.load_delegate(delegate_path(), {"num_threads": 1})
    got = _run(tf.lite.Interpreter(model_path=model_file, experimental_delegates=[delegate]), x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"num_threads": 0}, "num_threads"),
        ({"num_threads": -3}, "num_threads"),
        ({"num_threads": "two"}, "num_threads"),
        ({"num_threads": "2x"}, "num_threads"),
        ({"num_threads": " 2"}, "num_threads"),  # blanks on either side, alike
        ({"num_threads": "2 "}, "num_threads"),
        ({"num_threads": 10**12}, "num_threads"),
        ({"kernel": "gpu"}, "kernel"),
        ({"profile": "yes"}, "profile"),
        ({"threads": 2}, "unknown option 'threads'"),
    ],
)
def test_nonsense_delegate_options_are_clear_errors(options, fragment):
    with pytest.raises(ValueError) as info:
        litert.load_delegate(delegate_path(), options)
    assert "keras-xnor delegate" in str(info.value) and fragment in str(info.value)


def test_interpreter_validates_num_threads(model_file):
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="num_threads"):
            Interpreter(model_path=model_file, num_threads=bad)
    with pytest.raises(ValueError, match="kernel"):
        load_delegate(kernel="fastest")


def test_interpreter_takes_bytes_like_model_content(two_conv_model):
    # LiteRT itself takes only bytes; a flatbuffers Builder gives a bytearray.
    model, data = two_conv_model
    x = np.random.default_rng(3).standard_normal((1, 6, 6, 8)).astype(np.float32)
    expected = model(x).numpy()
    for content in (bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        np.testing.assert_allclose(_run(Interpreter(model_content=content), x), expected,
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="give it as model_path"):
        Interpreter(model_content="model.tflite")
    with pytest.raises(TypeError, match="got list"):
        Interpreter(model_content=[1, 2, 3])


def test_kernel_paths_agree(two_conv_model):
    _, data = two_conv_model
    x = np.random.default_rng(2).standard_normal((2, 6, 6, 8)).astype(np.float32)
    reference = _run(Interpreter(model_content=data, delegate_kernel="reference"), x)
    fast = _run(Interpreter(model_content=data, delegate_kernel="auto", num_threads=2), x)
    np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-6)


def test_corrupt_and_truncated_files_fail_cleanly(two_conv_model, tmp_path):
    _, data = two_conv_model
    cases = {"empty": b"", "header_only": data[:8], "half": data[: len(data) // 2],
             "minus_one": data[:-1], "bad_identifier": data[:4] + b"XXXX" + data[8:],
             "garbage": bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8))}
    # Corrupt the custom options (FlexBuffer) of the first custom op in place: a valid
    # flatbuffer whose options are nonsense must be refused by the delegate, not crash it.
    options = custom_ops(data)[0]["options_bytes"]
    start = data.find(options)
    assert start > 0
    rng = np.random.default_rng(1)
    for seed in range(6):
        corrupt = bytearray(data)
        for offset in rng.integers(0, len(options), 3):
            corrupt[start + int(offset)] = int(rng.integers(0, 256))
        cases["options_%d" % seed] = bytes(corrupt)
    truncated = bytearray(data)
    truncated[start + len(options) - 1] = 8  # root byte width beyond the buffer
    truncated[start + len(options) - 2] = (9 << 2) | 3
    cases["options_root_out_of_bounds"] = bytes(truncated)
    for name, content in cases.items():
        (tmp_path / (name + ".tflite")).write_bytes(content)
    script = """
        import json, sys, numpy as np
        from keras_xnor.tflite_export import Interpreter
        results = {}
        for name in sys.argv[2].split(","):
            path = sys.argv[1] + "/" + name + ".tflite"
            try:
                it = Interpreter(model_path=path)
                idx = it.get_input_details()[0]["index"]
                it.resize_tensor_input(idx, [1, 6, 6, 8])
                it.allocate_tensors()
                it.set_tensor(idx, np.ones((1, 6, 6, 8), np.float32))
                it.invoke()
                results[name] = ["ok", ""]
            except Exception as e:
                results[name] = [type(e).__name__, str(e)]
        print("RESULTS" + json.dumps(results))
    """
    result = _subprocess(script, str(tmp_path), ",".join(cases))
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULTS")][0]
    results = json.loads(line[len("RESULTS"):])
    for name in ("empty", "header_only", "half", "bad_identifier", "garbage"):
        kind, message = results[name]
        assert kind == "ValueError" and "Could not load" in message, (name, kind, message)
    refused = [n for n in results if n.startswith("options_") and results[n][0] != "ok"]
    for name in refused:
        assert "keras-xnor delegate" in results[name][1] or "Could not load" in results[name][1], (
            name, results[name])
    assert results["options_root_out_of_bounds"][0] != "ok"
    assert "FlexBuffer" in results["options_root_out_of_bounds"][1]


def test_create_invoke_destroy_cycles_keep_memory_flat(model_file):
    # Plain LiteRT + a fresh delegate per cycle (what Interpreter does), without importing
    # TensorFlow in the subprocess.
    script = """
        import os, sys, numpy as np
        from ai_edge_litert import interpreter as litert
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        x = np.ones((2, 6, 6, 8), np.float32)
        marks = {}
        for i in range(1000):
            delegate = litert.load_delegate(sys.argv[2], {"num_threads": 2})
            it = litert.Interpreter(model_path=sys.argv[1], experimental_delegates=[delegate],
                                    num_threads=2)
            idx = it.get_input_details()[0]["index"]
            it.resize_tensor_input(idx, x.shape)
            it.allocate_tensors()
            it.set_tensor(idx, x)
            it.invoke()
            assert it.get_tensor(it.get_output_details()[0]["index"]).shape == (2, 5)
            del it, delegate
            if i in (199, 999):
                marks[i] = rss()
        print("GROWTH", marks[999] - marks[199])
    """
    result = _subprocess(script, model_file, delegate_path())
    assert result.returncode == 0, result.stderr[-3000:]
    growth = int([l for l in result.stdout.splitlines() if l.startswith("GROWTH")][0].split()[1])
    # 800 cycles; a leak of even 5 KB per cycle would show as 4 MB.
    assert growth < 4 * 1024 * 1024, growth


def test_profile_option_reports_every_binary_node(model_file):
    script = """
        import sys, numpy as np
        from ai_edge_litert import interpreter as litert
        delegate = litert.load_delegate(sys.argv[2], {"profile": 1})
        it = litert.Interpreter(model_path=sys.argv[1], experimental_delegates=[delegate])
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], np.ones((1, 6, 6, 8), np.float32))
        for _ in range(3):
            it.invoke()
        del it
    """
    result = _subprocess(script, model_file, delegate_path())
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [l for l in result.stderr.splitlines() if "keras-xnor delegate profile" in l]
    assert len(lines) == 3, result.stderr[-3000:]  # two convs and the dense
    assert all("3 invokes" in l for l in lines)
    assert "KerasXnorBinDense [1, 12] -> [1, 5]" in result.stderr


def test_bad_resizes_are_reported_by_the_delegate():
    inp = keras.Input((None, None, 4))
    model = keras.Model(inp, keras_xnor.BinConv2D(3, 3, padding="valid")(inp))
    interpreter = Interpreter(model_content=convert(model))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, (1, 2, 2, 4))
    with pytest.raises(RuntimeError, match=r"keras-xnor delegate: node \d+ \(KerasXnorBinConv2D\)"
                       r".*VALID padding needs an input"):
        interpreter.allocate_tensors()
    interpreter.resize_tensor_input(index, (1, 3, 3, 5))
    with pytest.raises(RuntimeError, match="input has 5 channels but the op was exported for 4"):
        interpreter.allocate_tensors()
    x = np.ones((2, 4, 3, 4), np.float32)  # recovers after a valid resize
    np.testing.assert_allclose(_run(interpreter, x), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_packed_filters_with_padding_bits_are_refused():
    # A hand-edited file whose packed weights have a bit set past the last input channel
    # (4 channels: bits 4..31 are padding) is refused, not run with an extra channel.
    from keras_xnor import ops

    for layer, shape in ((keras_xnor.BinConv2D(3, 3), (5, 5, 4)), (keras_xnor.BinDense(3), (4,))):
        inp = keras.Input(shape)
        data = bytearray(convert(keras.Model(inp, layer(inp))))
        packed = ops.pack_filter_reference(layer.kernel)[0].numpy().astype("<i4").tobytes()
        start = data.find(packed)
        assert start > 0 and data.find(packed, start + 1) < 0
        Interpreter(model_content=bytes(data)).allocate_tensors()  # the file as written runs
        data[start + 3] |= 0x80  # bit 31 of the first filter row
        interpreter = Interpreter(model_content=bytes(data))
        with pytest.raises(RuntimeError, match="filter row 0 has padding bits set past its 4 "
                                               "input channels"):
            interpreter.allocate_tensors()


def _cpu_has_avx512_vpopcnt():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512f" in flags and "avx512_vpopcntdq" in flags


def test_avx512_driver_can_be_turned_off_and_gives_the_same_bits(model_file):
    # KERAS_XNOR_AVX512=0 runs the AVX2 drivers on an AVX-512 CPU (A/B benchmarks); the
    # VPOPCNTD driver's output is bitwise the AVX2 channel-lane driver's.
    script = """
        import ctypes, hashlib, sys
        import numpy as np
        from keras_xnor.tflite_export import Interpreter, delegate_path
        lib = ctypes.CDLL(delegate_path())
        lib.keras_xnor_core_kernel_path.restype = ctypes.c_char_p
        it = Interpreter(model_path=sys.argv[1], num_threads=2)
        x = np.random.default_rng(5).standard_normal((3, 6, 6, 8)).astype(np.float32)
        index = it.get_input_details()[0]["index"]
        it.resize_tensor_input(index, x.shape)
        it.allocate_tensors()
        it.set_tensor(index, x)
        it.invoke()
        out = it.get_tensor(it.get_output_details()[0]["index"])
        print(lib.keras_xnor_core_kernel_path().decode(), hashlib.sha256(out.tobytes()).hexdigest())
    """
    results = {}
    for value in (None, "0"):
        if value is None:
            os.environ.pop("KERAS_XNOR_AVX512", None)
            result = _subprocess(script, model_file)
        else:
            os.environ["KERAS_XNOR_AVX512"] = value
            try:
                result = _subprocess(script, model_file)
            finally:
                del os.environ["KERAS_XNOR_AVX512"]
        assert result.returncode == 0, result.stderr[-2000:]
        results[value] = result.stdout.split()
    assert results["0"][0] == "avx2"
    assert results[None][0] == ("avx2+avx512" if _cpu_has_avx512_vpopcnt() else "avx2")
    assert results[None][1] == results["0"][1]
