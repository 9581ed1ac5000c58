r"""The keras-xnor demo: float vs BWN vs XNOR on Fashion-MNIST, trained, exported, timed.

``make demo`` runs ``python -m keras_xnor.training.demo --output_dir=out/demo``:

1. trains ``float_small``, ``bwn_small`` and ``xnor_small`` (keras_xnor.models; same layout,
   only the layer kinds differ) with the same recipe, data and epochs;
2. evaluates each on the 10,000 Fashion-MNIST test images;
3. exports float and XNOR to ``.tflite`` with ``keras_xnor.tflite_export.convert`` (the XNOR
   layers become bitpacked custom ops) and runs them through
   ``keras_xnor.tflite_export.Interpreter`` (LiteRT + the keras-xnor delegate): test
   accuracy, agreement with the Keras model, file size and latency;
4. prints one table and writes it (``results.md``, ``results.json``) with a PNG of the
   training curves (``training_curves.png``) to the output folder.

Latency is the median of ``--latency_runs`` single-image calls after warm-up, measured in
this run on this machine (TF's default threads for Keras, ``--threads`` for LiteRT).
"""

import importlib.util
import json
import os
import statistics
import sys
import time

from absl import app, flags

KINDS = ("float", "bwn", "xnor")
FLAGS = flags.FLAGS


def define_flags():
    if "output_dir" in FLAGS:
        return
    flags.DEFINE_string("output_dir", "out/demo", "Folder for models, table and plot.")
    flags.DEFINE_integer("epochs", 3, "Training epochs per model.")
    flags.DEFINE_integer("max_train_examples", 20000,
                         "Train on the first N of the 60,000 images (0 = all).")
    flags.DEFINE_integer("batch_size", 128, "Batch size.")
    flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: Debian's).")
    flags.DEFINE_enum("implementation", "simulation", ["auto", "simulation", "compiled"],
                      "How the XNOR layers run while training (the TFLite model always "
                      "runs the bitpacked kernels).")
    flags.DEFINE_integer("threads", 2, "LiteRT threads (builtins and the keras-xnor delegate).")
    flags.DEFINE_integer("latency_runs", 100, "Timed single-image calls per row.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_integer("verbose", 1, "Keras progress: 1 = bar, 2 = a line per epoch.")


def _median_ms(fn, runs, warmup=5):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _keras_latency(model, image, runs):
    import tensorflow as tf  # noqa: PLC0415

    call = tf.function(lambda x: model(x, training=False))
    x = tf.constant(image)
    return _median_ms(lambda: call(x).numpy(), runs)


def _keras_runtime(kind, model, sample):
    """The runtime label of a Keras row: what ``model(sample, training=False)`` runs.

    Read from the traced graph, so it says what ran whatever ``--implementation`` asked
    for: the compiled XNOR op (on CPU with the op library) or the pure-TF float simulation.
    BWN layers always run float convolutions of alpha * sign(W).
    """
    import tensorflow as tf  # noqa: PLC0415

    from keras_xnor import spec  # noqa: PLC0415

    if kind == "float":
        return "Keras (TF, float)"
    call = tf.function(lambda x: model(x, training=False))
    graph = call.get_concrete_function(tf.TensorSpec(sample.shape, sample.dtype)).graph
    graph_def = graph.as_graph_def()
    op_types = {node.op for node in graph_def.node}
    op_types.update(node.op for f in graph_def.library.function for node in f.node_def)
    if any(op.startswith(spec.OP_PREFIX) for op in op_types):
        return "Keras (TF, compiled XNOR op)"
    if kind == "xnor":
        return "Keras (TF, pure-TF simulation)"
    return "Keras (TF, float conv of alpha*sign(W))"


def _tflite_eval(interpreter, x_test, batch=100):
    """Predicted classes of the whole test set through a LiteRT interpreter."""
    import numpy as np  # noqa: PLC0415

    inp = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(inp, [batch] + list(x_test.shape[1:]))
    interpreter.allocate_tensors()
    out = interpreter.get_output_details()[0]["index"]
    preds = []
    for start in range(0, len(x_test), batch):
        chunk = x_test[start:start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:],
                                                    chunk.dtype)])
        interpreter.set_tensor(inp, chunk)
        interpreter.invoke()
        preds.append(interpreter.get_tensor(out).argmax(axis=1))
    return np.concatenate(preds)[:len(x_test)]


