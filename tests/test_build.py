"""Build and loader behaviour of the TF op library (keras_xnor/ops.py, custom_ops/tf/).

* The library records the TensorFlow it was built against and the loader refuses another one
  with a message that says how to rebuild; a missing library says the same.
* The registered ops carry exactly the names and attribute keys of keras_xnor/spec.py (they
  are also the TFLite custom codes and FlexBuffer option keys).
"""

import ctypes
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from keras_xnor import ops, spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
built = pytest.mark.skipif(ops.library_path() is None, reason="compiled ops not built")


@pytest.fixture
def fresh_loader():
    """Lets a test run the loader from scratch, then restores the real cached outcome."""
    saved = dict(ops._state)
    ops._reset_for_tests()
    yield
    ops._reset_for_tests()
    ops._state.update(saved)


def test_missing_library_gives_build_instructions(tmp_path, fresh_loader):
    with pytest.raises(ops.CompiledOpsError) as info:
        ops.load_ops(directory=str(tmp_path))
    message = str(info.value)
    assert "not built" in message and str(tmp_path) in message
    assert "make ops" in message and "pip install --no-build-isolation -e ." in message
    assert isinstance(info.value, ImportError)
    # The outcome is cached: compiled_ops_available() answers without retrying.
    assert not ops.compiled_ops_available()


@built
def test_library_records_the_tensorflow_it_was_built_against():
    assert ops.built_tf_version(ops.library_path()) == tf.__version__
    ops.load_ops()  # loaded: ctypes only takes a reference now
    library = ctypes.CDLL(ops.library_path())
    library.keras_xnor_built_tf_version.restype = ctypes.c_char_p
    assert library.keras_xnor_built_tf_version().decode() == tf.__version__


@built
def test_library_built_for_another_tensorflow_is_refused(tmp_path, fresh_loader):
    real = ops.library_path()
    with open(real, "rb") as f:
        data = f.read()
    marker = b"keras_xnor_built_tf_version=" + tf.__version__.encode() + b"\0"
    assert data.count(marker) == 1
    other = "9" * len(tf.__version__)  # same length: the binary layout is unchanged
    patched = data.replace(marker, b"keras_xnor_built_tf_version=" + other.encode() + b"\0")
    with open(tmp_path / os.path.basename(real), "wb") as f:
        f.write(patched)
    with pytest.raises(ops.CompiledOpsError) as info:
        ops.load_ops(directory=str(tmp_path))
    message = str(info.value)
    assert "built against TensorFlow %s" % other in message
    assert "TensorFlow %s is running" % tf.__version__ in message
    assert "make ops" in message


def test_unreadable_or_foreign_library_is_refused(tmp_path, fresh_loader):
    (tmp_path / "_keras_xnor_ops.cpython-311-x86_64-linux-gnu.so").write_bytes(b"not an ELF")
    with pytest.raises(ops.CompiledOpsError, match="unknown version.*make ops"):
        ops.load_ops(directory=str(tmp_path))


def test_version_check_via_monkeypatch(monkeypatch, fresh_loader):
    if ops.library_path() is None:
        pytest.skip("compiled ops not built")
    monkeypatch.setattr(tf, "__version__", "0.0.0-other")
    with pytest.raises(ops.CompiledOpsError, match="0.0.0-other is running"):
        ops.load_ops()


@built
def test_ops_and_attributes_match_the_spec():
    module = ops.load_ops()
    for name in (spec.PACK_BITS_OP, spec.BIN_CONV2D_OP, spec.BIN_DENSE_OP):
        assert hasattr(module, name)

    filt = tf.zeros([2, 3, 3, 1], tf.int32)

    @tf.function(autograph=False)
    def graph(x, v):
        y = module.keras_xnor_bin_conv2d(
            x, filt, [1.0, 1.0], [0.0, 0.0], strides=[1, 2], padding="SAME",
            dilations=[2, 1], in_channels=5, use_k=True, relu=False)
        z = module.keras_xnor_bin_dense(v, tf.zeros([3, 1], tf.int32), [1.0] * 3, [0.0] * 3,
                                        in_channels=5, use_k=False, relu=True)
        return y, z, module.keras_xnor_pack_bits(v)

    concrete = graph.get_concrete_function(
        tf.TensorSpec([1, 6, 6, 5]), tf.TensorSpec([2, 5]))
    nodes = {node.op: node for node in concrete.graph.as_graph_def().node}
    conv = nodes[spec.BIN_CONV2D_OP]
    assert set(conv.attr) == {spec.ATTR_STRIDES, spec.ATTR_PADDING, spec.ATTR_DILATIONS,
                              spec.ATTR_IN_CHANNELS, spec.ATTR_USE_K, spec.ATTR_RELU}
    assert list(conv.attr[spec.ATTR_STRIDES].list.i) == [1, 2]
    assert list(conv.attr[spec.ATTR_DILATIONS].list.i) == [2, 1]
    assert conv.attr[spec.ATTR_PADDING].s == spec.PADDING_SAME.encode()
    assert conv.attr[spec.ATTR_IN_CHANNELS].i == 5
    assert conv.attr[spec.ATTR_USE_K].b and not conv.attr[spec.ATTR_RELU].b
    dense = nodes[spec.BIN_DENSE_OP]
    assert set(dense.attr) == {spec.ATTR_IN_CHANNELS, spec.ATTR_USE_K, spec.ATTR_RELU}
    assert set(nodes[spec.PACK_BITS_OP].attr) == set()
    assert concrete.structured_outputs[0].shape.as_list() == [1, 6, 3, 2]
    assert concrete.structured_outputs[2].shape.as_list() == [2, 1]


