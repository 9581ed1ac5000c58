"""The training loop behind ``python -m keras_xnor.training.train`` (and the demo).

:func:`train` builds a model of :mod:`keras_xnor.models`, its dataset and recipe, fits it
with ``model.fit`` (optionally under a ``tf.distribute`` strategy), checkpoints the full
model after every epoch, evaluates on the test split and writes::

    OUTPUT_DIR/settings.json         what the run trains with (checked by --resume)
    OUTPUT_DIR/metrics.json          test_accuracy, test_loss, history, run settings
    OUTPUT_DIR/model.keras           the final model (keras.models.load_model-able)
    OUTPUT_DIR/history.csv           one row per epoch (appended across resumes)
    OUTPUT_DIR/logs/                 TensorBoard logs
    OUTPUT_DIR/checkpoints/          epoch_NNN.keras + latest.json (the last two kept)

Resuming: a checkpoint is the whole compiled model (weights, optimizer slots and
``optimizer.iterations``, which drives the lr schedule) plus the number of finished epochs;
``resume=True`` loads the newest one and continues with the next epoch, so a run killed at
any point loses at most the epoch in progress. A checkpoint can only continue the run it
belongs to: ``resume=True`` compares the settings of the new call with the run's
``settings.json`` and raises :class:`ConfigError` naming every difference (model and its
options, recipe, epochs, batch size, learning rate, steps per epoch, data size, seed, dtype
policy, strategy, ...). The settings that do not change what is trained may differ: output
verbosity, ``validate``, where the data is read from (``data_dir``, ``manual_dir``,
``download``) and ``crash_after_epoch``. To train with other settings, use a new
``output_dir``.

Under MultiWorkerMirroredStrategy only the chief (worker 0 when there is no "chief" task)
writes OUTPUT_DIR; the other workers write their logs and final model to
OUTPUT_DIR/worker_<i>/ and resume from the chief's checkpoints (shared file system).
"""

import contextlib
import csv
import dataclasses
import json
import math
import numbers
import os
import shutil
import sys
import time

import keras
import tensorflow as tf

from keras_xnor import models
from keras_xnor.training import datasets, recipes

STRATEGIES = ("default", "mirrored", "multi_worker")
DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"
SETTINGS = "settings.json"
VERBOSITY = (0, 1, 2, "auto")
IMPLEMENTATIONS = ("auto", "simulation", "compiled")
# TrainConfig fields that do not change what a run trains: --resume lets them differ.
RESUME_FREE_FIELDS = ("output_dir", "resume", "overwrite", "data_dir", "manual_dir", "download",
                      "validate", "verbose", "crash_after_epoch")
CRASH_EXIT_CODE = 75


class ConfigError(ValueError):
    """A bad combination of settings; the message says what to change."""


