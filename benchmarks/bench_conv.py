"""Benchmark of the XNOR convolution op against float convolutions (not a test).

For ResNet-18's four 3x3 stages and AlexNet conv2-conv5 (batch 1, SAME), it measures:

* TF float ``tf.nn.conv2d`` (oneDNN/Eigen),
* TFLite float with XNNPACK (a one-conv model from ``TFLiteConverter``, run by
  ``ai_edge_litert.interpreter.Interpreter(num_threads=t)``),
* our ``KerasXnorBinConv2D`` (float input binarized and packed inside, K map, alpha, bias;
  the filter pre-packed as in an exported model),
* the same binary conv on TFLite: a one-layer ``BinConv2D`` model exported by
  ``keras_xnor.tflite_export.convert`` and run with the keras-xnor delegate (the same core),
  so that it meets XNNPACK in the same runtime,

and prints the speed-ups plus our binary rate in bit-MACs/s (one XNOR+popcount of one bit
pair, ``N*OH*OW*O*KH*KW*C`` per conv) against the popcount roofline
(``keras_xnor_popcount_roofline`` from the core, loaded from the TF-free delegate library)
measured in the same worker process. TensorFlow fixes its intra-op pool at start-up, so every
thread count runs in its own subprocess.

Times are per conv. A TF contender is one ``tf.function`` (grappler off, so nothing is
deduplicated) chaining its conv ``--short-unroll`` times, and another chaining it ``--unroll``
times; its time per conv is the difference of the two calls' times divided by the difference
of the chain lengths. That is the marginal cost of one more conv in a graph, as in a network:
what a ``tf.function`` call costs by itself (Python, dispatch, waking the executor's threads:
0.2-0.4 ms here, printed as "call ms") is not charged to the conv. It is not small: at 20
chained calls it would add 10-20 us to each of our convs. TFLite times one ``invoke`` of a
one-conv model (its per-invoke cost, a few us, stays in: against us, not for us).
The methods are timed in interleaved rounds (a turn of each per round: untimed calls for 3 ms
while the previous method's thread pools stop spinning, then 5 timed calls) so that load from
other processes hits them alike; each figure comes from the medians (and from the mins) over the
timed calls, which last at least ``--min-seconds`` per method. After the table it names what
makes the window look noisy, if anything (a median more than 15% above its min, or a 2-thread
roofline under 1.8x the 1-thread one: another tenant of the VM took a CPU); the JSON keeps
those notes as ``noise_notes``. Ratios from a noisy window say little; re-run, or pass
``--retries N`` to have the benchmark measure again (up to N more times) until a window passes
the check: it then prints only that window's table, with one line per discarded attempt, and
the JSON lists the discarded attempts' notes as ``discarded_attempts``.

Usage::

    python benchmarks/bench_conv.py [--threads 1 2] [--json build/bench_conv.json]
"""

import argparse
import ctypes
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name, input H = W, in channels, out channels, kernel, stride
SHAPES = [
    ("resnet18_conv2_x", 56, 64, 64, 3, 1),
    ("resnet18_conv3_x", 28, 128, 128, 3, 1),
    ("resnet18_conv4_x", 14, 256, 256, 3, 1),
    ("resnet18_conv5_x", 7, 512, 512, 3, 1),
    ("alexnet_conv2", 27, 96, 256, 5, 1),
    ("alexnet_conv3", 13, 256, 384, 3, 1),
    ("alexnet_conv4", 13, 384, 384, 3, 1),
    ("alexnet_conv5", 13, 384, 256, 3, 1),
]
TARGETS = {"vs_tflite": 8.0, "vs_tf": 15.0, "roofline": 0.70}  # at 2 threads, ResNet-18
# A window is called noisy when a contender's median is this much above its min, or when the
# second thread adds less than this to the roofline (a popcount loop with no shared data
# scales by ~2x on two free cores).
NOISY_MEDIAN_OVER_MIN = 1.15
NOISY_ROOFLINE_SCALING = 1.8


