"""The demo's and the ablation sweep's reporting helpers (the full demo is `make demo`), and
the sweep's reuse of finished and interrupted rows."""

import json
import os

import keras
import numpy as np
import pytest

from keras_xnor import models, ops
from keras_xnor.training import ablations, datasets, demo, trainer


def _history(n, base):
    return [{"epoch": e, "accuracy": base + 0.05 * e, "loss": 1.0 - 0.1 * e,
             "val_accuracy": base + 0.04 * e, "val_loss": 1.1 - 0.1 * e} for e in range(n)]


def test_training_curves_png(tmp_path):
    path = str(tmp_path / "curves.png")
    demo._plot({"float": _history(3, 0.8), "bwn": _history(3, 0.78), "xnor": _history(3, 0.7)},
               path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 10_000


def test_demo_refuses_to_start_without_matplotlib(monkeypatch, capsys):
    # Checked before ~17 minutes of training, not when the curves are plotted at the end.
    real = demo.importlib.util.find_spec
    monkeypatch.setattr(demo.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setattr(datasets, "load_fashion_mnist", pytest.fail)
    assert demo.main([]) == 2  # first thing main does: no flag is read
    assert "keras-xnor[demo]" in capsys.readouterr().err


def test_demo_table_has_every_row_and_column():
    rows = [
        {"model": "float_small", "runtime": "Keras (TF, float)", "test_accuracy": 0.9,
         "size_bytes": 2048, "size_what": "float32 weights", "latency_ms": 1.5},
        {"model": "xnor_small", "runtime": "TFLite + keras-xnor delegate", "test_accuracy": 0.88,
         "agreement_with_keras": 0.999, "size_bytes": 1024, "size_what": ".tflite file",
         "latency_ms": 0.25},
        {"model": "bwn_small", "runtime": "TFLite (not available)"},
    ]
    lines = demo._format_table(rows).splitlines()
    assert lines[0].startswith("| model | runtime | test accuracy")
    assert len(lines) == 2 + len(rows)
    assert "| 90.00% |" in lines[2] and "2.0 KiB (float32 weights)" in lines[2]
    assert "99.90%" in lines[3] and "0.250 ms" in lines[3]
    assert lines[4].count("n/a") == 3


def test_ablation_table_reports_the_gap_to_float():
    rows = [
        {"row": "float", "model": "float_small", "setting": "defaults", "test_accuracy": 0.9,
         "test_loss": 0.3, "train_seconds": 10.0},
        {"row": "xnor_no_k", "model": "xnor_small", "setting": "use_k=False",
         "test_accuracy": 0.875, "test_loss": 0.4, "train_seconds": 12.0},
    ]
    text = ablations.table(rows)
    assert "| xnor_no_k | xnor_small | use_k=False | 87.50% | -2.50 pt |" in text
    assert {r[0] for r in ablations.RUNS} >= {"float", "bwn", "xnor", "xnor_learned_alpha",
                                              "xnor_cbap", "xnor_no_k"}


@pytest.mark.parametrize("implementation", ["simulation", "compiled", "auto"])
def test_demo_keras_row_says_what_ran(implementation):
    compiled_available = ops.compiled_ops_available()
    if implementation == "compiled" and not compiled_available:
        pytest.skip("the compiled op library is not built")
    image = np.zeros((1, 28, 28, 1), np.float32)
    runtime = demo._keras_runtime(
        "xnor", models.xnor_small(implementation=implementation), image)
    # This machine has no GPU: "auto" runs the op when the library is there.
    ran_compiled = implementation == "compiled" or (implementation == "auto"
                                                    and compiled_available)
    assert runtime == ("Keras (TF, compiled XNOR op)" if ran_compiled
                       else "Keras (TF, pure-TF simulation)")
    assert demo._keras_runtime("float", models.float_small(), image) == "Keras (TF, float)"
    bwn = demo._keras_runtime("bwn", models.bwn_small(), image)
    assert "compiled" not in bwn and "simulation" not in bwn


class _Interrupted(Exception):
    pass


def test_ablation_sweep_resumes_an_interrupted_row_and_reuses_finished_ones(
        tmp_path, monkeypatch, capsys):
    data = str(tmp_path / "data")
    os.makedirs(data)
    rng = np.random.default_rng(0)
    for key, stem in datasets.FASHION_MNIST_FILES.items():
        n = 64 if key.startswith("train") else 32
        shape = (n, 28, 28) if key.endswith("images") else (n,)
        high = 256 if key.endswith("images") else 10
        datasets.write_idx(os.path.join(data, stem + ".gz"),
                           rng.integers(0, high, shape).astype(np.uint8))
    out = str(tmp_path / "sweep")
    flags = dict(epochs=2, batch_size=16, only=["xnor"], data_dir=data, verbose=0)

    # Interrupted after epoch 1 was checkpointed and logged (history.csv).
    log_epoch = keras.callbacks.CSVLogger.on_epoch_end

    def killed_after_epoch_1(self, epoch, logs=None):
        log_epoch(self, epoch, logs)
        raise _Interrupted()

    monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_end", killed_after_epoch_1)
    with pytest.raises(_Interrupted):
        ablations.sweep(out, **flags)
    monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_end", log_epoch)
    assert trainer.latest_checkpoint(os.path.join(out, "xnor"))[1] == 1

    # Other flags cannot continue the row's checkpoint; the error names the row.
    with pytest.raises(trainer.ConfigError, match="row xnor: .*--epochs: 2 -> 3"):
        ablations.sweep(out, **dict(flags, epochs=3))

    rows = ablations.sweep(out, **flags)  # the same flags: the row resumes
    assert "Resuming from" in capsys.readouterr().out
    with open(os.path.join(out, "xnor", "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["resumed_from_epoch"] == 1 and metrics["epochs_completed"] == 2
    assert metrics["optimizer_iterations"] == 2 * 4
    assert [r["row"] for r in rows] == ["xnor"] and rows[0]["epochs"] == 2

    again = ablations.sweep(out, **flags)  # finished: reused, not retrained
    assert "xnor: reusing" in capsys.readouterr().out
    assert again == rows