@dataclasses.dataclass
class TrainConfig:
    """Settings of one run; the CLI flags map one-to-one onto these fields.

    Attributes:
        model: a :mod:`keras_xnor.models` name, e.g. "xnor_small", "bwn_resnet18".
        dataset: "fashion_mnist" or "imagenet2012".
        output_dir: where results, checkpoints and logs go.
        recipe: a :mod:`recipes` name (default: the model's, see recipes.default_for).
        epochs, batch_size, learning_rate: override the recipe's (positive).
        strategy: "default" (no distribution), "mirrored" (all local devices) or
            "multi_worker" (MultiWorkerMirroredStrategy, cluster from TF_CONFIG).
        resume: continue from the newest checkpoint in output_dir (fresh start if none);
            the other settings must be those of the run (see the module docstring).
        overwrite: delete earlier checkpoints/results in output_dir instead of refusing.
        data_dir: Fashion-MNIST IDX folder, or the tfds data dir for ImageNet.
        manual_dir: ImageNet: folder with the ILSVRC2012 tars.
        download: allow tfds to download Fashion-MNIST when it is not installed.
        steps_per_epoch: cap on the steps of an epoch (the training set repeats).
        max_train_examples, max_test_examples: use only the first N examples.
        kernel_scale, block_order, use_k, width: model options (the ablations); width
            (a positive integer) applies to the small nets only.
        implementation: how xnor layers run: "auto" (compiled op on CPU when the library
            is there), "simulation" (pure TF) or "compiled".
        augment: random horizontal flips (Fashion-MNIST).
        validate: evaluate on the test split after every epoch (for the curves).
        seed: random seed (weights init, shuffling), 0 <= seed < 2**32.
        jit_compile: XLA-compile the train step (off: the binary ops are custom ops).
        dtype_policy: "float32", or a mixed precision policy for the new model's layers:
            "mixed_float16" (GPUs; the optimizer gets Keras' loss scaling) or
            "mixed_bfloat16". The latent weights and the classifier stay float32, and the
            binary layers still run the compiled op on CPU. Checkpoints are loaded under
            the run's policy (a resumed run must use the policy it started with).
        verbose: Keras progress output (1 = progress bar, 2 = one line per epoch, 0 = none,
            "auto").
        crash_after_epoch: testing aid: exit abruptly (code 75) right after the checkpoint
            of this epoch (1-based), as if the process had been killed.
    """

    model: str = "xnor_small"
    dataset: str = "fashion_mnist"
    output_dir: str = "out/train"
    recipe: str = None
    epochs: int = None
    batch_size: int = None
    learning_rate: float = None
    strategy: str = "default"
    resume: bool = False
    overwrite: bool = False
    data_dir: str = None
    manual_dir: str = None
    download: bool = False
    steps_per_epoch: int = None
    max_train_examples: int = None
    max_test_examples: int = None
    kernel_scale: str = "mean_abs"
    block_order: str = "BACP"
    use_k: bool = True
    width: int = 1
    implementation: str = "auto"
    augment: bool = False
    validate: bool = True
    seed: int = 0
    jit_compile: bool = False
    dtype_policy: str = "float32"
    verbose: object = 1
    crash_after_epoch: int = None


