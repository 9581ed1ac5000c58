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
from keras_xnor.training import datasets, trainer
from keras_xnor.training import train as train_cli

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


class _Interrupted(Exception):
    pass


def test_mixed_precision_run_learns_and_resumes_with_its_policy(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    common = dict(model="xnor_small", batch_size=64, max_train_examples=2048,
                  max_test_examples=500, output_dir=out, verbose=0,
                  dtype_policy="mixed_bfloat16", epochs=2)
    log_epoch = keras.callbacks.CSVLogger.on_epoch_end

    def killed_after_epoch_1(self, epoch, logs=None):  # after the checkpoint and the log
        log_epoch(self, epoch, logs)
        raise _Interrupted()

    monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_end", killed_after_epoch_1)
    with pytest.raises(_Interrupted):
        trainer.train(**common)
    monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_end", log_epoch)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    second = trainer.train(resume=True, **common)
    assert second["resumed_from_epoch"] == 1 and second["optimizer_iterations"] == 64
    assert second["test_accuracy"] > 0.55, second["test_accuracy"]
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


# --------------------------------------------------------------------------------------
# Steps per epoch, mixed_float16 resume, resume settings, CLI errors
# --------------------------------------------------------------------------------------

TINY = dict(batch_size=32, max_train_examples=128, max_test_examples=32, verbose=0)


def test_epoch_steps_count_the_batches_the_pipeline_makes():
    assert trainer.epoch_steps(100, 32, drop_remainder=False) == 4  # 3 full + 1 partial
    assert trainer.epoch_steps(100, 32, drop_remainder=True) == 3
    assert trainer.epoch_steps(96, 32, drop_remainder=True) == 3
    assert trainer.epoch_steps(10, 32, drop_remainder=False) == 1
    with pytest.raises(trainer.ConfigError, match="--batch_size=32 is larger than the 10"):
        trainer.epoch_steps(10, 32, drop_remainder=True)


def _optimizer_state(optimizer):
    # Names, not paths: a path holds the scope the variable was made in, which differs
    # between the live optimizer and a loaded one.
    return [(v.name, v.numpy().copy()) for v in optimizer.variables]


def test_mixed_float16_resume_keeps_the_optimizer_state(tmp_path, monkeypatch):
    # Optimizer state at the end of epoch 1 (the live optimizer, as checkpointed) and right
    # after --resume loads the checkpoint must be the same.
    saved, loaded = [], []
    checkpoint = trainer.EpochCheckpoint.on_epoch_end
    load_model = keras.models.load_model

    def on_epoch_end(self, epoch, logs=None):
        checkpoint(self, epoch, logs)
        saved.append(_optimizer_state(self.model.optimizer))

    def spy_load_model(*args, **kwargs):
        model = load_model(*args, **kwargs)
        loaded.append((type(model.optimizer).__name__, int(model.optimizer.iterations.numpy()),
                       _optimizer_state(model.optimizer)))
        return model

    monkeypatch.setattr(trainer.EpochCheckpoint, "on_epoch_end", on_epoch_end)
    monkeypatch.setattr(keras.models, "load_model", spy_load_model)
    common = dict(model="xnor_small", output_dir=str(tmp_path / "run"), validate=False,
                  dtype_policy="mixed_float16", **TINY)
    trainer.train(epochs=1, **common)
    second = trainer.train(epochs=1, resume=True, **common)  # nothing left to train
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert second["resumed_from_epoch"] == 1 and second["optimizer_iterations"] == 4
    optimizer_type, iterations, state = loaded[0]
    assert optimizer_type == "LossScaleOptimizer" and iterations == 4
    assert [name for name, _ in state] == [name for name, _ in saved[0]]
    for (name, value), (_, expected) in zip(state, saved[0]):
        np.testing.assert_array_equal(value, expected, err_msg=name)
    moments = [value for name, value in state if name == "conv1_kernel_momentum"]
    assert len(moments) == 1 and np.any(moments[0] != 0), [name for name, _ in state]


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A finished 1-epoch xnor_small run (the recipe's lr), to --resume with other settings."""
    out = str(tmp_path_factory.mktemp("resume") / "run")
    trainer.train(model="xnor_small", epochs=1, output_dir=out, validate=False, **TINY)
    return out


@pytest.mark.parametrize("changes, difference", [
    (dict(epochs=3), "--epochs: 1 -> 3"),
    (dict(model="float_small"), '--model: "xnor_small" -> "float_small"'),
    (dict(kernel_scale="learned"), '--kernel_scale: "mean_abs" -> "learned"'),
    (dict(use_k=False), "--use_k: true -> false"),
    (dict(learning_rate=5e-4), "--learning_rate: 0.001 -> 0.0005"),
    (dict(batch_size=16), "--batch_size: 32 -> 16"),
    (dict(steps_per_epoch=2), "steps per epoch"),
    (dict(max_train_examples=64), "--max_train_examples: 128 -> 64"),
    (dict(recipe="alexnet_xnor"), '--recipe: "fashion_mnist" -> "alexnet_xnor"'),
    (dict(dtype_policy="mixed_bfloat16"), '--dtype_policy: "float32" -> "mixed_bfloat16"'),
    (dict(seed=1), "--seed: 0 -> 1"),
    (dict(implementation="simulation"), '--implementation: "auto" -> "simulation"'),
])
def test_resume_with_other_settings_is_refused(one_epoch_run, changes, difference):
    settings = dict(model="xnor_small", epochs=1, validate=False, **TINY)
    settings.update(changes)
    with pytest.raises(trainer.ConfigError) as err:
        trainer.train(output_dir=one_epoch_run, resume=True, **settings)
    message = str(err.value)
    assert difference in message and "new --output_dir" in message
    assert trainer.latest_checkpoint(one_epoch_run)[1] == 1  # the run is untouched


def test_resume_allows_settings_that_do_not_change_the_training(one_epoch_run):
    # The recipe's values given explicitly, the data dir spelt out, other verbosity and
    # validation: the same run.
    metrics = trainer.train(model="xnor_small", output_dir=one_epoch_run, resume=True,
                            epochs=1, learning_rate=1e-3, recipe="fashion_mnist",
                            data_dir=datasets.DEBIAN_DIR,
                            validate=True, **dict(TINY, verbose=2))
    assert metrics["resumed_from_epoch"] == 1 and metrics["optimizer_iterations"] == 4


def test_settings_are_recorded_and_overwrite_removes_them(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / trainer.SETTINGS).write_text("{}")
    with pytest.raises(trainer.ConfigError, match="settings.json"):
        trainer.train(model="float_small", output_dir=str(out), epochs=1, **TINY)
    trainer.train(model="float_small", output_dir=str(out), epochs=1, overwrite=True,
                  validate=False, **TINY)
    with open(out / trainer.SETTINGS) as f:
        settings = json.load(f)
    assert settings["model"] == "float_small" and settings["epochs"] == 1
    assert settings["recipe"] == "fashion_mnist" and settings["learning_rate"] == 1e-3
    assert settings["steps_per_epoch"] == 4 and settings["train_examples"] == 128
    assert "verbose" not in settings and "output_dir" not in settings
    # A run from before settings were recorded resumes, with a warning.
    os.remove(out / trainer.SETTINGS)
    metrics = trainer.train(model="float_small", output_dir=str(out), epochs=1, resume=True,
                            validate=False, **TINY)
    assert metrics["resumed_from_epoch"] == 1
    assert "cannot check" in capsys.readouterr().out


def _run_cli(args, capsys):
    train_cli.define_flags()
    train_cli.FLAGS.unparse_flags()
    try:
        with pytest.raises(SystemExit) as exit_info:
            train_cli.run(["train"] + args)
    finally:
        train_cli.FLAGS.unparse_flags()
    return exit_info.value.code, capsys.readouterr().err


def test_cli_resume_with_other_settings_exits_2(one_epoch_run, capsys):
    code, err = _run_cli(["--model=xnor_small", "--epochs=2", "--batch_size=32",
                          "--max_train_examples=128", "--max_test_examples=32", "--resume",
                          "--output_dir=" + one_epoch_run], capsys)
    assert code == 2
    assert "error: --resume" in err and "--epochs: 1 -> 2" in err


@pytest.mark.parametrize("args, message", [
    (["--strategy=multi_worker"], "TF_CONFIG"),
    (["--output_dir={file}/sub"], "cannot write to --output_dir"),
    (["--width=0"], "--width must be a positive integer"),
    (["--seed=-1"], "--seed must be an integer"),
    (["--learning_rate=0"], "--learning_rate must be a positive number"),
    (["--learning_rate=-0.1"], "--learning_rate must be a positive number"),
    (["--learning_rate=nan"], "--learning_rate must be a positive number"),
    (["--verbose=5"], "--verbose must be"),
    (["--model=float_resnet18", "--dataset=imagenet2012", "--width=2"], "--width applies"),
    (["--epochs=two"], "--epochs"),
    (["--output_dir="], "--output_dir is required"),
])
def test_cli_bad_values_are_one_line_errors_with_exit_2(tmp_path, capsys, monkeypatch, args,
                                                        message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    args = ["--output_dir=%s" % (tmp_path / "out"), "--max_train_examples=64",
            "--max_test_examples=32", "--epochs=1", "--verbose=0"] + [
                a.format(file=a_file) for a in args]
    code, err = _run_cli(args, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert not os.path.exists(os.path.join(tmp_path, "out", "metrics.json"))
