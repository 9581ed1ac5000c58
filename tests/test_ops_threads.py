"""The op sweeps of tests/test_ops.py again, with a fixed number of intra-op threads.

TensorFlow fixes its intra-op thread pool when its context starts, so each configuration runs
in a fresh subprocess (test_ops.py reads KERAS_XNOR_TEST_INTRA_OP_THREADS before using TF).
Two threads run twice: with the adapter's default chunking (the caller and a pool thread take
chunks from a shared counter), and with KERAS_XNOR_TF_FIXED_BLOCK_SIZE=1, which makes the
adapter hand the core one unit of work per chunk, so every kernel call is split into many
concurrent ranges. Results must stay bit-identical to the single-thread oracle.
"""

import os
import subprocess
import sys

import pytest

from keras_xnor import ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not ops.compiled_ops_available(), reason="compiled ops not built")
@pytest.mark.parametrize("threads,block_size", [(1, None), (2, None), (2, 1)])
def test_op_sweeps_with_threads(threads, block_size):
    env = dict(os.environ)
    env["KERAS_XNOR_TEST_INTRA_OP_THREADS"] = str(threads)
    env["KERAS_XNOR_TEST_MAX_EXAMPLES"] = "25"
    env.pop("KERAS_XNOR_TF_FIXED_BLOCK_SIZE", None)
    if block_size:
        env["KERAS_XNOR_TF_FIXED_BLOCK_SIZE"] = str(block_size)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    selection = "thread_setting or sweep or integer_part or float_stage or padded_taps"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         os.path.join(ROOT, "tests", "test_ops.py"), "-k", selection],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
