"""keras_xnor.training.datasets: IDX reader, Fashion-MNIST discovery and pipelines."""

import gzip
import os

import numpy as np
import pytest

from keras_xnor.training import datasets

STEMS = datasets.FASHION_MNIST_FILES


def _write_fake_fashion_mnist(folder, n_train=64, n_test=32, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    for key, array in arrays.items():
        datasets.write_idx(os.path.join(folder, STEMS[key] + (".gz" if gz else "")), array)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("array", [
    np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5),
    np.array([-3, 0, 7], dtype=np.int8),
    np.arange(6, dtype=np.int32).reshape(3, 2) - 2,
    np.linspace(-1, 1, 4, dtype=np.float32),
    np.zeros((0, 28, 28), dtype=np.uint8),
])
def test_idx_round_trip(tmp_path, gz, array):
    path = str(tmp_path / ("a.idx" + (".gz" if gz else "")))
    datasets.write_idx(path, array)
    back = datasets.read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_the_mnist_format(tmp_path):
    path = str(tmp_path / "labels.idx")
    datasets.write_idx(path, np.array([1, 2, 3], dtype=np.uint8))
    raw = open(path, "rb").read()
    assert raw == bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])  # magic 0x00000801, n=3


def _raw(path, payload, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(payload)
    return path


@pytest.mark.parametrize("payload, message", [
    (b"\x00\x00", "too short"),
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad IDX magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "bad IDX magic"),  # unknown type code
    (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "file holds 2 data bytes"),  # truncated
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "file holds 2 data bytes"),  # trailing junk
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
])
def test_corrupt_idx_files_raise(tmp_path, payload, message):
    path = _raw(str(tmp_path / "bad.idx"), payload)
    with pytest.raises(datasets.CorruptDataError, match=message):
        datasets.read_idx(path)


def test_corrupt_gzip_and_wrong_rank(tmp_path):
    good = str(tmp_path / "good.gz")
    datasets.write_idx(good, np.zeros((4, 28, 28), np.uint8))
    data = open(good, "rb").read()
    broken = _raw(str(tmp_path / "broken.gz"), data[: len(data) // 2])
    with pytest.raises(datasets.CorruptDataError, match="damaged"):
        datasets.read_idx(broken)
    with pytest.raises(datasets.CorruptDataError, match="3 dimensions, expected 1"):
        datasets.read_idx(good, expected_ndim=1)


@pytest.mark.parametrize("gz", [True, False])
def test_load_from_data_dir(tmp_path, gz):
    arrays = _write_fake_fashion_mnist(str(tmp_path), gz=gz)
    (x, y), (xt, yt) = datasets.load_fashion_mnist(data_dir=str(tmp_path))
    np.testing.assert_array_equal(x, arrays["train_images"])
    np.testing.assert_array_equal(yt, arrays["test_labels"])
    assert x.dtype == np.uint8 and xt.shape == (32, 28, 28)


def test_data_dir_missing_files_says_what_is_missing(tmp_path):
    _write_fake_fashion_mnist(str(tmp_path))
    os.remove(str(tmp_path / (STEMS["test_labels"] + ".gz")))
    with pytest.raises(datasets.DataNotFoundError, match="t10k-labels-idx1-ubyte"):
        datasets.load_fashion_mnist(data_dir=str(tmp_path))


def test_inconsistent_files_are_rejected(tmp_path):
    _write_fake_fashion_mnist(str(tmp_path))
    datasets.write_idx(str(tmp_path / (STEMS["train_labels"] + ".gz")),
                       np.zeros(63, np.uint8))
    with pytest.raises(datasets.CorruptDataError, match="64 images but .* 63 labels"):
        datasets.load_fashion_mnist(data_dir=str(tmp_path))
    datasets.write_idx(str(tmp_path / (STEMS["train_labels"] + ".gz")),
                       np.full(64, 12, np.uint8))
    with pytest.raises(datasets.CorruptDataError, match="out of range"):
        datasets.load_fashion_mnist(data_dir=str(tmp_path))
    datasets.write_idx(str(tmp_path / (STEMS["train_images"] + ".gz")),
                       np.zeros((64, 32, 32), np.uint8))
    with pytest.raises(datasets.CorruptDataError, match="28x28"):
        datasets.load_fashion_mnist(data_dir=str(tmp_path))


def test_nothing_installed_gives_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "_debian_dirs", lambda: [str(tmp_path / "nowhere")])
    with pytest.raises(datasets.DataNotFoundError) as err:
        datasets.load_fashion_mnist(tfds_data_dir=str(tmp_path / "tfds"))
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data_dir" in message


def test_failed_download_shows_the_real_error(tmp_path, monkeypatch):
    # --download was given: a tfds failure is not "the data is missing, use --download".
    import tensorflow_datasets as tfds  # noqa: PLC0415

    monkeypatch.setattr(datasets, "_debian_dirs", lambda: [str(tmp_path / "nowhere")])
    cause = ModuleNotFoundError("No module named 'importlib_resources'")

    def fail(self, *args, **kwargs):
        raise cause

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    with pytest.raises(datasets.DataPreparationError) as err:
        datasets.load_fashion_mnist(download=True, tfds_data_dir=str(tmp_path / "tfds"))
    assert err.value.__cause__ is cause
    assert "fashion_mnist" in str(err.value)
    assert "ModuleNotFoundError: No module named 'importlib_resources'" in str(err.value)


def test_debian_package_is_found():
    # The Debian package is part of the environment (make data installs it).
    paths = datasets.find_fashion_mnist()
    assert paths is not None
    assert all(os.path.dirname(p) == datasets.DEBIAN_DIR for p in paths.values())
    labels = datasets.read_idx(paths["test_labels"], expected_ndim=1)
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))


def test_pipeline_shapes_normalization_and_limits(tmp_path):
    arrays = _write_fake_fashion_mnist(str(tmp_path), n_train=100, n_test=30)
    train, test, info = datasets.fashion_mnist_datasets(
        16, data_dir=str(tmp_path), max_train_examples=40, max_test_examples=20)
    assert info == {"num_classes": 10, "input_shape": (28, 28, 1), "train_examples": 40,
                    "test_examples": 20, "drop_remainder": False}
    train_batches = list(train)
    assert [int(x.shape[0]) for x, _ in train_batches] == [16, 16, 8]
    x, y = train_batches[0]
    assert x.shape[1:] == (28, 28, 1) and x.dtype.name == "float32" and y.dtype.name == "int32"
    test_x = np.concatenate([x.numpy() for x, _ in test])
    expected = (arrays["test_images"][:20] / 255.0 - datasets.FASHION_MNIST_MEAN) \
        / datasets.FASHION_MNIST_STD
    np.testing.assert_allclose(test_x[..., 0], expected, rtol=1e-5, atol=1e-5)
    # Every training example appears once per epoch (shuffled).
    labels = np.concatenate([y.numpy() for _, y in train_batches])
    assert sorted(labels.tolist()) == sorted(arrays["train_labels"][:40].tolist())


def test_repeating_pipeline_drops_partial_batches(tmp_path):
    _write_fake_fashion_mnist(str(tmp_path), n_train=40)
    train, _, info = datasets.fashion_mnist_datasets(16, data_dir=str(tmp_path),
                                                     repeat_train=True, augment=True)
    shapes = [int(x.shape[0]) for x, _ in train.take(5)]
    assert shapes == [16] * 5
    assert info["drop_remainder"]


def test_get_datasets_unknown_name():
    with pytest.raises(ValueError, match="fashion_mnist"):
        datasets.get_datasets("cifar10", 32)
