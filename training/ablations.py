r"""The paper's ablations on Fashion-MNIST, one table: ``python -m keras_xnor.training.ablations``.

Runs, with the same recipe, epochs and data for every row:

* float vs BWN vs XNOR (the small net, B-A-C-P, alpha of eq. 6, K on);
* XNOR with alpha of eq. 6 vs a learned alpha (``kernel_scale``);
* XNOR with B-A-C-P vs C-B-A-P blocks (``block_order``, Fig. 3 / Table 3b);
* XNOR with and without K (``use_k``, eq. 11);
* BWN with alpha of eq. 6 vs learned alpha.

Each run is ``keras_xnor.training.trainer.train`` into OUTPUT_DIR/<row>/ (metrics.json,
model, logs); the table goes to OUTPUT_DIR/ablations.md and .json. Rows already finished
(metrics.json present) are reused, and an interrupted row resumes from its last checkpoint,
so an interrupted sweep run again with the same flags continues where it stopped. (A row's
checkpoint only continues with the settings it started with; other flags need a new
--output_dir.)

Example::

    python -m keras_xnor.training.ablations --output_dir=out/ablations --epochs=3
"""

import json
import os
import sys
import time

from absl import app, flags

RUNS = (
    # (row name, model, overrides)
    ("float", "float_small", {}),
    ("bwn", "bwn_small", {}),
    ("xnor", "xnor_small", {}),
    ("xnor_learned_alpha", "xnor_small", {"kernel_scale": "learned"}),
    ("xnor_cbap", "xnor_small", {"block_order": "CBAP"}),
    ("xnor_no_k", "xnor_small", {"use_k": False}),
    ("bwn_learned_alpha", "bwn_small", {"kernel_scale": "learned"}),
)

FLAGS = flags.FLAGS


def define_flags():
    if "output_dir" in FLAGS:
        return
    flags.DEFINE_string("output_dir", "out/ablations", "Folder for the runs and the table.")
    flags.DEFINE_integer("epochs", 3, "Epochs per run (the same for every row).")
    flags.DEFINE_integer("batch_size", None, "Batch size (default: the recipe's, 128).")
    flags.DEFINE_integer("max_train_examples", None, "Use only the first N training images.")
    flags.DEFINE_list("only", None, "Run only these rows (names: %s)."
                      % ", ".join(r[0] for r in RUNS))
    flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: Debian's).")
    flags.DEFINE_enum("implementation", "simulation", ["auto", "simulation", "compiled"],
                      "XNOR layers' implementation while training.")
    flags.DEFINE_integer("seed", 0, "Random seed (the same for every row).")
    flags.DEFINE_integer("verbose", 2, "Keras verbosity.")


def table(rows):
    """Markdown table of the rows (dicts from metrics.json plus 'row' and 'setting')."""
    base = {r["row"]: r["test_accuracy"] for r in rows}
    ref = base.get("float")
    lines = ["| run | model | setting | test accuracy | vs float | test loss | train s |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        delta = "" if ref is None else "%+.2f pt" % (100 * (r["test_accuracy"] - ref))
        lines.append("| %s | %s | %s | %.2f%% | %s | %.4f | %s |" % (
            r["row"], r["model"], r["setting"], 100 * r["test_accuracy"], delta,
            r["test_loss"], r.get("train_seconds", "")))
    return "\n".join(lines)


def sweep(output_dir, epochs=3, batch_size=None, max_train_examples=None, only=None,
          data_dir=None, implementation="simulation", seed=0, verbose=2):
    """Trains every row of RUNS (or those in ``only``) into output_dir/<row>/.

    A finished row (metrics.json present) is reused; an interrupted one resumes from its
    last checkpoint, which requires the settings it started with.

    Returns:
        The table rows (see :func:`table`), in the order of RUNS.

    Raises:
        keras_xnor.training.trainer.ConfigError: bad settings, or a row's checkpoint was
            made with other settings (the message names the row).
        keras_xnor.training.datasets.DataNotFoundError, CorruptDataError: the data.
    """
    from keras_xnor.training import trainer  # noqa: PLC0415 (imports TF)
    import keras  # noqa: PLC0415

    os.makedirs(output_dir, exist_ok=True)
    rows = []
    for row, model, overrides in RUNS:
        if only and row not in only:
            continue
        out = os.path.join(output_dir, row)
        metrics_path = os.path.join(out, "metrics.json")
        setting = ", ".join("%s=%s" % kv for kv in overrides.items()) or "defaults"
        if os.path.isfile(metrics_path):
            with open(metrics_path) as f:
                metrics = json.load(f)
            print("%s: reusing %s" % (row, metrics_path), flush=True)
        else:
            start = time.time()
            keras.backend.clear_session()
            config = trainer.TrainConfig(
                model=model, dataset="fashion_mnist", output_dir=out, epochs=epochs,
                batch_size=batch_size, max_train_examples=max_train_examples,
                data_dir=data_dir, implementation=implementation, seed=seed, verbose=verbose,
                resume=True, **overrides)
            try:
                metrics = trainer.train(config)
            except trainer.ConfigError as e:
                raise trainer.ConfigError("row %s: %s" % (row, e)) from e
            metrics["train_seconds"] = round(time.time() - start, 1)
            with open(metrics_path, "w") as f:
                json.dump(metrics, f, indent=2, sort_keys=True, default=str)
        rows.append({"row": row, "model": model, "setting": setting,
                     "test_accuracy": metrics["test_accuracy"],
                     "test_loss": metrics["test_loss"],
                     "train_seconds": metrics.get("train_seconds"),
                     "epochs": metrics["epochs"]})
    return rows


def main(argv):
    del argv
    from keras_xnor.training import datasets, trainer  # noqa: PLC0415 (imports TF)

    try:
        rows = sweep(FLAGS.output_dir, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
                     max_train_examples=FLAGS.max_train_examples, only=FLAGS.only,
                     data_dir=FLAGS.data_dir, implementation=FLAGS.implementation,
                     seed=FLAGS.seed, verbose=FLAGS.verbose)
    except (trainer.ConfigError, datasets.DataNotFoundError, datasets.CorruptDataError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    text = table(rows)
    with open(os.path.join(FLAGS.output_dir, "ablations.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(FLAGS.output_dir, "ablations.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(text)
    print("Wrote %s" % os.path.join(FLAGS.output_dir, "ablations.md"))
    return 0


def run(argv=None):
    define_flags()
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