def bit_macs(size, c_in, c_out, k, stride):
    out = -(-size // stride)
    return out * out * c_out * k * k * c_in


def time_interleaved(methods, min_seconds, warmup_seconds=0.5, min_rounds=7, settle_calls=3,
                     settle_seconds=0.003, timed_calls=5):
    """Median and min seconds per call of each method, measured in interleaved rounds.

    ``methods`` maps a name to a function. Each round gives every method a
    turn, so load from other processes on the machine hits all methods alike. A turn first
    makes untimed calls (``settle_calls`` of them, and for at least ``settle_seconds``), then
    times ``timed_calls`` calls: thread pools keep spinning for a while after their work
    (XNNPACK's, TF's and ours), and without the untimed calls every method would be timed
    while the previous method's pools still hold the cores. A count alone is not enough: three
    calls of a 0.13 ms conv end long before TF's pool threads stop spinning.
    """
    # Warm up for a while, not a few calls: the first few hundred calls in a fresh process
    # run up to 2x slower (allocator and page-fault warm-up), which would bias the medians.
    for fn in methods.values():
        start = time.perf_counter()
        calls = 0
        while calls < 5 or time.perf_counter() - start < warmup_seconds:
            fn()
            calls += 1
    samples = {name: [] for name in methods}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < min_seconds * len(methods):
        for name, fn in methods.items():
            settle_start = time.perf_counter()
            calls = 0
            while calls < settle_calls or time.perf_counter() - settle_start < settle_seconds:
                fn()
                calls += 1
            for _ in range(timed_calls):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: (statistics.median(v), min(v)) for name, v in samples.items()}


def per_conv(short, long, short_length, long_length):
    """Seconds per conv from two chain lengths' (median, min) seconds per call.

    Returns ((median-based, min-based) seconds per conv, median seconds a call costs on top of
    its convs): a call of n chained convs is modelled as call + n * conv.
    """
    extra = long_length - short_length
    conv = ((long[0] - short[0]) / extra, (long[1] - short[1]) / extra)
    return conv, short[0] - short_length * conv[0]


def delegate_library():
    pattern = os.path.join(ROOT, "keras_xnor", "_ops", "_keras_xnor_delegate*.so")
    matches = sorted(glob.glob(pattern))
    if not matches:
        raise SystemExit("no _keras_xnor_delegate*.so: run `make ops` first")
    library = ctypes.CDLL(matches[0])
    library.keras_xnor_popcount_roofline.restype = ctypes.c_double
    library.keras_xnor_popcount_roofline.argtypes = [ctypes.c_int, ctypes.c_double]
    library.keras_xnor_core_kernel_path.restype = ctypes.c_char_p
    return library