# --------------------------------------------------------------------------------------
# Distribution
# --------------------------------------------------------------------------------------


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy with the ``reduce`` that Keras 3's ``fit`` expects.

    Keras 3 calls ``strategy.reduce`` in two ways the multi-worker strategy rejects
    (keras-team/keras#20585): on the (x, y) tuple of the first batch, to learn the input
    shapes, and with ``axis=0`` on the scalar loss and metrics of each step. This reduces
    each element of a nested value separately and treats ``axis`` on a scalar as a plain
    cross-replica mean, which is what the single-worker strategies do.
    """

    def reduce(self, reduce_op, value, axis):
        parent = super(_MultiWorkerMirroredStrategy, self)

        def reduce_one(v):
            if axis is not None and _rank(v) == 0:
                return parent.reduce(reduce_op, v, axis=None)
            return parent.reduce(reduce_op, v, axis)

        return tf.nest.map_structure(reduce_one, value)


def _rank(value):
    if isinstance(value, tf.distribute.DistributedValues):
        value = value.values[0] if hasattr(value, "values") else value
    shape = getattr(value, "shape", None)
    return None if shape is None else shape.rank


def make_strategy(name):
    """The ``tf.distribute`` strategy called ``name`` (see TrainConfig.strategy).

    Must run before any other TensorFlow op in the process when ``name="multi_worker"``.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError(
                "--strategy=multi_worker needs the cluster in the TF_CONFIG environment "
                "variable, e.g. TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", "
                "\"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}' on the "
                "first machine (index 1 on the second).")
        try:
            tf_config = json.loads(os.environ["TF_CONFIG"])
        except ValueError as e:
            raise ConfigError("TF_CONFIG is not valid JSON (%s): %r"
                              % (e, os.environ["TF_CONFIG"])) from e
        if not isinstance(tf_config, dict) or not tf_config.get("cluster"):
            raise ConfigError("TF_CONFIG has no \"cluster\": %r" % os.environ["TF_CONFIG"])
        return _MultiWorkerMirroredStrategy()
    raise ConfigError("unknown strategy %r; known: %s" % (name, ", ".join(STRATEGIES)))


def _worker_role(strategy):
    """(is_chief, task_id, num_workers) of this process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, 0, 1
    spec = resolver.cluster_spec().as_dict()
    num_workers = len(spec.get("worker", [])) + len(spec.get("chief", []))
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0
                                        and "chief" not in spec)
    return is_chief, task_id, max(1, num_workers)


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def _atomic_write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def latest_checkpoint(output_dir):
    """(path, finished_epochs) of the newest checkpoint in output_dir, or (None, 0)."""
    ckpt_dir = os.path.join(output_dir, CHECKPOINT_DIR)
    try:
        with open(os.path.join(ckpt_dir, LATEST)) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None, 0
    path = os.path.join(ckpt_dir, state["file"])
    if not os.path.isfile(path):
        return None, 0
    return path, int(state["epoch"])


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the full compiled model after every epoch, atomically, keeping the last ``keep``.

    ``latest.json`` is written after the ``.keras`` file is complete, so a crash while
    saving leaves the previous checkpoint as the latest one.
    """

    def __init__(self, output_dir, keep=2, write=True):
        super().__init__()
        self.ckpt_dir = os.path.join(output_dir, CHECKPOINT_DIR)
        self.keep = int(keep)
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        if not self.write:
            return
        os.makedirs(self.ckpt_dir, exist_ok=True)
        name = "epoch_%03d.keras" % (epoch + 1)
        tmp = os.path.join(self.ckpt_dir, "tmp_" + name)
        self.model.save(tmp)
        os.replace(tmp, os.path.join(self.ckpt_dir, name))
        _atomic_write_json(os.path.join(self.ckpt_dir, LATEST),
                           {"epoch": epoch + 1, "file": name, "time": time.time()})
        saved = sorted(f for f in os.listdir(self.ckpt_dir)
                       if f.startswith("epoch_") and f.endswith(".keras"))
        for old in saved[:-self.keep]:
            os.remove(os.path.join(self.ckpt_dir, old))


class CrashAfterEpoch(keras.callbacks.Callback):
    """Testing aid: ends the process abruptly after an epoch, like a kill -9 would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = int(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            print("Simulated crash after epoch %d (--crash_after_epoch)." % self.epoch,
                  flush=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(CRASH_EXIT_CODE)


class ScalarSummaries(keras.callbacks.Callback):
    """Per-epoch TensorBoard scalars without the ``tensorboard`` package.

    ``keras.callbacks.TensorBoard`` needs the tensorboard pip package (tf.summary.scalar
    lives there); this writes the same event files (``logs/train``, ``logs/validation``,
    tags ``epoch_<metric>``, scalars plugin) with TensorFlow's own ``tf.summary.write``.
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self._writers = {}
        self._metadata = tf.compat.v1.SummaryMetadata(
            plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))

    def _writer(self, split):
        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(
                os.path.join(self.log_dir, split))
        return self._writers[split]

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self._writer(split).as_default():
                tf.summary.write("epoch_" + name, tf.constant(float(value)), step=epoch,
                                 metadata=self._metadata)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def tensorboard_callback(log_dir):
    """keras.callbacks.TensorBoard when tensorboard is installed, else ScalarSummaries."""
    try:
        import tensorboard  # noqa: F401, PLC0415 (optional dependency)
    except ImportError:
        return ScalarSummaries(log_dir)
    return keras.callbacks.TensorBoard(log_dir, write_graph=False)