def _tflite_latency(interpreter, image, runs):
    inp = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(inp, list(image.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp, image)
    return _median_ms(interpreter.invoke, runs)


def _export_and_run(kind, model, x_test, y_test, keras_pred, out_dir):
    """Converts ``model`` and measures it on LiteRT. Returns a table row or raises."""
    import numpy as np  # noqa: PLC0415

    from keras_xnor import tflite_export  # noqa: PLC0415

    content = tflite_export.convert(model)
    path = os.path.join(out_dir, "%s_small.tflite" % kind)
    with open(path, "wb") as f:
        f.write(content)
    interpreter = tflite_export.Interpreter(model_content=content, num_threads=FLAGS.threads)
    pred = _tflite_eval(interpreter, x_test)
    latency = _tflite_latency(interpreter, x_test[:1], FLAGS.latency_runs)
    custom_nodes = [op["name"] for op in tflite_export.custom_ops(content)]
    custom = ["%s x%d" % (name, custom_nodes.count(name)) for name in sorted(set(custom_nodes))]
    runtime = "TFLite + keras-xnor delegate" if custom else "TFLite (XNNPACK builtins)"
    return {
        "model": "%s_small" % kind, "runtime": runtime,
        "test_accuracy": float((pred == y_test).mean()),
        "agreement_with_keras": float((pred == keras_pred).mean()),
        "size_bytes": len(content), "size_what": ".tflite file",
        "latency_ms": latency, "file": path, "custom_ops": custom,
    }


def _format_table(rows):
    lines = ["| model | runtime | test accuracy | agrees with Keras | size | latency (1 image) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        acc = "%.2f%%" % (100 * r["test_accuracy"]) if r.get("test_accuracy") is not None \
            else "n/a"
        agree = "%.2f%%" % (100 * r["agreement_with_keras"]) \
            if r.get("agreement_with_keras") is not None else ""
        size = "%.1f KiB (%s)" % (r["size_bytes"] / 1024, r["size_what"]) \
            if r.get("size_bytes") else "n/a"
        lat = "%.3f ms" % r["latency_ms"] if r.get("latency_ms") is not None else "n/a"
        lines.append("| %s | %s | %s | %s | %s | %s |" % (r["model"], r["runtime"], acc, agree,
                                                         size, lat))
    return "\n".join(lines)


def _plot(histories, path):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    colors = {"float": "tab:blue", "bwn": "tab:green", "xnor": "tab:red"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    last_epoch = max((len(history) for history in histories.values()), default=1)
    for kind, history in histories.items():
        epochs = [h["epoch"] + 1 for h in history]
        color = colors.get(kind)
        for ax, metric in zip(axes, ("accuracy", "loss")):
            ax.plot(epochs, [h[metric] for h in history], "--x", color=color,
                    label="%s train" % kind)
            if history and "val_" + metric in history[0]:
                ax.plot(epochs, [h["val_" + metric] for h in history], "-o", color=color,
                        label="%s test" % kind)
    for ax, metric in zip(axes, ("accuracy", "loss")):
        # Whole epochs only, and room around a single point (a 1-epoch run).
        ax.set_xlim(0.5, last_epoch + 0.5)
        if last_epoch <= 12:
            ax.set_xticks(range(1, last_epoch + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fashion-MNIST: float vs BWN vs XNOR (keras-xnor small net)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    # Checked before training (the default run takes ~17 minutes), not when plotting.
    if importlib.util.find_spec("matplotlib") is None:
        print("error: the demo plots its training curves with matplotlib, which is not "
              "installed: pip install 'keras-xnor[demo]' (or matplotlib)", file=sys.stderr)
        return 2
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from keras_xnor import models  # noqa: PLC0415
    from keras_xnor.training import datasets, trainer  # noqa: PLC0415

    for name, minimum in (("threads", 1), ("latency_runs", 1), ("max_train_examples", 0)):
        if FLAGS[name].value < minimum:
            print("error: --%s must be >= %d, got %d" % (name, minimum, FLAGS[name].value),
                  file=sys.stderr)
            return 2
    out_dir = FLAGS.output_dir
    try:
        os.makedirs(out_dir, exist_ok=True)
        (_, _), (x_test_u8, y_test) = datasets.load_fashion_mnist(FLAGS.data_dir)
    except (datasets.DataNotFoundError, datasets.CorruptDataError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    except OSError as e:
        print("error: cannot create --output_dir=%s: %s" % (out_dir, e.strerror or e),
              file=sys.stderr)
        return 2
    x_test = datasets.fashion_mnist_normalize(x_test_u8).numpy()
    y_test = y_test.astype(np.int64)

    rows, histories, notes = [], {}, []
    trained = {}
    for kind in KINDS:
        print("\n=== %s_small ===" % kind, flush=True)
        keras.backend.clear_session()
        try:
            metrics = trainer.train(
                model="%s_small" % kind, dataset="fashion_mnist",
                output_dir=os.path.join(out_dir, kind), epochs=FLAGS.epochs,
                batch_size=FLAGS.batch_size,
                max_train_examples=FLAGS.max_train_examples or None, data_dir=FLAGS.data_dir,
                implementation=FLAGS.implementation, seed=FLAGS.seed, overwrite=True,
                verbose=FLAGS.verbose)
        except trainer.ConfigError as e:
            print("error: %s" % e, file=sys.stderr)
            return 2
        histories[kind] = metrics["history"]
        model = keras.models.load_model(metrics["model_path"])
        trained[kind] = model
        keras_pred = model.predict(x_test, batch_size=500, verbose=0).argmax(axis=1)
        runtime = _keras_runtime(kind, model, x_test[:1])
        row = {"model": "%s_small" % kind, "runtime": runtime,
               "test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"],
               "size_bytes": 4 * model.count_params(), "size_what": "float32 weights",
               "latency_ms": _keras_latency(model, x_test[:1], FLAGS.latency_runs),
               "keras_pred": keras_pred}
        rows.append(row)
        if kind == "xnor" and "compiled" not in runtime:
            # The same weights on the compiled XNOR op (bitpacked, on CPU) instead of the
            # simulation, when the op library is built.
            from keras_xnor import ops  # noqa: PLC0415

            if ops.compiled_ops_available():
                compiled = models.xnor_small(implementation="compiled")
                compiled.set_weights(model.get_weights())
                pred = compiled.predict(x_test, batch_size=500, verbose=0).argmax(axis=1)
                rows.append({
                    "model": "xnor_small", "runtime": "Keras (TF, compiled XNOR op)",
                    "test_accuracy": float((pred == y_test).mean()),
                    "agreement_with_keras": float((pred == keras_pred).mean()),
                    "size_bytes": None,
                    "latency_ms": _keras_latency(compiled, x_test[:1], FLAGS.latency_runs)})
            else:
                notes.append("compiled XNOR op not built (make ops): Keras compiled row skipped")
        try:
            rows.append(_export_and_run(kind, model, x_test, y_test, keras_pred, out_dir))
        except ImportError as e:
            notes.append("TFLite export of %s_small not possible: keras_xnor.tflite_export "
                         "is not importable (%s)" % (kind, e))
            rows.append({"model": "%s_small" % kind, "runtime": "TFLite (not available)"})
        except Exception as e:  # noqa: BLE001 (BWN export is a bonus row; float/xnor must work)
            if kind != "bwn":
                raise
            notes.append("BWN TFLite export failed: %s" % str(e).splitlines()[0])

    for r in rows:
        r.pop("keras_pred", None)
    table = _format_table(rows)
    png = os.path.join(out_dir, "training_curves.png")
    header = ("Fashion-MNIST, %d epochs on %s training images, %d test images; latency: "
              "median of %d single-image calls, LiteRT with %d threads."
              % (FLAGS.epochs, FLAGS.max_train_examples or 60000, len(y_test),
                 FLAGS.latency_runs, FLAGS.threads))
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(header + "\n\n" + table + "\n")
        for note in notes:
            f.write("\nNote: %s\n" % note)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"rows": rows, "histories": histories, "notes": notes,
                   "settings": {k: FLAGS[k].value for k in (
                       "epochs", "max_train_examples", "batch_size", "implementation",
                       "threads", "latency_runs", "seed")}}, f, indent=2, default=str)
    _plot(histories, png)
    print("\n" + header + "\n")
    print(table)
    for note in notes:
        print("Note: %s" % note)
    print("\nWrote %s, %s and %s (plus models and .tflite files in %s)."
          % (os.path.join(out_dir, "results.md"), os.path.join(out_dir, "results.json"), png,
             out_dir))
    return 0


def run(argv=None):
    define_flags()
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
