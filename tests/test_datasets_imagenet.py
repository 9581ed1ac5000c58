"""ImageNet pipeline: the paper's preprocessing, tfds imagenet2012 on mock data, and the real
tfds preparation from a tiny fake ILSVRC2012 manual dir (nothing is downloaded)."""

import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_xnor.training import datasets

# Synsets of the fake training tar and their tfds labels (labels.txt is sorted).
FAKE_TRAIN_CLASSES = {"n01440764": 0, "n01443537": 1, "n15075141": 999}
FAKE_TRAIN_PER_CLASS = 2
# tfds labels ILSVRC2012_val_00000001.JPEG, ... with ImageNet's ground truth, in this order.
FAKE_VAL_LABELS = (65, 970, 230, 809, 516)


def _jpeg(rng, h, w, channels=3):
    pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels).numpy()


def _add(tar, name, data):
    member = tarfile.TarInfo(name)
    member.size = len(data)
    tar.addfile(member, io.BytesIO(data))


def write_fake_ilsvrc2012(manual_dir, seed=0):
    """The two ILSVRC2012 tars in miniature: a train tar of per-synset tars, a val tar.

    Small JPEGs of odd sizes (one grayscale per class, as in the real data).
    """
    rng = np.random.default_rng(seed)
    os.makedirs(manual_dir, exist_ok=True)
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as train:
        for synset in FAKE_TRAIN_CLASSES:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as per_class:
                for i in range(FAKE_TRAIN_PER_CLASS):
                    _add(per_class, "%s_%d.JPEG" % (synset, i),
                         _jpeg(rng, 20 + 7 * i, 33 - 5 * i, channels=1 if i == 1 else 3))
            _add(train, synset + ".tar", inner.getvalue())
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as val:
        for i in range(len(FAKE_VAL_LABELS)):
            _add(val, "ILSVRC2012_val_%08d.JPEG" % (i + 1), _jpeg(rng, 25, 18 + i))


@pytest.fixture(scope="module")
def prepared_fake_imagenet(tmp_path_factory):
    """tfds data dir with imagenet2012 prepared by tfds itself from the fake tars."""
    root = tmp_path_factory.mktemp("imagenet")
    manual = str(root / "manual")
    write_fake_ilsvrc2012(manual)
    data_dir = str(root / "tfds")
    datasets.imagenet_datasets(2, data_dir=data_dir, manual_dir=manual, image_size=32)
    return data_dir


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_eval_is_resize_256_then_center_crop_224():
    # A 256x512 image needs no resizing: the center crop is columns 144..367.
    img = _image(256, 512)
    out = datasets.imagenet_preprocess(img, training=False, recipe="alexnet").numpy()
    assert out.shape == (224, 224, 3)
    crop = img.numpy()[16:240, 144:368].astype(np.float32) / 255.0
    expected = (crop - np.array(datasets.IMAGENET_MEAN)) / np.array(datasets.IMAGENET_STD)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    same = datasets.imagenet_preprocess(img, training=False, recipe="resnet18").numpy()
    np.testing.assert_allclose(same, out)


@pytest.mark.parametrize("recipe", ["alexnet", "resnet18"])
@pytest.mark.parametrize("hw", [(47, 17), (300, 200), (600, 900)])
def test_train_crops_any_size_to_224(recipe, hw):
    out = datasets.imagenet_preprocess(_image(*hw), training=True, recipe=recipe)
    assert out.shape == (224, 224, 3) and out.dtype == tf.float32
    assert np.isfinite(out.numpy()).all()


def test_resnet_scale_augmentation_is_random():
    tf.random.set_seed(1)
    img = _image(300, 400)
    outs = [datasets.imagenet_preprocess(img, True, "resnet18").numpy() for _ in range(4)]
    assert any(not np.allclose(outs[0], o) for o in outs[1:])


def test_resize_shorter_side_keeps_aspect_ratio():
    out = datasets._resize_shorter_side(tf.zeros([100, 200, 3]), 256)
    assert tuple(out.shape) == (256, 512, 3)
    out = datasets._resize_shorter_side(tf.zeros([480, 240, 3]), tf.constant(300))
    assert tuple(out.shape) == (600, 300, 3)


def test_bad_recipe():
    with pytest.raises(ValueError, match="recipe"):
        datasets.imagenet_preprocess(_image(8, 8), True, recipe="vgg")


def test_imagenet2012_pipeline_on_tfds_mock_data(tmp_path, monkeypatch):
    # mock_data stands in for prepared data (its as_dataset makes examples up).
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=6):
        train, test, info = datasets.imagenet_datasets(
            4, data_dir=str(tmp_path), manual_dir=str(tmp_path / "manual"),
            recipe="resnet18", shuffle_buffer=8)
        x, y = next(iter(train))
        assert x.shape == (4, 224, 224, 3) and x.dtype == tf.float32
        assert y.dtype == tf.int32 and ((y.numpy() >= 0) & (y.numpy() < 1000)).all()
        test_batches = list(test)
        assert sum(int(b[0].shape[0]) for b in test_batches) == 6  # partial last batch kept
        assert info["num_classes"] == 1000 and info["input_shape"] == (224, 224, 3)
        small, _, info = datasets.imagenet_datasets(2, data_dir=str(tmp_path), recipe="alexnet",
                                                    image_size=64, max_train_examples=4)
        assert next(iter(small))[0].shape == (2, 64, 64, 3)