def _read_history(path):
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    history = []
    for row in rows:
        entry = {}
        for k, v in row.items():
            try:
                entry[k] = int(v) if k == "epoch" else float(v)
            except (TypeError, ValueError):
                entry[k] = v
        history.append(entry)
    return history


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def _validate(config):
    if config.model not in models.NAMES or config.model in ("small", "alexnet", "resnet18"):
        raise ConfigError("unknown --model %r; choose one of: %s" % (
            config.model, ", ".join(n for n in models.NAMES if "_" in n)))
    if config.dataset not in datasets.DATASETS:
        raise ConfigError("unknown --dataset %r; choose one of: %s"
                         % (config.dataset, ", ".join(datasets.DATASETS)))
    if config.dtype_policy not in DTYPE_POLICIES:
        raise ConfigError("unknown --dtype_policy %r; choose one of: %s"
                         % (config.dtype_policy, ", ".join(DTYPE_POLICIES)))
    if config.strategy not in STRATEGIES:
        raise ConfigError("unknown --strategy %r; choose one of: %s"
                         % (config.strategy, ", ".join(STRATEGIES)))
    for field, choices in (("kernel_scale", models.KERNEL_SCALES),
                           ("block_order", models.BLOCK_ORDERS),
                           ("implementation", IMPLEMENTATIONS)):
        if getattr(config, field) not in choices:
            raise ConfigError("unknown --%s %r; choose one of: %s"
                             % (field, getattr(config, field), ", ".join(choices)))
    if config.recipe is not None and config.recipe not in recipes.RECIPES:
        raise ConfigError("unknown --recipe %r; choose one of: %s"
                         % (config.recipe, ", ".join(sorted(recipes.RECIPES))))
    for field in ("epochs", "batch_size", "steps_per_epoch", "max_train_examples",
                  "max_test_examples", "crash_after_epoch", "width"):
        value = getattr(config, field)
        if value is not None and not (_is_int(value) and value > 0):
            raise ConfigError("--%s must be a positive integer, got %r" % (field, value))
    if config.width != 1 and "small" not in config.model:
        raise ConfigError("--width applies to the *_small models only, not to %s"
                         % config.model)
    if config.learning_rate is not None and not (
            isinstance(config.learning_rate, numbers.Real)
            and math.isfinite(config.learning_rate) and config.learning_rate > 0):
        raise ConfigError("--learning_rate must be a positive number, got %r"
                         % (config.learning_rate,))
    if not (_is_int(config.seed) and 0 <= config.seed < 2 ** 32):
        raise ConfigError("--seed must be an integer in [0, 2**32 - 1], got %r" % (config.seed,))
    if config.verbose not in VERBOSITY:
        raise ConfigError("--verbose must be 0, 1, 2 or 'auto', got %r" % (config.verbose,))
    if not config.output_dir:
        raise ConfigError("--output_dir is required")
    if "small" in config.model and config.dataset != "fashion_mnist":
        raise ConfigError("the small nets take 28x28 inputs; use --dataset=fashion_mnist")
    if "small" not in config.model and config.dataset == "fashion_mnist":
        raise ConfigError("%s is an ImageNet network (224x224); use --dataset=imagenet2012 or "
                         "a *_small model for Fashion-MNIST" % config.model)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _model_kwargs(config, info, recipe, num_replicas=1):
    kwargs = dict(num_classes=info["num_classes"], input_shape=info["input_shape"],
                  kernel_scale=config.kernel_scale, block_order=config.block_order,
                  weight_decay=recipe.weight_decay,
                  synchronized_batchnorm=num_replicas > 1)
    if config.model.startswith("xnor"):
        kwargs["use_k"] = config.use_k
    elif not config.use_k:
        raise ConfigError("--nouse_k applies to xnor models only")
    if "small" in config.model:
        kwargs["width"] = config.width
    if config.implementation != "auto":
        kwargs["implementation"] = config.implementation
    return kwargs