def worker(args):
    """Runs every shape at one thread count; prints one JSON document."""
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    # Chained identical calls must all run: no grappler deduplication or folding.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    import keras  # noqa: PLC0415

    import keras_xnor  # noqa: PLC0415
    from keras_xnor import ops  # noqa: PLC0415
    from keras_xnor.tflite_export import Interpreter as XnorInterpreter  # noqa: PLC0415
    from keras_xnor.tflite_export import convert  # noqa: PLC0415

    module = ops.load_ops()
    delegate = delegate_library()
    roofline = delegate.keras_xnor_popcount_roofline(args.threads, args.roofline_seconds)
    rng = np.random.default_rng(0)
    results = []
    for name, size, c_in, c_out, k, stride in SHAPES:
        if args.only and not any(part in name for part in args.only):
            continue
        x = tf.constant(rng.standard_normal((1, size, size, c_in)).astype(np.float32))
        w = tf.constant(rng.standard_normal((k, k, c_in, c_out)).astype(np.float32) * 0.05)
        packed = ops.pack_bits(tf.transpose(w, [3, 0, 1, 2]))
        alpha = tf.constant(rng.uniform(0.5, 1.0, c_out).astype(np.float32))
        bias = tf.zeros([c_out])
        attrs = dict(strides=[stride, stride], padding="SAME", dilations=[1, 1],
                     in_channels=c_in, use_k=True, relu=False)

        def chained(conv, length):
            @tf.function(autograph=False)
            def run():
                y = None
                for _ in range(length):
                    with tf.control_dependencies([] if y is None else [y]):
                        y = conv()
                return y

            return run

        def tf_conv():
            return tf.nn.conv2d(x, w, stride, "SAME")

        def our_conv():
            return module.keras_xnor_bin_conv2d(x, packed, alpha, bias, **attrs)

        spec_in = tf.TensorSpec([1, size, size, c_in], tf.float32)
        concrete = tf.function(lambda v: tf.nn.conv2d(v, w, stride, "SAME")).get_concrete_function(
            spec_in
        )
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
        interpreter = Interpreter(model_content=converter.convert(), num_threads=args.threads)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x.numpy())
        binary_layer = keras_xnor.BinConv2D(c_out, k, strides=stride, padding="same")
        binary_model = keras.Sequential([keras.Input((size, size, c_in)), binary_layer])
        binary_layer.set_weights([w.numpy(), bias.numpy()])
        xnor_interpreter = XnorInterpreter(model_content=convert(binary_model, batch_size=1),
                                           num_threads=args.threads)
        xnor_interpreter.allocate_tensors()
        xnor_interpreter.set_tensor(xnor_interpreter.get_input_details()[0]["index"], x.numpy())

        times = time_interleaved(
            {"tf_short": chained(tf_conv, args.short_unroll),
             "tf": chained(tf_conv, args.unroll), "tflite": interpreter.invoke,
             "xnor_short": chained(our_conv, args.short_unroll),
             "xnor": chained(our_conv, args.unroll), "xnor_tflite": xnor_interpreter.invoke},
            args.min_seconds,
        )
        tf_ms, tf_call = per_conv(times["tf_short"], times["tf"], args.short_unroll, args.unroll)
        our_ms, our_call = per_conv(times["xnor_short"], times["xnor"], args.short_unroll,
                                    args.unroll)
        tflite_ms, xnor_tflite_ms = times["tflite"], times["xnor_tflite"]

        macs = bit_macs(size, c_in, c_out, k, stride)
        results.append({
            "shape": name, "size": size, "in_channels": c_in, "out_channels": c_out,
            "kernel": k, "stride": stride, "threads": args.threads, "bit_macs": macs,
            "tf_float_ms": 1e3 * tf_ms[0], "tf_float_ms_min": 1e3 * tf_ms[1],
            "tflite_xnnpack_ms": 1e3 * tflite_ms[0], "tflite_xnnpack_ms_min": 1e3 * tflite_ms[1],
            "xnor_ms": 1e3 * our_ms[0], "xnor_ms_min": 1e3 * our_ms[1],
            "tf_call_ms": 1e3 * tf_call, "xnor_call_ms": 1e3 * our_call,
            "xnor_tflite_ms": 1e3 * xnor_tflite_ms[0],
            "xnor_tflite_ms_min": 1e3 * xnor_tflite_ms[1],
            "tflite_speedup_vs_xnnpack": tflite_ms[0] / xnor_tflite_ms[0],
            "speedup_vs_tf": tf_ms[0] / our_ms[0],
            "speedup_vs_tflite": tflite_ms[0] / our_ms[0],
            "speedup_vs_tf_best": tf_ms[1] / our_ms[1],
            "speedup_vs_tflite_best": tflite_ms[1] / our_ms[1],
            "bit_macs_per_s": macs / our_ms[0], "bit_macs_per_s_best": macs / our_ms[1],
        })
    roofline = max(roofline, delegate.keras_xnor_popcount_roofline(args.threads,
                                                                   args.roofline_seconds))
    for row in results:
        row["roofline_bit_macs_per_s"] = roofline
        row["fraction_of_roofline"] = row["bit_macs_per_s"] / roofline
        row["fraction_of_roofline_best"] = row["bit_macs_per_s_best"] / roofline
        # The speed-up over TFLite a kernel at 100% of the roofline would reach: float MACs
        # and bit-MACs are counted alike, so it is roofline / (TFLite's float MACs per s).
        row["speedup_vs_tflite_at_roofline"] = roofline * row["tflite_xnnpack_ms"] / (
            1e3 * row["bit_macs"])
    print(json.dumps({
        "threads": args.threads, "roofline_bit_macs_per_s": roofline,
        "kernel_path": delegate.keras_xnor_core_kernel_path().decode(),
        "tf_version": tf.__version__, "results": results,
    }))


