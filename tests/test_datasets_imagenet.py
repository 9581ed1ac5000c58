"""ImageNet pipeline: the paper's preprocessing, and tfds imagenet2012 on mock data."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_xnor.training import datasets


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


def test_imagenet2012_pipeline_on_tfds_mock_data(tmp_path):
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