def _prepare_output_dir(config, write_dir, is_chief):
    try:
        os.makedirs(write_dir, exist_ok=True)
        # Fail now, not after an epoch of training, when nothing can be written there.
        probe = os.path.join(write_dir, ".write_test_%d" % os.getpid())
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ConfigError("cannot write to --output_dir=%s: %s" % (
            config.output_dir, e.strerror or e)) from e
    if not is_chief or config.resume:
        return
    stale = [p for p in (CHECKPOINT_DIR, SETTINGS, "metrics.json", "history.csv", "model.keras",
                         "logs")
             if os.path.exists(os.path.join(config.output_dir, p))]
    if not stale:
        return
    if not config.overwrite:
        raise ConfigError(
            "%s already holds a run (%s). Pass --resume to continue it, --overwrite to "
            "start over, or choose another --output_dir." % (config.output_dir, ", ".join(stale)))
    for p in stale:
        path = os.path.join(config.output_dir, p)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def epoch_steps(train_examples, batch_size, drop_remainder):
    """Optimizer steps in one pass over ``train_examples`` cut into batches.

    Args:
        train_examples: size of the training set.
        batch_size: global batch size.
        drop_remainder: the pipeline yields full batches only (else the last one may be
            partial and still counts as a step).

    Raises:
        ConfigError: the epoch would have no step (a batch larger than the training set
            when only full batches are made).
    """
    steps = (train_examples // batch_size if drop_remainder
             else math.ceil(train_examples / batch_size))
    if steps == 0:
        raise ConfigError(
            "--batch_size=%d is larger than the %d training examples, and the training set is "
            "cut into full batches only: an epoch would have no step. Use a smaller "
            "--batch_size or more training examples." % (batch_size, train_examples))
    return steps


# Labels of the recorded settings that are not TrainConfig fields or differ from the flag.
_SETTING_LABELS = {"steps_per_epoch": "steps per epoch (--steps_per_epoch, or the data size "
                                      "and --batch_size)",
                   "train_examples": "training examples in the data (--max_train_examples, "
                                     "--data_dir)"}


def _run_settings(config, recipe, epochs, batch_size, steps_per_epoch=None, info=None):
    """What a run trains with: the settings that must stay the same on --resume.

    The recipe's defaults are resolved (``--epochs`` left out and ``--epochs`` equal to the
    recipe's are the same run). Without ``info`` (before the data is loaded) the settings
    that depend on the data are left out.
    """
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                if f.name not in RESUME_FREE_FIELDS}
    settings.update(recipe=recipe.name, epochs=epochs, batch_size=batch_size,
                    learning_rate=float(config.learning_rate or recipe.learning_rate))
    settings.pop("steps_per_epoch")
    if info is not None:
        settings.update(steps_per_epoch=steps_per_epoch,
                        train_examples=info.get("train_examples"))
    return settings


def _check_resume_settings(output_dir, settings, warn=True):
    """Raises ConfigError if ``settings`` differ from those the run in output_dir started with.

    Only the keys of ``settings`` are compared (so it can run before the data is loaded).
    A run written before settings were recorded cannot be checked: a warning (``warn``)
    says so.
    """
    path = os.path.join(output_dir, SETTINGS)
    try:
        with open(path) as f:
            recorded = json.load(f)
    except FileNotFoundError:
        if not warn:
            return
        print("Warning: %s is missing (a run from an older keras-xnor): cannot check that "
              "--resume uses the settings the run started with." % path, flush=True)
        return
    except ValueError as e:
        raise ConfigError("%s is damaged (%s); cannot check the settings of the run to "
                         "resume. Use a new --output_dir." % (path, e)) from e
    differences = []
    for key, value in settings.items():
        # JSON has no tuples; compare what a JSON round trip gives.
        old = recorded.get(key)
        if json.loads(json.dumps(value, default=str)) != old:
            label = _SETTING_LABELS.get(key, "--" + key)
            differences.append("%s: %s -> %s" % (label, json.dumps(old), json.dumps(value)))
    if differences:
        raise ConfigError(
            "--resume: the run in %s was started with other settings, and its checkpoint "
            "continues that run, not a new one (%s). To train with the new settings, use a new "
            "--output_dir (or --overwrite to discard the old run); to continue the old run, "
            "pass its settings (see %s)." % (output_dir, "; ".join(differences), path))