def test_package_imports_and_falls_back_without_the_library(tmp_path):
    # A fresh interpreter whose loader looks in an empty directory: keras_xnor still imports,
    # reports the ops unavailable, and the pure-TF twins work.
    code = (
        "import numpy as np\n"
        "from keras_xnor import ops\n"
        "ops.OPS_DIR = %r\n"
        "assert not ops.compiled_ops_available()\n"
        "x = np.array([[-1.0, 0.0, 2.0, -0.5]], np.float32)\n"
        "assert ops.pack_bits_reference(x).numpy().tolist() == [[9]]\n"
        "try:\n"
        "    ops.pack_bits(x)\n"
        "except ops.CompiledOpsError as e:\n"
        "    assert 'make ops' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
        "print('ok')\n" % str(tmp_path)
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop(ops.LIBRARY_DIR_ENV, None)
    result = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@built
def test_delegate_library_needs_no_tensorflow():
    # Same core in both libraries; the TFLite delegate must not pull in TensorFlow.
    delegates = [f for f in os.listdir(os.path.dirname(ops.library_path()))
                 if f.startswith("_keras_xnor_delegate") and f.endswith(".so")]
    if not delegates:
        pytest.skip("delegate not built")
    if shutil.which("ldd") is None:
        pytest.skip("no ldd")
    path = os.path.join(os.path.dirname(ops.library_path()), delegates[0])
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    assert "tensorflow" not in out


def test_library_dir_env_var_names_where_both_libraries_are_looked_for(tmp_path, monkeypatch,
                                                                       fresh_loader):
    from keras_xnor.tflite_export import delegate_path  # noqa: PLC0415

    monkeypatch.setenv(ops.LIBRARY_DIR_ENV, str(tmp_path))
    assert ops.library_dir() == str(tmp_path)
    assert ops.library_path() is None
    with pytest.raises(ops.CompiledOpsError) as info:
        ops.load_ops()
    assert str(tmp_path) in str(info.value) and "$KERAS_XNOR_LIBRARY_DIR" in str(info.value)
    with pytest.raises(RuntimeError) as info:
        delegate_path()
    message = str(info.value)
    assert str(tmp_path) in message and "$KERAS_XNOR_LIBRARY_DIR" in message
    assert "make ops" in message
    (tmp_path / "_keras_xnor_delegate.so").write_bytes(b"")
    assert delegate_path() == str(tmp_path / "_keras_xnor_delegate.so")
    monkeypatch.setenv(ops.LIBRARY_DIR_ENV, "")
    assert ops.library_dir() == ops.OPS_DIR


@built
def test_libraries_load_from_the_env_var_directory(tmp_path):
    # Copies of the built libraries in another directory (as a Bazel build's bazel-bin): a
    # fresh interpreter with $KERAS_XNOR_LIBRARY_DIR loads and runs the op from there.
    for name in os.listdir(os.path.dirname(ops.library_path())):
        if name.startswith("_keras_xnor_") and name.endswith(".so"):
            shutil.copy(os.path.join(os.path.dirname(ops.library_path()), name), tmp_path)
    code = (
        "import numpy as np\n"
        "from keras_xnor import ops\n"
        "from keras_xnor.tflite_export import delegate_path\n"
        "assert ops.library_path().startswith(%r), ops.library_path()\n"
        "assert delegate_path().startswith(%r), delegate_path()\n"
        "x = np.array([[-1.0, 0.0, 2.0, -0.5]], np.float32)\n"
        "assert ops.pack_bits(x).numpy().tolist() == [[9]]\n"
        "print('ok')\n" % (str(tmp_path), str(tmp_path))
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env[ops.LIBRARY_DIR_ENV] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_setup_without_tensorflow_says_how_to_install(tmp_path):
    # pip's default build isolation hides the installed TensorFlow from setup.py: the build
    # must say what to do, not end in a bare ModuleNotFoundError.
    code = ("import runpy, sys; sys.modules['tensorflow'] = None; sys.argv = ['setup.py', "
            "'build_ext', '--build-temp', %r, '--build-lib', %r]; "
            "runpy.run_path('setup.py', run_name='__main__')"
            % (str(tmp_path / "temp"), str(tmp_path / "lib")))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode != 0
    assert "pip install --no-build-isolation" in result.stderr + result.stdout
    assert "Install TensorFlow first" in result.stderr + result.stdout