def test_missing_imagenet_says_how_to_get_it(tmp_path):
    with pytest.raises(datasets.DataNotFoundError, match="--manual_dir"):
        datasets.imagenet_datasets(4, data_dir=str(tmp_path / "tfds"),
                                   manual_dir=str(tmp_path / "empty"))


def test_imagenet2012_is_prepared_by_tfds_from_a_manual_dir(prepared_fake_imagenet):
    # The real tfds preparation ran in the fixture (download_and_prepare with manual_dir):
    # this fails when a module tfds needs for it is missing from the environment.
    builder = tfds.builder("imagenet2012", data_dir=prepared_fake_imagenet)
    assert builder.is_prepared()
    n_train = len(FAKE_TRAIN_CLASSES) * FAKE_TRAIN_PER_CLASS
    assert builder.info.splits["train"].num_examples == n_train
    assert builder.info.splits["validation"].num_examples == len(FAKE_VAL_LABELS)
    val = builder.as_dataset(split="validation", as_supervised=True)
    labels = {}
    for example in builder.as_dataset(split="validation"):
        labels[example["file_name"].numpy().decode()] = int(example["label"])
    assert [labels["ILSVRC2012_val_%08d.JPEG" % (i + 1)]
            for i in range(len(FAKE_VAL_LABELS))] == list(FAKE_VAL_LABELS)
    assert all(image.shape[-1] == 3 for image, _ in val)  # grayscale JPEGs come out as RGB

    train, test, info = datasets.imagenet_datasets(
        2, data_dir=prepared_fake_imagenet, recipe="alexnet", image_size=32, shuffle_buffer=8)
    assert (info["train_examples"], info["test_examples"]) == (n_train, len(FAKE_VAL_LABELS))
    train_labels = []
    for x, y in train:
        assert x.shape == (2, 32, 32, 3) and x.dtype == tf.float32
        train_labels += y.numpy().tolist()
    assert sorted(train_labels) == sorted(
        label for label in FAKE_TRAIN_CLASSES.values() for _ in range(FAKE_TRAIN_PER_CLASS))
    assert sorted(int(v) for _, y in test for v in y.numpy()) == sorted(FAKE_VAL_LABELS)


def test_imagenet_with_a_missing_tar_says_which(tmp_path):
    manual = str(tmp_path / "manual")
    write_fake_ilsvrc2012(manual)
    os.remove(os.path.join(manual, "ILSVRC2012_img_train.tar"))
    with pytest.raises(datasets.DataNotFoundError, match="lacks ILSVRC2012_img_train.tar"):
        datasets.imagenet_datasets(4, data_dir=str(tmp_path / "tfds"), manual_dir=manual)


def test_imagenet_preparation_failure_shows_the_real_error(tmp_path, monkeypatch):
    # The tars are there, so this is not "download the tars": the tfds error must show.
    manual = str(tmp_path / "manual")
    write_fake_ilsvrc2012(manual)
    cause = ModuleNotFoundError("No module named 'importlib_resources'")

    def fail(self, *args, **kwargs):
        raise cause

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    with pytest.raises(datasets.DataPreparationError) as err:
        datasets.imagenet_datasets(4, data_dir=str(tmp_path / "tfds"), manual_dir=manual)
    assert not isinstance(err.value, datasets.DataNotFoundError)
    assert err.value.__cause__ is cause
    message = str(err.value)
    assert "ModuleNotFoundError: No module named 'importlib_resources'" in message
    assert manual in message and "--manual_dir" not in message


def _tiny_imagenet_model(**kwargs):
    """Stands in for the 224x224 networks: the trainer's ImageNet path, without the cost."""
    import keras  # noqa: PLC0415

    inputs = keras.Input(kwargs["input_shape"])
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(kwargs["num_classes"], activation="softmax")(x)
    return keras.Model(inputs, outputs)


def test_trainer_counts_the_full_imagenet_batches(prepared_fake_imagenet, tmp_path,
                                                  monkeypatch):
    from keras_xnor.training import trainer  # noqa: PLC0415

    monkeypatch.setattr(trainer.models, "get", lambda name, **kwargs: _tiny_imagenet_model(
        **kwargs))
    common = dict(model="xnor_alexnet", dataset="imagenet2012",
                  data_dir=prepared_fake_imagenet, epochs=1, validate=False, verbose=0)
    # 6 training images in batches of 4: the pipeline makes 1 full batch, not ceil(6/4) = 2.
    metrics = trainer.train(output_dir=str(tmp_path / "run"), batch_size=4, **common)
    assert metrics["train_examples"] == 6
    assert metrics["steps_per_epoch"] == 1 and metrics["optimizer_iterations"] == 1
    with pytest.raises(trainer.ConfigError, match="--batch_size=7 is larger than the 6 "):
        trainer.train(output_dir=str(tmp_path / "big"), batch_size=7, **common)
