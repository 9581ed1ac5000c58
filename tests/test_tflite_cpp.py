"""Builds and runs custom_ops/tflite/tests/delegate_parts_test.cc: the FlexBuffer reader
(valid, every truncation, 200k corruptions), the TFLite ABI probe on fabricated contexts and the
thread pool, compiled with AddressSanitizer so an out-of-bounds read fails the test.
The binary is cached under build/ by a hash of its sources and flags."""

import glob
import hashlib
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["custom_ops/tflite/tests/delegate_parts_test.cc"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "custom_ops/tflite/*.cc"))
    if not p.endswith("delegate.cc")  # the delegate entry points need the core library
)
FLAGS = ["-std=c++17", "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer", "-I."]


def _build():
    digest = hashlib.sha256(" ".join(FLAGS).encode())
    for path in SOURCES + sorted(glob.glob(os.path.join(ROOT, "custom_ops/tflite/*.h"))):
        with open(os.path.join(ROOT, path), "rb") as f:
            digest.update(f.read())
    binary = os.path.join(ROOT, "build", "cpp", "delegate_parts_test.%s" % digest.hexdigest()[:16])
    if not os.path.exists(binary):
        os.makedirs(os.path.dirname(binary), exist_ok=True)
        tmp = binary + ".tmp%d" % os.getpid()
        subprocess.run(["g++", *FLAGS, *SOURCES, "-pthread", "-o", tmp], cwd=ROOT, check=True,
                       capture_output=True, text=True, timeout=600)
        os.replace(tmp, binary)
    return binary


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_delegate_parts_under_address_sanitizer():
    try:
        binary = _build()
    except subprocess.CalledProcessError as error:
        pytest.fail("could not compile the delegate parts test:\n" + error.stderr[-4000:])
    result = subprocess.run([binary], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "all checks passed" in result.stdout
