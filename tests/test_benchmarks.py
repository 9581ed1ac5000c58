"""Smoke tests of the benchmark scripts (benchmarks/*.py), which `make test` does not run.

Each script runs once with the smallest settings (one shape or network, one thread, a few
calls) and its JSON is checked for what it must hold: every contender measured, every time
positive and finite, ratios consistent with the times they come from, files and outputs that
agree with the model. Nothing here asserts how fast anything is: speed is what the scripts
report, not what the tests check.
"""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, args, json_path):
    command = [sys.executable, os.path.join(ROOT, "benchmarks", script)] + args + [
        "--json", str(json_path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(json_path) as f:
        return json.load(f), done.stdout


def _positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_bench_conv(tmp_path):
    report, stdout = _run("bench_conv.py", [
        "--threads", "1", "--only", "alexnet_conv3", "--min-seconds", "0.02",
        "--roofline-seconds", "0.05", "--unroll", "3", "--short-unroll", "1"],
        tmp_path / "conv.json")
    assert "alexnet_conv3" in stdout
    (run,) = report["runs"]
    assert run["threads"] == 1 and _positive(run["roofline_bit_macs_per_s"])
    (row,) = run["results"]
    assert row["shape"] == "alexnet_conv3"
    assert row["bit_macs"] == 13 * 13 * 384 * 3 * 3 * 256
    for key in ("tflite_xnnpack_ms", "tflite_xnnpack_ms_min", "xnor_tflite_ms",
                "xnor_tflite_ms_min", "roofline_bit_macs_per_s"):
        assert _positive(row[key]), key
    # TF contenders are differences of two chain lengths: finite, and the speed-ups follow
    # from them (a noisy machine may make one negative, so only finiteness is required).
    for key in ("tf_float_ms", "xnor_ms", "tf_call_ms", "xnor_call_ms"):
        assert math.isfinite(row[key]), key
    assert row["speedup_vs_tf"] == pytest.approx(row["tf_float_ms"] / row["xnor_ms"])
    assert row["speedup_vs_tflite"] == pytest.approx(row["tflite_xnnpack_ms"] / row["xnor_ms"])
    assert row["tflite_speedup_vs_xnnpack"] == pytest.approx(
        row["tflite_xnnpack_ms"] / row["xnor_tflite_ms"])
    assert row["fraction_of_roofline"] == pytest.approx(
        row["bit_macs"] / (row["xnor_ms"] / 1e3) / row["roofline_bit_macs_per_s"])


@pytest.mark.parametrize("script, args, named", [
    ("bench_conv.py", ["--unroll", "5", "--short-unroll", "5"], "--short-unroll"),
    ("bench_conv.py", ["--retries", "-1"], "--retries"),
    ("bench_conv.py", ["--threads", "0"], "--threads"),
    ("bench_conv.py", ["--only", "resnet19"], "matches no shape; the shapes are resnet18_conv2_x"),
    ("bench_keras.py", ["--threads", "-1"], "--threads"),
    ("bench_tflite.py", ["--models", "resnet19"], "unknown --models resnet19"),
    ("bench_tflite.py", ["--runs", "0"], "--runs"),
    ("bench_tflite.py", ["--threads", "1 2"], "--threads"),
])
def test_benchmarks_reject_bad_arguments_before_measuring(script, args, named):
    command = [sys.executable, os.path.join(ROOT, "benchmarks", script)] + args
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2  # argparse's error, not a traceback from a worker
    assert named in done.stderr


def test_bench_keras(tmp_path):
    report, stdout = _run("bench_keras.py", [
        "--threads", "1", "--models", "resnet18", "--min-seconds", "0.02"],
        tmp_path / "keras.json")
    (run,) = report["runs"]
    (row,) = run["results"]
    assert row["network"] == "resnet18" and row["threads"] == 1
    for label in ("float", "xnor_compiled", "xnor_simulation"):
        assert _positive(row[label + "_ms"]) and _positive(row[label + "_ms_min"]), label
        assert row[label + "_ms_min"] <= row[label + "_ms"]
    # The compiled ops and the float simulation compute the same network.
    assert row["top1_agreement"] == 1.0
    assert row["compiled_vs_float"] == pytest.approx(row["float_ms"] / row["xnor_compiled_ms"])
    assert "resnet18" in stdout
    # The ratio columns say what they hold: float time over op time.
    header = [line for line in stdout.splitlines() if line.startswith("network")][0]
    assert header.split()[-3:] == ["float/op", "simul./op", "agree"]


def test_bench_tflite(tmp_path):
    report, stdout = _run("bench_tflite.py", [
        "--threads", "1", "--models", "resnet18", "--runs", "2", "--batch", "2"],
        tmp_path / "tflite.json")
    (row,) = report["results"]
    assert row["arch"] == "resnet18" and row["batch"] == report["batch"] == 2
    assert row["custom_ops"] == 16  # ResNet-18's binary 3x3 convs (projections stay float)
    sizes = row["size_bytes"]
    assert sizes["float"] > sizes["xnor"] > sizes["xnor_fp16_float_layers"] > 0
    assert row["size_ratio"]["xnor"] == pytest.approx(sizes["float"] / sizes["xnor"])
    # The exported model computes what the Keras model computes. Not to float precision: XNNPACK
    # and TF round the float first conv differently, which can flip the sign of a near-zero
    # activation, and a flip propagates (3% of the output range was seen once); a wrong layer,
    # scale or weight layout is off by the whole range.
    assert row["max_abs_diff_vs_keras"] <= 0.1 * max(1.0, row["max_abs_keras_output"])
    latency = row["latency"]["1"]
    for label in ("float_xnnpack", "xnor_delegate", "xnor_fp16_float_layers"):
        assert _positive(latency[label]["median_ms"]), label
    profile = latency["xnor_profile"]
    assert _positive(profile["binary_nodes_ms"])
    assert profile["binary_nodes_ms"] < profile["invoke_ms"]
    # The report only (no converter listing of the exported float model first).
    assert stdout.startswith("resnet18 (batch 2)"), stdout[:300]


def _bench_conv_module():
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location(
        "bench_conv", os.path.join(ROOT, "benchmarks", "bench_conv.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(shape, xnor, xnor_min, xnnpack=1.0, xnnpack_min=1.0, tfl=0.1, tfl_min=0.1):
    return {"shape": shape, "xnor_ms": xnor, "xnor_ms_min": xnor_min,
            "tflite_xnnpack_ms": xnnpack, "tflite_xnnpack_ms_min": xnnpack_min,
            "xnor_tflite_ms": tfl, "xnor_tflite_ms_min": tfl_min}


def test_bench_conv_names_a_noisy_window():
    bench = _bench_conv_module()
    quiet = [{"threads": 1, "roofline_bit_macs_per_s": 9e11,
              "results": [_row("a", 0.220, 0.215)]},
             {"threads": 2, "roofline_bit_macs_per_s": 1.82e12,
              "results": [_row("a", 0.115, 0.112)]}]
    assert bench.noise_notes(quiet) == []
    noisy = [{"threads": 1, "roofline_bit_macs_per_s": 9e11,
              "results": [_row("a", 0.220, 0.215, xnnpack=1.4, xnnpack_min=1.1)]},
             {"threads": 2, "roofline_bit_macs_per_s": 1.3e12,
              "results": [_row("a", 0.174, 0.131)]}]
    notes = bench.noise_notes(noisy)
    assert len(notes) == 3
    assert notes[0].startswith("a, 1 thread(s): TFLite XNNPACK median 1.400 ms is 1.27x")
    assert notes[1].startswith("a, 2 thread(s): XNOR op median 0.174 ms is 1.33x its min")
    assert "roofline at 2 threads is only 1.44x" in notes[2]


def test_bench_conv_measures_again_until_a_quiet_window():
    bench = _bench_conv_module()
    quiet = [{"threads": 2, "roofline_bit_macs_per_s": 1.82e12,
              "results": [_row("a", 0.115, 0.112)]}]
    noisy = [{"threads": 2, "roofline_bit_macs_per_s": 1.82e12,
              "results": [_row("a", 0.174, 0.131)]}]
    attempts, logged = [noisy, noisy, quiet, noisy], []
    runs, notes, discarded = bench.measure_until_quiet(lambda: attempts.pop(0), 5,
                                                       log=logged.append)
    assert runs is quiet and notes == []
    assert len(discarded) == 2 and len(logged) == 2 and attempts == [noisy]
    assert logged[0].startswith("attempt 1: noisy window (1 note(s), first: a, 2 thread(s)")
    # Out of retries: the last attempt is kept with its notes.
    attempts = [noisy, noisy, quiet]
    runs, notes, discarded = bench.measure_until_quiet(lambda: attempts.pop(0), 1,
                                                       log=logged.append)
    assert runs is noisy and len(notes) == 1 and len(discarded) == 1 and attempts == [quiet]
    # No retries: one measurement, whatever it shows.
    attempts = [noisy, quiet]
    runs, notes, discarded = bench.measure_until_quiet(lambda: attempts.pop(0), 0)
    assert runs is noisy and notes and discarded == []