def print_table(runs):
    header = ("%-17s %3s %8s %9s %8s %8s %6s %7s %8s %6s %9s %6s %8s %8s"
              % ("shape", "thr", "TF ms", "TFLite ms", "XNOR ms", "XNOR min", "xTF", "xTFLite",
                 "Gbop/s", "%roof", "XN-TFL ms", "xXNNP", "TF call", "XN call"))
    print("median ms per conv (batch 1; TF: marginal cost of one more conv in a graph); ratios "
          "of medians; Gbop/s = 1e9 bit-MACs/s of the XNOR op (median); XN-TFL = the binary "
          "conv on TFLite with the keras-xnor delegate, xXNNP = TFLite XNNPACK ms / XN-TFL ms; "
          "call = ms a tf.function call costs besides its convs (TF float, XNOR op)")
    print(header)
    print("-" * len(header))
    for run in runs:
        for r in run["results"]:
            print("%-17s %3d %8.3f %9.3f %8.3f %8.3f %6.1f %7.1f %8.1f %5.0f%% %9.3f %6.1f %8.3f "
                  "%8.3f" % (r["shape"], r["threads"], r["tf_float_ms"], r["tflite_xnnpack_ms"],
                             r["xnor_ms"], r["xnor_ms_min"], r["speedup_vs_tf"],
                             r["speedup_vs_tflite"], r["bit_macs_per_s"] / 1e9,
                             100 * r["fraction_of_roofline"], r["xnor_tflite_ms"],
                             r["tflite_speedup_vs_xnnpack"], r["tf_call_ms"], r["xnor_call_ms"]))
        print("  roofline at %d thread(s): %.1f G bit-MACs/s (kernel path %s)"
              % (run["threads"], run["roofline_bit_macs_per_s"] / 1e9, run["kernel_path"]))
    for run in runs:
        resnet = [r for r in run["results"] if r["shape"].startswith("resnet18")]
        if run["threads"] != 2 or not resnet:
            continue
        print("ResNet-18 shapes at 2 threads: min speed-up %.1fx vs TFLite XNNPACK (target %gx), "
              "%.1fx vs TF (target %gx), min %.0f%% of roofline (target %.0f%%)" % (
                  min(r["speedup_vs_tflite"] for r in resnet), TARGETS["vs_tflite"],
                  min(r["speedup_vs_tf"] for r in resnet), TARGETS["vs_tf"],
                  100 * min(r["fraction_of_roofline"] for r in resnet),
                  100 * TARGETS["roofline"]))


def noise_notes(runs):
    """Why the window these runs were measured in looks noisy (an empty list if it does not).

    On a shared VM another tenant can take a CPU away for a whole measuring window: medians
    then drift away from the mins, and the 2-thread figures sink toward the 1-thread ones.
    Ratios from such a window say little about the kernels; re-run.
    """
    notes = []
    for run in runs:
        for r in run["results"]:
            for what, median, fastest in (
                    ("XNOR op", r["xnor_ms"], r["xnor_ms_min"]),
                    ("TFLite XNNPACK", r["tflite_xnnpack_ms"], r["tflite_xnnpack_ms_min"]),
                    ("XNOR on TFLite", r["xnor_tflite_ms"], r["xnor_tflite_ms_min"])):
                if median > NOISY_MEDIAN_OVER_MIN * fastest:
                    notes.append("%s, %d thread(s): %s median %.3f ms is %.2fx its min %.3f ms"
                                 % (r["shape"], run["threads"], what, median, median / fastest,
                                    fastest))
    roofline = {run["threads"]: run["roofline_bit_macs_per_s"] for run in runs}
    if 1 in roofline and 2 in roofline and roofline[2] < NOISY_ROOFLINE_SCALING * roofline[1]:
        notes.append("the roofline at 2 threads is only %.2fx the 1-thread one (expected ~2x): "
                     "the second CPU was not fully available" % (roofline[2] / roofline[1]))
    return notes


