"""Installs keras-xnor and builds its native libraries.

Two shared libraries are built from ``custom_ops/``:

* ``keras_xnor/_ops/_keras_xnor_ops*.so``: the TensorFlow custom ops (core + tf adapter),
  compiled with ``tf.sysconfig`` flags of the TensorFlow in this environment.
* ``keras_xnor/_ops/_keras_xnor_delegate*.so``: the TFLite external delegate (core + tflite
  adapter); it links against nothing but libc/libstdc++.

Files named ``*_avx2.cc`` get ``-mavx2 -mfma -mpopcnt`` and ``*_avx512.cc`` (the roofline's
AVX-512 mix) ``-mavx512f -mavx512vpopcntdq``; everything else is built for the baseline ISA,
and the core picks a path at run time. TensorFlow must be importable at build
time, so install with ``pip install --no-build-isolation -e .`` (the Makefile does).
"""

import glob
import hashlib
import os
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
ISA_FLAGS = {
    "_avx2.cc": ["-mavx2", "-mfma", "-mpopcnt"],
    "_avx512.cc": ["-mavx512f", "-mavx512vpopcntdq"],
}
COMMON_FLAGS = ["-O3", "-fPIC", "-Wall", "-Wno-unused-function", "-I" + HERE]


def _sources(*patterns):
    files = []
    for pattern in patterns:
        files += sorted(glob.glob(os.path.join(HERE, pattern)))
    return [f for f in files if not os.path.basename(f).endswith("_test.cc")]


def _tf_flags():
    try:
        import tensorflow as tf  # noqa: PLC0415 (needed only when building the TF op)
    except ImportError as e:
        raise SystemExit(
            "keras-xnor compiles its TensorFlow op against the installed TensorFlow, which "
            "this build cannot import (%s). Install TensorFlow first, then build without "
            "isolation: pip install 'tensorflow==2.21.*' && pip install --no-build-isolation "
            "<keras-xnor source>" % e
        ) from e

    # TensorFlow's headers as system headers: their own deprecation warnings are not ours.
    compile_flags = []
    for flag in tf.sysconfig.get_compile_flags():
        compile_flags += ["-isystem", flag[2:]] if flag.startswith("-I") else [flag]
    return compile_flags, tf.sysconfig.get_link_flags(), tf.__version__


class NativeLibrary(Extension):
    """A plain shared library (not a Python extension module) built from C++ sources."""

    def __init__(self, name, source_patterns, uses_tensorflow):
        super().__init__(name, sources=[])
        self.source_patterns = source_patterns
        self.uses_tensorflow = uses_tensorflow


class BuildNativeLibraries(build_ext):
    """Compiles each source to an object (cached by content and flags), then links."""

    def build_extension(self, ext):
        if not isinstance(ext, NativeLibrary):
            return super().build_extension(ext)
        link_flags = []
        if ext.uses_tensorflow:
            compile_flags, link_flags, tf_version = _tf_flags()
            # The loader compares this with the running TF (keras_xnor_built_tf_version()).
            compile_flags = compile_flags + ['-DKERAS_XNOR_TF_VERSION="%s"' % tf_version]
        else:
            compile_flags = ["-std=c++17"]
        sources = _sources(*ext.source_patterns)
        if not sources:
            raise RuntimeError("no sources for %s (%s)" % (ext.name, ext.source_patterns))
        obj_dir = os.path.join(HERE, "build", "obj", ext.name.rsplit(".", 1)[-1])
        os.makedirs(obj_dir, exist_ok=True)
        objects = [self._compile(src, compile_flags, obj_dir) for src in sources]
        out = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cmd = ["g++", "-shared", "-o", out] + objects + link_flags + ["-lpthread"]
        self._run(cmd)

    def _compile(self, src, compile_flags, obj_dir):
        flags = COMMON_FLAGS + list(compile_flags)
        for suffix, extra in ISA_FLAGS.items():
            if src.endswith(suffix):
                flags = flags + extra
        headers = sorted(glob.glob(os.path.join(HERE, "custom_ops", "**", "*.h"), recursive=True))
        digest = hashlib.sha256(" ".join(flags).encode())
        for path in [src] + headers:
            with open(path, "rb") as f:
                digest.update(f.read())
        rel = os.path.relpath(src, HERE).replace(os.sep, "_")
        obj = os.path.join(obj_dir, "%s.%s.o" % (rel, digest.hexdigest()[:16]))
        if not os.path.exists(obj):
            self._run(["g++", "-c", src, "-o", obj] + flags)
        return obj

    @staticmethod
    def _run(cmd):
        print(" ".join(cmd), flush=True)
        subprocess.check_call(cmd)


CORE = "custom_ops/core/*.cc"

setup(
    name="keras-xnor",
    version="0.1.0",
    description="XNOR-Net and BWN binary convolutional networks for Keras 3, with fast "
    "bitpacked CPU kernels for TensorFlow and TFLite",
    python_requires=">=3.11,<3.12",
    packages=["keras_xnor", "keras_xnor.training", "keras_xnor.tflite_export"],
    package_dir={
        "keras_xnor": "keras_xnor",
        "keras_xnor.training": "training",
        "keras_xnor.tflite_export": "tflite_export",
    },
    install_requires=[
        "tensorflow==2.21.*",
        "keras==3.15.*",
        "ai-edge-litert==2.3.*",
        "tensorflow-datasets==4.9.*",
        # tfds needs it to prepare datasets but declares it only for Python < 3.9
        # (tensorflow/datasets#11212).
        "importlib_resources==7.1.*",
        "numpy>=1.26,<3",
        "absl-py>=2.1",
    ],
    extras_require={"test": ["pytest>=8", "hypothesis>=6.100"], "demo": ["matplotlib>=3.8"]},
    ext_modules=[
        NativeLibrary("keras_xnor._ops._keras_xnor_ops", [CORE, "custom_ops/tf/*.cc"], True),
        NativeLibrary("keras_xnor._ops._keras_xnor_delegate", [CORE, "custom_ops/tflite/*.cc"],
                      False),
    ],
    cmdclass={"build_ext": BuildNativeLibraries},
    entry_points={
        "console_scripts": [
            "keras-xnor-train=keras_xnor.training.train:run",
            "keras-xnor-export=keras_xnor.tflite_export.cli:run",
        ]
    },
    zip_safe=False,
)
