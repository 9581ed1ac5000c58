"""End-to-end TFLite benchmark: XNOR networks on LiteRT + keras-xnor delegate vs float on XNNPACK.

For XNOR-ResNet-18 and XNOR-AlexNet at 224x224 (first and last layers full precision, from
keras_xnor.models) against the same architectures in float, measured in one run on this machine:

* latency of one invoke on a batch of images (1 by default, ``--batch N``: the binary dense
  layers then run as GEMMs), median and min of N invokes after warm-up, at 1 and 2 threads
  (the delegate's pool and XNNPACK get the same thread count); the contenders' invokes are
  interleaved so that they see the same machine load;
* .tflite file sizes: float32 baseline, XNOR with float32 float layers, XNOR with float16
  float-layer weights (``convert(..., float_weights="float16")``).

Usage: python benchmarks/bench_tflite.py [--json PATH] [--runs N] [--models resnet18,alexnet]
                                          [--threads 1,2] [--batch N]
Not a test: it prints and saves numbers, it asserts nothing about time.
"""

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def _feed(interpreter, x):
    """Sizes the input for x when it differs (the float model's batch), allocates, sets x."""
    details = interpreter.get_input_details()[0]
    index = details["index"]
    if tuple(details["shape"]) != x.shape:
        interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)


def _latencies(interpreters, x, runs, warmup=3, settle=1):
    """Median/min ms of one invoke for each interpreter, runs interleaved round-robin so that
    every contender sees the same machine load (the box may be shared). Each turn first makes
    `settle` untimed invokes: thread pools (XNNPACK's, the delegate's) spin for a while after
    their work, and a contender timed right after another would share the cores with them."""
    for interpreter in interpreters.values():
        _feed(interpreter, x)
        for _ in range(warmup):
            interpreter.invoke()
    times = {name: [] for name in interpreters}
    for _ in range(runs):
        for name, interpreter in interpreters.items():
            for _ in range(settle):
                interpreter.invoke()
            start = time.perf_counter()
            interpreter.invoke()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t)}
            for name, t in times.items()}


def _delegate_share(model_content, x, runs, threads):
    """(mean ms per invoke, mean ms per invoke inside the delegate's binary nodes) over the
    same `runs` invokes, from the delegate's profile option (printed to stderr when the
    interpreter is deleted)."""
    import re  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from keras_xnor.tflite_export import Interpreter  # noqa: PLC0415

    interpreter = Interpreter(model_content=model_content, num_threads=threads,
                              delegate_profile=True)
    _feed(interpreter, x)
    start = time.perf_counter()
    for _ in range(runs):  # every invoke is profiled: compare the same invokes' totals
        interpreter.invoke()
    wall_ms = 1e3 * (time.perf_counter() - start)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            del interpreter
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read()
    inside_ms = sum(float(m) for m in re.findall(r"([0-9.]+) ms total", text))
    return wall_ms / runs, inside_ms / runs


ARCHS = ("resnet18", "alexnet")  # builders of keras_xnor.models with xnor and float kinds


def _float_tflite(model):
    import tensorflow as tf  # noqa: PLC0415

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # Keras 3's export prints its endpoint listing to stdout: not part of this report.
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def _build(models, arch, kind):
    builder = getattr(models, arch)
    # Logits (no softmax) so that the Keras-vs-TFLite check compares meaningful magnitudes.
    return builder(kind=kind, num_classes=1000, input_shape=(224, 224, 3),
                   classifier_activation=None)


def _randomize_batch_norms(model, rng):
    """Gives BatchNorm layers non-trivial statistics (as after training)."""
    import keras  # noqa: PLC0415

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n),
                               rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)])


