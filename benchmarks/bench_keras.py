"""Keras inference benchmark: XNOR networks in TensorFlow with the compiled ops (not a test).

What a Keras user sees before exporting anything: ``model(x, training=False)`` inside a
``tf.function`` for ResNet-18 and AlexNet (224x224, batch 1, keras_xnor.models), in float,
XNOR on the compiled ops (``implementation="compiled"``: weights packed once, see README) and
XNOR on the pure-TF float simulation (``implementation="simulation"``, the oracle every other
binary-net library for Keras runs). The three are timed in interleaved rounds in one process
per thread count (TF fixes its intra-op pool at start-up); figures are medians (and mins).

Usage::

    python benchmarks/bench_keras.py [--threads 1 2] [--models resnet18 alexnet] [--json PATH]
"""

import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_conv import run_workers, time_interleaved  # noqa: E402

NETWORKS = {"resnet18": "resnet18", "alexnet": "alexnet"}


def worker(args):
    """Runs every network at one thread count; prints one JSON document."""
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras  # noqa: PLC0415

    from keras_xnor import models  # noqa: PLC0415

    results = []
    for name in args.models:
        build = getattr(models, NETWORKS[name])
        keras.utils.set_random_seed(0)
        contenders = {
            "float": build(kind="float"),
            "xnor_compiled": build(kind="xnor", implementation="compiled"),
            "xnor_simulation": build(kind="xnor", implementation="simulation"),
        }
        contenders["xnor_simulation"].set_weights(contenders["xnor_compiled"].get_weights())
        x = tf.constant(np.random.default_rng(0).standard_normal((1, 224, 224, 3)),
                        tf.float32)
        methods = {}
        for label, model in contenders.items():
            fn = tf.function(lambda v, m=model: m(v, training=False), autograph=False)
            methods[label] = lambda fn=fn: fn(x).numpy()
        agree = float(np.mean(np.argmax(methods["xnor_compiled"](), -1)
                              == np.argmax(methods["xnor_simulation"](), -1)))
        times = time_interleaved(methods, args.min_seconds, warmup_seconds=2.0)
        row = {"network": name, "threads": args.threads, "top1_agreement": agree}
        for label, (median, best) in times.items():
            row[label + "_ms"] = 1e3 * median
            row[label + "_ms_min"] = 1e3 * best
        row["compiled_vs_float"] = row["float_ms"] / row["xnor_compiled_ms"]
        row["compiled_vs_simulation"] = row["xnor_simulation_ms"] / row["xnor_compiled_ms"]
        results.append(row)
    print(json.dumps({"threads": args.threads, "tf_version": tf.__version__,
                      "results": results}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--min-seconds", type=float, default=3.0,
                        help="minimum measuring time per network and contender")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.threads) < 1:
        parser.error("--threads must be >= 1, got %s" % args.threads)
    if args.worker:
        args.threads = args.threads[0]
        return worker(args)
    runs = run_workers(os.path.abspath(__file__), args.threads,
                       ["--min-seconds", str(args.min_seconds), "--models"] + args.models)
    print("median ms per image (batch 1, 224x224), model(x, training=False) in tf.function")
    print("%-9s %3s %9s %12s %14s %11s %13s %7s" % (
        "network", "thr", "float", "XNOR (op)", "XNOR (simul.)", "float/op", "simul./op",
        "agree"))
    for run in runs:
        for r in run["results"]:
            print("%-9s %3d %9.2f %12.2f %14.2f %10.2fx %12.2fx %6.0f%%" % (
                r["network"], r["threads"], r["float_ms"], r["xnor_compiled_ms"],
                r["xnor_simulation_ms"], r["compiled_vs_float"], r["compiled_vs_simulation"],
                100 * r["top1_agreement"]))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": platform.processor() or platform.machine(),
                       "cpu_count": os.cpu_count(), "runs": runs}, f, indent=2)
        print("wrote", args.json)


if __name__ == "__main__":
    main()
