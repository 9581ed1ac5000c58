"""keras_xnor.training: the trainer learns, resumes without losing epochs, and scales out."""

import csv
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_xnor  # noqa: F401 (registers the layers for load_model)
from keras_xnor.training import train as train_cli
from keras_xnor.training import trainer

TIMEOUT = 240
# The learning test trains with the default implementation ("auto": the compiled XNOR op in
# the forward pass when built). The subprocess tests use implementation="simulation" (its
# pure-TF twin, which the layer tests compare with the op): they test the machinery.


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _cli(args, **env):
    return subprocess.run([sys.executable, "-m", "keras_xnor.training.train"] + args,
                          capture_output=True, text=True, timeout=TIMEOUT, env=_env(**env))


def _history_epochs(output_dir):
    with open(os.path.join(output_dir, "history.csv"), newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_one_epoch_on_a_fashion_mnist_subset_learns(tmp_path):
    out = str(tmp_path / "run")
    metrics = trainer.train(model="xnor_small", epochs=1, batch_size=64,
                            max_train_examples=3072, max_test_examples=1000,
                            output_dir=out, verbose=0)
    # 10 classes: chance is 10%.
    assert metrics["test_accuracy"] > 0.55, metrics["test_accuracy"]
    with open(os.path.join(out, "metrics.json")) as f:
        written = json.load(f)
    assert written["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert written["test_loss"] > 0 and written["epochs_completed"] == 1
    assert written["optimizer_iterations"] == 48
    model = keras.models.load_model(os.path.join(out, "model.keras"))
    assert model.name == "xnor_small"
    for split in ("train", "validation"):
        assert any(f.startswith("events.out.tfevents")
                   for f in os.listdir(os.path.join(out, "logs", split)))
    path, epoch = trainer.latest_checkpoint(out)
    assert epoch == 1 and path.endswith("epoch_001.keras")


def test_mixed_precision_run_learns_and_resumes_with_its_policy(tmp_path):
    out = str(tmp_path / "run")
    common = dict(model="xnor_small", batch_size=64, max_train_examples=2048,
                  max_test_examples=500, output_dir=out, verbose=0,
                  dtype_policy="mixed_bfloat16")
    first = trainer.train(epochs=1, **common)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    second = trainer.train(epochs=2, resume=True, **common)
    assert second["resumed_from_epoch"] == 1 and second["optimizer_iterations"] == 64
    assert second["test_accuracy"] > 0.55, (first["test_accuracy"], second["test_accuracy"])
    model = keras.models.load_model(os.path.join(out, "model.keras"))
    binary = [layer for layer in model.layers if isinstance(layer, keras_xnor.BinConv2D)]
    assert binary and all(layer.dtype_policy.name == "mixed_bfloat16" for layer in binary)
    assert all(layer.kernel.dtype == "float32" for layer in binary)
    assert model.layers[-1].dtype_policy.name == "float32"  # the classifier
    assert model.output.dtype == "float32"


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(trainer.ConfigError, match="--resume"):
        trainer.train(model="float_small", output_dir=str(tmp_path), epochs=1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="xnor_resnet18"), "imagenet2012"),
    (dict(model="xnor_small", dataset="imagenet2012"), "28x28"),
    (dict(model="float_small", use_k=False), "xnor models only"),
    (dict(model="xnor_vgg"), "choose one of"),
    (dict(model="xnor_small", strategy="tpu"), "strategy"),
    (dict(model="xnor_small", epochs=0), "positive"),
    (dict(model="xnor_small", dtype_policy="float64"), "dtype_policy"),
])
def test_bad_settings_raise_config_errors(tmp_path, kwargs, message):
    with pytest.raises(trainer.ConfigError, match=message):
        trainer.train(output_dir=str(tmp_path), **kwargs)


def test_cli_reports_missing_data_clearly(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    train_cli.define_flags()
    train_cli.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as exit_info:
        train_cli.run(["train", "--model=xnor_small", "--data_dir=%s" % empty,
                       "--output_dir=%s" % (tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "does not hold the Fashion-MNIST IDX files" in err
    assert "apt-get install dataset-fashion-mnist" in err
    train_cli.FLAGS.unparse_flags()


def test_resume_after_a_crash_continues_with_the_next_epoch(tmp_path):
    out = str(tmp_path / "run")
    args = ["--model=xnor_small", "--epochs=3", "--batch_size=32", "--max_train_examples=256",
            "--max_test_examples=64", "--output_dir=" + out, "--verbose=2",
            "--implementation=simulation"]
    first = _cli(args + ["--crash_after_epoch=1"])
    assert first.returncode == trainer.CRASH_EXIT_CODE, first.stderr[-3000:]
    assert "Epoch 1/3" in first.stdout and "Epoch 2/3" not in first.stdout
    assert trainer.latest_checkpoint(out)[1] == 1
    assert not os.path.exists(os.path.join(out, "metrics.json"))

    second = _cli(args + ["--resume"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resuming from" in second.stdout
    assert "Epoch 1/3" not in second.stdout
    assert "Epoch 2/3" in second.stdout and "Epoch 3/3" in second.stdout
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert _history_epochs(out) == [0, 1, 2]  # every epoch once, none lost or repeated
    assert metrics["epochs_completed"] == 3 and metrics["resumed_from_epoch"] == 1
    # Optimizer state came back: 8 steps/epoch x 3 epochs, not 8 x 2 after a restart. The
    # lr schedule is a function of this counter.
    assert metrics["optimizer_iterations"] == 24
    assert trainer.latest_checkpoint(out)[1] == 3
    # Only the last two checkpoints are kept.
    kept = sorted(f for f in os.listdir(os.path.join(out, "checkpoints")) if f.endswith(".keras"))
    assert kept == ["epoch_002.keras", "epoch_003.keras"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_two_processes_end_with_identical_weights(tmp_path):
    out = str(tmp_path / "mw")
    ports = [_free_port(), _free_port()]
    cluster = {"worker": ["127.0.0.1:%d" % p for p in ports]}
    args = [sys.executable, "-m", "keras_xnor.training.train", "--model=xnor_small",
            "--strategy=multi_worker", "--epochs=1", "--steps_per_epoch=3", "--batch_size=32",
            "--max_train_examples=256", "--max_test_examples=64", "--output_dir=" + out,
            "--verbose=2", "--implementation=simulation"]
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=_env(TF_CONFIG=tf_config)))
    try:
        results = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
    assert "2 replica(s), 2 worker(s)" in results[0][0]
    chief = keras.models.load_model(os.path.join(out, "model.keras"))
    other = keras.models.load_model(os.path.join(out, "worker_1", "model.keras"))
    assert int(chief.optimizer.iterations.numpy()) == 3
    assert len(chief.weights) == len(other.weights)
    for a, b in zip(chief.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # Training moved the weights away from a fresh model's.
    fresh = keras_xnor.models.xnor_small()
    assert not np.array_equal(fresh.get_layer("conv2").kernel.numpy(),
                              chief.get_layer("conv2").kernel.numpy())
    # Only the chief checkpoints; both wrote metrics.
    assert os.path.exists(os.path.join(out, "checkpoints", "latest.json"))
    assert os.path.exists(os.path.join(out, "worker_1", "metrics.json"))


def test_mirrored_strategy_trains(tmp_path):
    metrics = trainer.train(model="bwn_small", strategy="mirrored", epochs=1, batch_size=32,
                            steps_per_epoch=3, max_train_examples=256, max_test_examples=64,
                            output_dir=str(tmp_path), verbose=0)
    assert metrics["num_replicas"] >= 1 and metrics["optimizer_iterations"] == 3
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