def bench_arch(arch, runs, threads_list, rng, batch=1):
    from ai_edge_litert import interpreter as litert  # noqa: PLC0415

    from keras_xnor import models  # noqa: PLC0415
    from keras_xnor.tflite_export import Interpreter, builtin_op_names, convert  # noqa: PLC0415

    result = {"arch": arch, "batch": batch}
    xnor = _build(models, arch, "xnor")
    flt = _build(models, arch, "float")
    _randomize_batch_norms(xnor, rng)
    _randomize_batch_norms(flt, rng)
    t = time.time()
    xnor_bytes = convert(xnor, batch_size=batch)
    xnor16_bytes = convert(xnor, batch_size=batch, float_weights="float16")
    float_bytes = _float_tflite(flt)
    result["convert_s"] = time.time() - t
    names = builtin_op_names(xnor_bytes)
    result["custom_ops"] = sum(n.startswith("KerasXnor") for n in names)
    result["size_bytes"] = {"float": len(float_bytes), "xnor": len(xnor_bytes),
                            "xnor_fp16_float_layers": len(xnor16_bytes)}
    result["size_ratio"] = {"xnor": len(float_bytes) / len(xnor_bytes),
                            "xnor_fp16_float_layers": len(float_bytes) / len(xnor16_bytes)}
    x = rng.standard_normal((batch, 224, 224, 3)).astype(np.float32)
    # Sanity: the delegate path computes what Keras computes.
    keras_out = xnor(x, training=False).numpy()
    check = Interpreter(model_content=xnor_bytes, num_threads=2)
    _feed(check, x)
    check.invoke()
    tfl_out = check.get_tensor(check.get_output_details()[0]["index"])
    result["max_abs_diff_vs_keras"] = float(np.abs(tfl_out - keras_out).max())
    result["max_abs_keras_output"] = float(np.abs(keras_out).max())
    del check
    result["latency"] = {}
    for threads in threads_list:
        entry = _latencies({
            "float_xnnpack": litert.Interpreter(model_content=float_bytes, num_threads=threads),
            "xnor_delegate": Interpreter(model_content=xnor_bytes, num_threads=threads),
            "xnor_fp16_float_layers": Interpreter(model_content=xnor16_bytes,
                                                  num_threads=threads),
        }, x, runs)
        entry["speedup"] = entry["float_xnnpack"]["median_ms"] / entry["xnor_delegate"]["median_ms"]
        total, inside = _delegate_share(xnor_bytes, x, runs, threads)
        entry["xnor_profile"] = {"invoke_ms": total, "binary_nodes_ms": inside,
                                 "other_ms": total - inside}
        entry["speedup_min"] = entry["float_xnnpack"]["min_ms"] / entry["xnor_delegate"]["min_ms"]
        result["latency"][str(threads)] = entry
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--models", default="resnet18,alexnet")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", type=int, default=1, help="images per invoke")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    try:
        threads_list = [int(t) for t in args.threads.split(",")]
    except ValueError:
        threads_list = []
    if not threads_list or min(threads_list) < 1:
        parser.error("--threads must be a comma-separated list of ints >= 1, e.g. 1,2; got %r"
                     % args.threads)
    archs = [arch.strip() for arch in args.models.split(",")]
    unknown = [arch for arch in archs if arch not in ARCHS]
    if unknown:
        parser.error("unknown --models %s; choose from %s" % (", ".join(unknown),
                                                               ",".join(ARCHS)))
    rng = np.random.default_rng(0)
    from keras_xnor.tflite_export import _interpreter  # noqa: PLC0415

    import ctypes  # noqa: PLC0415

    lib = ctypes.CDLL(_interpreter.delegate_path())
    lib.keras_xnor_delegate_describe.restype = ctypes.c_char_p
    described = json.loads(lib.keras_xnor_delegate_describe().decode())
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_average_at_start": os.getloadavg(),
              "delegate_kernel": described.get("kernel"), "runs": args.runs,
              "batch": args.batch, "results": []}
    for arch in archs:
        result = bench_arch(arch, args.runs, threads_list, rng, args.batch)
        report["results"].append(result)
        sizes = result["size_bytes"]
        print("%s (batch %d): file float %.1f MB, xnor %.2f MB (%.1fx), xnor+fp16 float layers %.2f MB "
              "(%.1fx); max |tflite - keras| %.2g (outputs up to %.3g)"
              % (arch, args.batch, sizes["float"] / 1e6, sizes["xnor"] / 1e6, result["size_ratio"]["xnor"],
                 sizes["xnor_fp16_float_layers"] / 1e6,
                 result["size_ratio"]["xnor_fp16_float_layers"],
                 result["max_abs_diff_vs_keras"], result["max_abs_keras_output"]))
        for threads, entry in result["latency"].items():
            print("  %s thread(s): median (min) float/XNNPACK %.1f (%.1f) ms, xnor/delegate "
                  "%.1f (%.1f) ms -> %.2fx (min %.2fx); xnor+fp16 float layers %.1f (%.1f) ms"
                  % (threads, entry["float_xnnpack"]["median_ms"],
                     entry["float_xnnpack"]["min_ms"], entry["xnor_delegate"]["median_ms"],
                     entry["xnor_delegate"]["min_ms"], entry["speedup"], entry["speedup_min"],
                     entry["xnor_fp16_float_layers"]["median_ms"],
                     entry["xnor_fp16_float_layers"]["min_ms"]))
            profile = entry["xnor_profile"]
            print("    xnor profile: %.1f ms per invoke, of which %.1f ms in the binary nodes "
                  "(delegate) and %.1f ms in float builtins/XNNPACK"
                  % (profile["invoke_ms"], profile["binary_nodes_ms"], profile["other_ms"]))
        sys.stdout.flush()
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
