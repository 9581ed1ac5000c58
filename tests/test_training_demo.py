"""The demo's and the ablation sweep's reporting helpers (the full demo is `make demo`)."""

import os

from keras_xnor.training import ablations, demo


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
