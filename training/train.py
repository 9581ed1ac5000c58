r"""Trains a keras-xnor model: ``python -m keras_xnor.training.train --model=... ``.

Examples::

    # The small XNOR net on Fashion-MNIST (Debian package dataset-fashion-mnist):
    python -m keras_xnor.training.train --model=xnor_small --dataset=fashion_mnist \
        --epochs=10 --output_dir=out/xnor_small

    # The paper's XNOR ResNet-18 on ImageNet, on every GPU/CPU replica of this machine:
    python -m keras_xnor.training.train --model=xnor_resnet18 --dataset=imagenet2012 \
        --manual_dir=/data/ilsvrc2012 --strategy=mirrored --output_dir=out/xnor_resnet18

    # Killed? Start it again with --resume: it continues after the last finished epoch.

    # Two machines (run on each, with its own task index in TF_CONFIG):
    TF_CONFIG='{"cluster": {"worker": ["hostA:2222", "hostB:2222"]},
                "task": {"type": "worker", "index": 0}}' \
    python -m keras_xnor.training.train --strategy=multi_worker ...

Writes OUTPUT_DIR/metrics.json (test_accuracy, test_loss, history), OUTPUT_DIR/model.keras,
TensorBoard logs in OUTPUT_DIR/logs and per-epoch checkpoints in OUTPUT_DIR/checkpoints.
Recipes (``--recipe``): see keras_xnor.training.recipes; default: the model's paper recipe.
``--resume`` continues a run with the settings it started with (OUTPUT_DIR/settings.json);
other settings are refused: train them into a new --output_dir.

Bad flags or settings, an output folder that cannot be written and missing data end in an
``error: ...`` message on stderr and exit status 2 (as argparse does), not a traceback.
"""

import sys

from absl import app, flags

from keras_xnor.training import recipes

FLAGS = flags.FLAGS

_MODELS = ["xnor_small", "bwn_small", "float_small", "xnor_alexnet", "bwn_alexnet",
           "float_alexnet", "xnor_resnet18", "bwn_resnet18", "float_resnet18"]


def define_flags():
    """Defines the CLI flags (idempotent, so tests can call run() twice)."""
    if "model" in FLAGS:
        return
    flags.DEFINE_enum("model", "xnor_small", _MODELS, "Network to train (keras_xnor.models).")
    flags.DEFINE_enum("dataset", "fashion_mnist", ["fashion_mnist", "imagenet2012"],
                      "Dataset.")
    flags.DEFINE_string("output_dir", None, "Folder for metrics, model, logs, checkpoints.")
    flags.DEFINE_enum("recipe", None, sorted(recipes.RECIPES),
                      "Training recipe (default: the model's, e.g. resnet18 for *_resnet18).")
    flags.DEFINE_integer("epochs", None, "Epochs (default: the recipe's).")
    flags.DEFINE_integer("batch_size", None, "Global batch size (default: the recipe's).")
    flags.DEFINE_float("learning_rate", None, "Initial learning rate (default: the recipe's).")
    flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                      "tf.distribute strategy; multi_worker reads the cluster from TF_CONFIG.")
    flags.DEFINE_bool("resume", False, "Continue from the newest checkpoint in --output_dir.")
    flags.DEFINE_bool("overwrite", False, "Delete an earlier run in --output_dir first.")
    flags.DEFINE_string("data_dir", None, "Fashion-MNIST: folder with the IDX files "
                        "(default: the Debian package's). ImageNet: the tfds data dir.")
    flags.DEFINE_string("manual_dir", None, "ImageNet: folder with the ILSVRC2012 tars.")
    flags.DEFINE_bool("download", False, "Let tfds download Fashion-MNIST if not installed.")
    flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (quick runs).")
    flags.DEFINE_integer("max_train_examples", None, "Use only the first N training examples.")
    flags.DEFINE_integer("max_test_examples", None, "Use only the first N test examples.")
    flags.DEFINE_enum("kernel_scale", "mean_abs", ["mean_abs", "learned", "none"],
                      "alpha of the binary layers: eq. 6, trained, or none.")
    flags.DEFINE_enum("block_order", "BACP", ["BACP", "CBAP"], "Block order (Fig. 3 of the paper).")
    flags.DEFINE_bool("use_k", True, "XNOR: scale by K (eq. 11).")
    flags.DEFINE_integer("width", 1, "Channel multiplier of the small nets.")
    flags.DEFINE_enum("implementation", "auto", ["auto", "simulation", "compiled"],
                      "XNOR layers: compiled op on CPU when available, or pure-TF simulation.")
    flags.DEFINE_bool("augment", False, "Random horizontal flips (Fashion-MNIST).")
    flags.DEFINE_bool("validate", True, "Evaluate on the test split after every epoch.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step.")
    flags.DEFINE_enum("dtype_policy", "float32", ["float32", "mixed_float16", "mixed_bfloat16"],
                      "Keras dtype policy of the model's layers (mixed precision).")
    flags.DEFINE_integer("verbose", 1, "0 = silent, 1 = progress bar, 2 = a line per epoch.")
    flags.DEFINE_integer("crash_after_epoch", None,
                         "Testing aid: exit abruptly after this epoch's checkpoint.")


def _config_from_flags():
    from keras_xnor.training.trainer import TrainConfig  # noqa: PLC0415 (imports TF)

    fields = TrainConfig.__dataclass_fields__
    return TrainConfig(**{name: FLAGS[name].value for name in fields if name in FLAGS})


def _error(message):
    print("error: %s" % message, file=sys.stderr)
    return 2


def _parse_flags(argv):
    """absl's flag parsing, with argparse's error convention (one line, exit status 2)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(_error(" ".join(str(e).split())))


def main(argv):
    if len(argv) > 1:
        return _error("unexpected arguments: %s" % " ".join(argv[1:]))
    if not FLAGS.output_dir:
        return _error("--output_dir is required")
    from keras_xnor.training import datasets, trainer  # noqa: PLC0415

    config = _config_from_flags()
    try:
        # Made before anything else touches TensorFlow: MultiWorkerMirroredStrategy must be
        # the first thing to initialize the runtime.
        strategy = trainer.make_strategy(config.strategy)
        trainer.train(config, distribute_strategy=strategy)
    except (datasets.DataNotFoundError, datasets.CorruptDataError, trainer.ConfigError) as e:
        return _error(e)
    return 0


def run(argv=None):
    """Console entry point (``keras-xnor-train``)."""
    define_flags()
    app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