def run_workers(script, thread_counts, worker_args):
    """Runs ``script --worker --threads T worker_args`` once per thread count, each in a fresh
    process (TF fixes its intra-op pool at start-up); returns the JSON each one printed last."""
    runs = []
    for threads in thread_counts:
        command = [sys.executable, script, "--worker", "--threads", str(threads)] + worker_args
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-5000:])
            raise SystemExit("benchmark worker with %d thread(s) failed" % threads)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def measure_until_quiet(measure, retries, log=print):
    """Calls ``measure()`` (which returns runs) until ``noise_notes`` finds nothing, at most
    ``retries`` + 1 times. Returns (runs, notes, discarded): the first quiet attempt (or the
    last one, with its notes, when none was quiet) and the notes of every earlier attempt."""
    discarded = []
    while True:
        runs = measure()
        notes = noise_notes(runs)
        if not notes or len(discarded) == retries:
            return runs, notes, discarded
        discarded.append(notes)
        log("attempt %d: noisy window (%d note(s), first: %s); measuring again"
            % (len(discarded), len(notes), notes[0]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--min-seconds", type=float, default=1.0,
                        help="minimum measuring time per shape and method")
    parser.add_argument("--unroll", type=int, default=25,
                        help="conv calls chained in the longer TF graph call")
    parser.add_argument("--short-unroll", type=int, default=5,
                        help="conv calls chained in the shorter TF graph call")
    parser.add_argument("--roofline-seconds", type=float, default=1.0)
    parser.add_argument("--only", nargs="*", help="substrings of shape names to run")
    parser.add_argument("--retries", type=int, default=0,
                        help="measure again, up to this many times, while the window is noisy")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.threads = args.threads[0]
        return worker(args)

    if args.retries < 0:
        parser.error("--retries must be >= 0, got %d" % args.retries)
    if min(args.threads) < 1:
        parser.error("--threads must be >= 1, got %s" % args.threads)
    if args.only and not any(
            part in name for part in args.only for name, *_ in SHAPES):
        parser.error("--only %s matches no shape; the shapes are %s"
                     % (" ".join(args.only), ", ".join(name for name, *_ in SHAPES)))
    if not 1 <= args.short_unroll < args.unroll:
        parser.error("need 1 <= --short-unroll < --unroll, got %d and %d"
                     % (args.short_unroll, args.unroll))
    worker_args = ["--min-seconds", str(args.min_seconds), "--unroll", str(args.unroll),
                   "--short-unroll", str(args.short_unroll),
                   "--roofline-seconds", str(args.roofline_seconds)]
    if args.only:
        worker_args += ["--only"] + args.only
    runs, notes, discarded = measure_until_quiet(
        lambda: run_workers(os.path.abspath(__file__), args.threads, worker_args), args.retries)
    print_table(runs)
    if discarded:
        print("%s after %d noisy attempt(s)" % ("quiet window" if not notes else
                                                "still noisy", len(discarded)))
    if notes:
        print("NOISY WINDOW (re-run before reading the ratios):")
        for note in notes:
            print("  " + note)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": platform.processor() or platform.machine(),
                       "cpu_count": os.cpu_count(), "targets_at_2_threads": TARGETS,
                       "noise_notes": notes, "discarded_attempts": discarded, "runs": runs},
                      f, indent=2)
        print("wrote", args.json)


if __name__ == "__main__":
    main()