@contextlib.contextmanager
def _global_dtype_policy(name):
    """Sets Keras' global dtype policy for the block, then restores the previous one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def train(config=None, distribute_strategy=None, **overrides):
    """Runs one training job and returns its metrics (also written to metrics.json).

    Args:
        config: a :class:`TrainConfig` (default: TrainConfig()).
        distribute_strategy: an existing tf.distribute strategy (default: made from
            config.strategy).
        **overrides: TrainConfig fields to replace.

    Returns:
        dict with at least ``test_accuracy``, ``test_loss``, ``epochs_completed`` and
        ``history`` (one dict per epoch).

    Raises:
        ConfigError: bad or inconsistent settings, an output_dir that cannot be written,
            or ``resume`` with settings other than the run's.
        datasets.DataNotFoundError, datasets.CorruptDataError,
        datasets.DataPreparationError: see :mod:`keras_xnor.training.datasets`.
    """
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    _validate(config)
    strategy = distribute_strategy or make_strategy(config.strategy)
    is_chief, task_id, num_workers = _worker_role(strategy)
    write_dir = config.output_dir if is_chief else os.path.join(config.output_dir,
                                                                "worker_%d" % task_id)
    _prepare_output_dir(config, write_dir, is_chief)
    keras.utils.set_random_seed(config.seed)

    recipe = recipes.get(config.recipe) if config.recipe else recipes.default_for(config.model)
    batch_size = int(config.batch_size or recipe.batch_size)
    epochs = int(config.epochs or recipe.epochs)
    ckpt_path, done_epochs = (latest_checkpoint(config.output_dir) if config.resume
                              else (None, 0))
    if ckpt_path:  # refuse before the data is loaded (ImageNet takes a while)
        _check_resume_settings(config.output_dir,
                               _run_settings(config, recipe, epochs, batch_size), warn=False)
    # Multi-worker: every worker must run the same number of steps (collectives), so the
    # training set repeats and epochs are counted in full global batches.
    repeat_train = bool(config.steps_per_epoch) or num_workers > 1
    data_kwargs = dict(max_train_examples=config.max_train_examples,
                       max_test_examples=config.max_test_examples, repeat_train=repeat_train)
    if config.dataset == "fashion_mnist":
        data_kwargs.update(data_dir=config.data_dir, download=config.download,
                           shuffle_seed=config.seed, augment=config.augment)
    else:
        data_kwargs.update(data_dir=config.data_dir, manual_dir=config.manual_dir,
                           recipe="alexnet" if "alexnet" in config.model else "resnet18")
    train_ds, test_ds, info = datasets.get_datasets(config.dataset, batch_size, **data_kwargs)

    if config.steps_per_epoch:
        steps_per_epoch = int(config.steps_per_epoch)
    elif info.get("train_examples"):
        steps_per_epoch = epoch_steps(info["train_examples"], batch_size,
                                      info.get("drop_remainder", repeat_train))
    else:
        raise ConfigError("the size of the training split is unknown; pass --steps_per_epoch")
    settings = _run_settings(config, recipe, epochs, batch_size, steps_per_epoch, info)
    if ckpt_path:
        _check_resume_settings(config.output_dir, settings)
    elif is_chief:  # a fresh start (also --resume without a checkpoint)
        _atomic_write_json(os.path.join(config.output_dir, SETTINGS), settings)
    test_steps = None
    if num_workers > 1 and info.get("test_examples"):
        # Equal, full test batches on every worker (a partial last batch could differ).
        test_steps = max(1, info["test_examples"] // batch_size)
        test_ds = test_ds.repeat()

    with strategy.scope():
        if ckpt_path:
            print("Resuming from %s (%d of %d epochs done)." % (ckpt_path, done_epochs, epochs),
                  flush=True)
            # Keras rebuilds a loaded model's optimizer under the global policy: under
            # float32, a mixed_float16 run's LossScaleOptimizer would come back as a plain
            # optimizer whose saved variables Keras skips (iterations and moments at 0).
            with _global_dtype_policy(config.dtype_policy):
                model = keras.models.load_model(ckpt_path)
        else:
            if config.resume:
                print("--resume: no checkpoint in %s, starting from scratch."
                      % config.output_dir, flush=True)
            # The layers (and the model) take the global policy when they are made.
            with _global_dtype_policy(config.dtype_policy):
                model = models.get(config.model, **_model_kwargs(
                    config, info, recipe, strategy.num_replicas_in_sync))
            metrics = ["accuracy"]
            if info["num_classes"] > 10:
                metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5"))
            model.compile(
                optimizer=recipe.build_optimizer(steps_per_epoch, epochs, config.learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(),
                metrics=metrics, jit_compile=bool(config.jit_compile))

    callbacks = [
        EpochCheckpoint(config.output_dir, write=is_chief),
        keras.callbacks.CSVLogger(os.path.join(write_dir, "history.csv"), append=True),
        tensorboard_callback(os.path.join(write_dir, "logs")),
    ]
    if config.crash_after_epoch:
        callbacks.append(CrashAfterEpoch(config.crash_after_epoch))

    print("Training %s on %s: recipe %s (%s); %d epochs of %d steps, batch %d, strategy %s "
          "(%d replica(s), %d worker(s))." % (
              config.model, config.dataset, recipe.name, recipe.description, epochs,
              steps_per_epoch, batch_size, config.strategy, strategy.num_replicas_in_sync,
              num_workers), flush=True)
    start = time.time()
    if done_epochs < epochs:
        model.fit(train_ds, epochs=epochs, initial_epoch=done_epochs,
                  steps_per_epoch=steps_per_epoch if repeat_train else None,
                  validation_data=test_ds if config.validate else None,
                  validation_steps=test_steps if config.validate else None,
                  callbacks=callbacks, verbose=config.verbose,
                  shuffle=False)  # the tf.data pipeline shuffles
    train_seconds = time.time() - start

    results = model.evaluate(test_ds, steps=test_steps, return_dict=True,
                             verbose=0 if config.verbose == 0 else 2)
    model_path = os.path.join(write_dir, "model.keras")
    model.save(model_path)
    history = _read_history(os.path.join(write_dir, "history.csv"))
    metrics = {
        "model": config.model,
        "dataset": config.dataset,
        "recipe": recipe.name,
        "recipe_description": recipe.description,
        "test_accuracy": float(results["accuracy"]),
        "test_loss": float(results["loss"]),
        "epochs": epochs,
        "epochs_completed": len({row.get("epoch") for row in history}) if history else epochs,
        "optimizer_iterations": int(model.optimizer.iterations.numpy()),
        "steps_per_epoch": steps_per_epoch,
        "batch_size": batch_size,
        "train_examples": info.get("train_examples"),
        "test_examples": info.get("test_examples"),
        "params": int(model.count_params()),
        "train_seconds_this_run": round(train_seconds, 2),
        "resumed_from_epoch": done_epochs if ckpt_path else None,
        "num_workers": num_workers,
        "num_replicas": int(strategy.num_replicas_in_sync),
        "model_path": model_path,
        "history": history,
        "config": dataclasses.asdict(config),
    }
    if "top5" in results:
        metrics["test_top5_accuracy"] = float(results["top5"])
    _atomic_write_json(os.path.join(write_dir, "metrics.json"), metrics)
    print("test_accuracy=%.4f test_loss=%.4f; wrote %s" % (
        metrics["test_accuracy"], metrics["test_loss"],
        os.path.join(write_dir, "metrics.json")), flush=True)
    return metrics
