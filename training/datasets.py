"""Datasets for training and evaluating keras-xnor models: Fashion-MNIST and ImageNet.

Fashion-MNIST comes, in this order of preference, from

1. a directory given by the caller (``data_dir``, the CLI's ``--data_dir``) holding the four
   IDX files (gzipped or not),
2. the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, found
   through ``dpkg -L`` when dpkg is there),
3. TensorFlow Datasets ``fashion_mnist``, when already prepared in the tfds data dir, or
   downloaded when the caller allows it (``download=True``).

Nothing is downloaded unless asked; missing data raises :class:`DataNotFoundError` with the
commands that fix it. Data that is there (or may be downloaded) but that tfds fails to prepare
raises :class:`DataPreparationError`, chained to tfds's own exception.

ImageNet is tfds ``imagenet2012``, prepared from the manually downloaded ILSVRC2012 tars
(``manual_dir``), with the preprocessing of the paper's two training setups (see
:func:`imagenet_preprocess`).

All pipelines are ``tf.data`` with ``num_parallel_calls=AUTOTUNE`` maps and a prefetch.
"""

import gzip
import os
import shutil
import struct
import subprocess

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
# Per-pixel statistics of the Fashion-MNIST training set (on [0, 1] pixels).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # on [0, 1] RGB
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_NUM_CLASSES = 1000
# The ILSVRC2012 tars tfds imagenet2012 is prepared from (both splits are used).
IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")

# IDX type codes (third magic byte) -> numpy dtype (big-endian on disk).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
               0x0E: ">f8"}


class DataNotFoundError(FileNotFoundError):
    """The dataset is not on this machine; the message says how to get it."""


class CorruptDataError(ValueError):
    """A dataset file exists but is not what its name claims (bad magic, sizes, ...)."""


class DataPreparationError(RuntimeError):
    """tfds failed to download or prepare a dataset whose sources are there.

    Not a missing-data problem: the message names the dataset and holds the original error,
    which is also chained (``__cause__``), e.g. a missing Python module or a network error.
    """


def _preparation_error(name, source, error):
    """DataPreparationError for ``error`` raised by tfds while preparing ``name``."""
    first_line = str(error).splitlines()[0] if str(error) else ""
    return DataPreparationError(
        "tfds failed to prepare %s from %s: %s%s" % (
            name, source, type(error).__name__, ": " + first_line if first_line else ""))


# --------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------


def _open_maybe_gzip(path):
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == b"\x1f\x8b" else open(path, "rb")


def read_idx(path, expected_ndim=None):
    """Reads an IDX file (the MNIST format), gzipped or not, into a numpy array.

    Format: a 4-byte magic ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32
    dimensions, then the data in C order.

    Args:
        path: the file.
        expected_ndim: if given, the number of dimensions the file must have
            (3 for images, 1 for labels).

    Returns:
        A numpy array of the file's shape (native byte order).

    Raises:
        CorruptDataError: bad magic, unexpected rank, truncated or oversized data, or a
            damaged gzip stream.
    """
    try:
        with _open_maybe_gzip(path) as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise CorruptDataError("%s: cannot read (%s); the file is damaged, reinstall it "
                               "(apt-get install --reinstall %s)" % (path, e, DEBIAN_PACKAGE))
    if len(raw) < 4:
        raise CorruptDataError("%s: %d bytes, too short for an IDX header" % (path, len(raw)))
    zero1, zero2, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise CorruptDataError(
            "%s: bad IDX magic %s (expected 00 00 <type in %s> <ndim>); not an IDX file"
            % (path, raw[:4].hex(" "), sorted(hex(t) for t in _IDX_DTYPES)))
    if expected_ndim is not None and ndim != expected_ndim:
        raise CorruptDataError("%s: IDX file has %d dimensions, expected %d"
                               % (path, ndim, expected_ndim))
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDataError("%s: truncated IDX header" % path)
    dims = struct.unpack(">%dI" % ndim, raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise CorruptDataError(
            "%s: IDX header says shape %s (%d data bytes) but the file holds %d data bytes"
            % (path, dims, expected, len(raw) - header))
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=False)


def write_idx(path, array):
    """Writes ``array`` as an IDX file (gzipped when ``path`` ends in .gz). For tests/tools."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("=").name: k for k, v in _IDX_DTYPES.items()}
    if array.dtype.name not in codes:
        raise ValueError("IDX cannot hold dtype %s" % array.dtype)
    payload = bytes([0, 0, codes[array.dtype.name], array.ndim])
    payload += struct.pack(">%dI" % array.ndim, *array.shape)
    payload += np.ascontiguousarray(array.astype(array.dtype.newbyteorder(">"))).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


# --------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------


def _debian_dirs():
    """Directories where the Debian package put the IDX files (dpkg -L, then the default)."""
    dirs = []
    if shutil.which("dpkg"):
        try:
            out = subprocess.run(["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True,
                                 text=True, timeout=30, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            if line.strip().endswith(FASHION_MNIST_FILES["train_images"] + ".gz"):
                dirs.append(os.path.dirname(line.strip()))
    if DEBIAN_DIR not in dirs:
        dirs.append(DEBIAN_DIR)
    return dirs


def _find_idx(directory, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def find_fashion_mnist(data_dir=None):
    """Returns {key: path} of the four Fashion-MNIST IDX files, or None if not found.

    Args:
        data_dir: a directory to use instead of the Debian one. When given, it must hold
            the files (there is no silent fallback to another location).

    Raises:
        DataNotFoundError: ``data_dir`` was given but lacks some of the files.
    """
    candidates = [data_dir] if data_dir else _debian_dirs()
    for directory in candidates:
        paths = {k: _find_idx(directory, stem) for k, stem in FASHION_MNIST_FILES.items()}
        if all(paths.values()):
            return paths
        if data_dir:
            missing = [FASHION_MNIST_FILES[k] + "[.gz]" for k, p in paths.items() if not p]
            raise DataNotFoundError(
                "--data_dir=%s does not hold the Fashion-MNIST IDX files (missing: %s). "
                "Point --data_dir at a folder with the four files, or drop --data_dir to use "
                "the Debian package (apt-get install %s)."
                % (data_dir, ", ".join(missing), DEBIAN_PACKAGE))
    return None


def _missing_fashion_mnist_message():
    return (
        "Fashion-MNIST not found. Get it with one of:\n"
        "  apt-get install %s          (installs the IDX files to %s)\n"
        "  --data_dir=DIR                            (a folder with train-images-idx3-ubyte.gz,"
        " train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)\n"
        "  --download                                (tfds 'fashion_mnist', needs network)"
        % (DEBIAN_PACKAGE, DEBIAN_DIR))


def _load_fashion_mnist_tfds(download, tfds_data_dir=None):
    """Fashion-MNIST from tfds: prepared already, or downloaded when ``download``.

    Raises:
        DataNotFoundError: not prepared and ``download`` is off.
        DataPreparationError: the download or the preparation failed.
    """
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415 (optional path)
    except ImportError as e:
        if not download:
            raise DataNotFoundError(_missing_fashion_mnist_message()
                                    + "\n(tensorflow_datasets is not importable: %s)" % e) from e
        raise _preparation_error("fashion_mnist", "the network (--download)", e) from e

    builder = tfds.builder("fashion_mnist", data_dir=tfds_data_dir)
    if not builder.is_prepared():
        if not download:
            raise DataNotFoundError(_missing_fashion_mnist_message())
        try:
            builder.download_and_prepare()
        except Exception as e:  # noqa: BLE001 (reported with the cause chained)
            raise _preparation_error("fashion_mnist", "the network (--download)", e) from e
    splits = {}
    for split in ("train", "test"):
        ds = builder.as_dataset(split=split, as_supervised=True, batch_size=-1)
        x, y = tfds.as_numpy(ds)
        splits[split] = (x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.uint8))
    return splits["train"], splits["test"]


def load_fashion_mnist(data_dir=None, download=False, tfds_data_dir=None):
    """Loads Fashion-MNIST as uint8 numpy arrays.

    Args:
        data_dir: optional folder with the four IDX files (see module docstring).
        download: allow tfds to download ``fashion_mnist`` when the files are not here.
        tfds_data_dir: the tfds data dir for the tfds fallback (default: tfds's).

    Returns:
        ``((x_train [60000, 28, 28] uint8, y_train [60000] uint8), (x_test, y_test))``.

    Raises:
        DataNotFoundError: the data is not here (the message says how to get it).
        CorruptDataError: a file is damaged or the images/labels disagree.
        DataPreparationError: ``download`` was allowed but tfds failed to download or
            prepare the data (the tfds error is chained).
    """
    paths = find_fashion_mnist(data_dir)
    if paths is None:
        return _load_fashion_mnist_tfds(download, tfds_data_dir)
    arrays = {}
    for key, path in paths.items():
        arrays[key] = read_idx(path, expected_ndim=3 if key.endswith("images") else 1)
    for split in ("train", "test"):
        images, labels = arrays[split + "_images"], arrays[split + "_labels"]
        if images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise CorruptDataError("%s: expected uint8 images of 28x28, got %s %s"
                                   % (paths[split + "_images"], images.dtype, images.shape))
        if labels.shape[0] != images.shape[0]:
            raise CorruptDataError("%s has %d images but %s has %d labels"
                                   % (paths[split + "_images"], images.shape[0],
                                      paths[split + "_labels"], labels.shape[0]))
        if labels.size and labels.max() >= 10:
            raise CorruptDataError("%s: label %d out of range 0..9"
                                   % (paths[split + "_labels"], labels.max()))
    return ((arrays["train_images"], arrays["train_labels"]),
            (arrays["test_images"], arrays["test_labels"]))


def fashion_mnist_normalize(images):
    """uint8 [..., 28, 28] -> float32 [..., 28, 28, 1] standardized with the train stats."""
    x = tf.cast(images, tf.float32) / 255.0
    x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return x[..., tf.newaxis]


def fashion_mnist_datasets(batch_size, data_dir=None, download=False, max_train_examples=None,
                           max_test_examples=None, shuffle_seed=0, repeat_train=False,
                           augment=False):
    """tf.data pipelines for Fashion-MNIST.

    Args:
        batch_size: global batch size.
        data_dir, download: see :func:`load_fashion_mnist`.
        max_train_examples, max_test_examples: keep only the first N examples (quick runs).
        shuffle_seed: seed of the per-epoch reshuffle of the training set.
        repeat_train: repeat the training set forever (for ``steps_per_epoch`` runs).
        augment: random horizontal flips of training images (fine for clothes).

    Returns:
        ``(train_ds, test_ds, info)`` with batches of (float32 [B, 28, 28, 1], int32 [B]) and
        ``info = {"num_classes", "input_shape", "train_examples", "test_examples",
        "drop_remainder"}``; ``drop_remainder``: the training set is cut into full batches
        only (when it repeats), else its last batch may be partial.
    """
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(data_dir, download)
    if max_train_examples:
        x_train, y_train = x_train[:max_train_examples], y_train[:max_train_examples]
    if max_test_examples:
        x_test, y_test = x_test[:max_test_examples], y_test[:max_test_examples]

    def prep(images, labels):
        return fashion_mnist_normalize(images), tf.cast(labels, tf.int32)

    def flip(images, labels):
        mask = tf.random.uniform([tf.shape(images)[0], 1, 1, 1]) < 0.5
        return tf.where(mask, tf.reverse(images, axis=[2]), images), labels

    train = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    train = train.shuffle(len(x_train), seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat_train:
        train = train.repeat()
    # Batch first, then map: one vectorized map call per batch is much cheaper than one per
    # 784-byte image.
    train = train.batch(batch_size, drop_remainder=repeat_train)
    train = train.map(prep, num_parallel_calls=AUTOTUNE)
    if augment:
        train = train.map(flip, num_parallel_calls=AUTOTUNE)
    train = _shard_by_data(train).prefetch(AUTOTUNE)
    test = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(batch_size)
    test = _shard_by_data(test.map(prep, num_parallel_calls=AUTOTUNE)).prefetch(AUTOTUNE)
    info = {"num_classes": 10, "input_shape": (28, 28, 1), "train_examples": len(x_train),
            "test_examples": len(x_test), "drop_remainder": repeat_train}
    return train, test, info


def _shard_by_data(ds):
    # In-memory datasets have no files to shard; under MultiWorkerMirroredStrategy each
    # worker takes every n-th batch instead of failing over from the FILE policy.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


# --------------------------------------------------------------------------------------
# ImageNet
# --------------------------------------------------------------------------------------


def _resize_shorter_side(image, size):
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.cast(size, tf.float32) / tf.minimum(h, w)
    new_h = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), size)
    new_w = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), size)
    return tf.image.resize(image, [new_h, new_w], method="bilinear", antialias=True)


def _center_crop(image, size):
    shape = tf.shape(image)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    return image[top:top + size, left:left + size, :]


def _normalize_imagenet(image):
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def imagenet_preprocess(image, training, recipe="resnet18", image_size=224, seed=None):
    """The paper's ImageNet preprocessing of one uint8 RGB image of any size.

    * ``recipe="resnet18"`` (He et al. 2016, used by the paper for ResNet-18): training
      resizes the shorter side to a random length in [256, 480], takes a random 224x224
      crop and flips it horizontally with probability 1/2.
    * ``recipe="alexnet"`` (the paper's AlexNet setup): training resizes the shorter side
      to 256, random 224 crop and flip.
    * Evaluation (both): shorter side to 256, 224x224 center crop.

    Pixels are then scaled to [0, 1] and standardized with the ImageNet mean/std.

    Returns:
        float32 [image_size, image_size, 3].
    """
    if recipe not in ("resnet18", "alexnet"):
        raise ValueError("recipe must be 'resnet18' or 'alexnet', got %r" % (recipe,))
    resize = int(round(image_size * 256 / 224))
    if training:
        if recipe == "resnet18":
            shorter = tf.random.uniform([], resize, int(round(image_size * 480 / 224)) + 1,
                                        dtype=tf.int32, seed=seed)
        else:
            shorter = tf.constant(resize)
        image = _resize_shorter_side(image, shorter)
        image = tf.image.random_crop(image, [image_size, image_size, 3], seed=seed)
        image = tf.image.random_flip_left_right(image, seed=seed)
    else:
        image = _resize_shorter_side(image, resize)
        image = _center_crop(image, image_size)
    image = tf.clip_by_value(image, 0.0, 255.0)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return _normalize_imagenet(image)


def imagenet_datasets(batch_size, data_dir=None, manual_dir=None, recipe="resnet18",
                      image_size=224, max_train_examples=None, max_test_examples=None,
                      shuffle_buffer=10000, repeat_train=False):
    """tf.data pipelines for tfds ``imagenet2012`` with the paper's preprocessing.

    The ILSVRC2012 tars cannot be downloaded automatically: put ``ILSVRC2012_img_train.tar``
    and ``ILSVRC2012_img_val.tar`` into ``manual_dir``; the first call prepares the tfds
    records in ``data_dir`` (once; takes hours).

    Args:
        batch_size: global batch size.
        data_dir: tfds data directory (default: tfds's, ~/tensorflow_datasets).
        manual_dir: the folder with the downloaded tars
            (``tfds.download.DownloadConfig(manual_dir=...)``).
        recipe: "resnet18" or "alexnet" preprocessing (see :func:`imagenet_preprocess`).
        image_size: crop size (224 in the paper).
        max_train_examples, max_test_examples: take only the first N (quick runs).
        shuffle_buffer: training shuffle buffer (examples).
        repeat_train: repeat the training set forever.

    Returns:
        ``(train_ds, test_ds, info)``; the test split is ImageNet's validation set. The
        training batches are full batches only (``info["drop_remainder"]`` is True).

    Raises:
        DataNotFoundError: imagenet2012 is not prepared in ``data_dir`` and ``manual_dir``
            (default: tfds's ``<data_dir>/downloads/manual``) lacks the tars.
        DataPreparationError: the tars are there but tfds failed to prepare them (the tfds
            error is chained).
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415 (ImageNet only)

    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    if not builder.is_prepared():
        root = os.fspath(builder.data_dir_root)
        manual = manual_dir or os.path.join(root, "downloads", "manual")  # tfds's default
        missing = [tar for tar in IMAGENET_TARS
                   if not tf.io.gfile.exists(os.path.join(manual, tar))]
        if missing:
            raise DataNotFoundError(
                "imagenet2012 is not prepared in %s, and the manual dir %s lacks %s. Download "
                "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org into "
                "a folder and pass it as --manual_dir (tfds then prepares the dataset once)."
                % (root, manual, " and ".join(missing)))
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=manual))
        except Exception as e:  # noqa: BLE001 (reported with the cause chained)
            raise _preparation_error("imagenet2012", manual, e) from e
    train_split = "train" if not max_train_examples else "train[:%d]" % max_train_examples
    test_split = "validation" if not max_test_examples else "validation[:%d]" % max_test_examples
    read_config = tfds.ReadConfig(shuffle_seed=0)
    train = builder.as_dataset(split=train_split, as_supervised=True, shuffle_files=True,
                               read_config=read_config)
    test = builder.as_dataset(split=test_split, as_supervised=True)

    def prep_train(image, label):
        return imagenet_preprocess(image, True, recipe, image_size), tf.cast(label, tf.int32)

    def prep_test(image, label):
        return imagenet_preprocess(image, False, recipe, image_size), tf.cast(label, tf.int32)

    train = train.shuffle(shuffle_buffer)
    if repeat_train:
        train = train.repeat()
    train = train.map(prep_train, num_parallel_calls=AUTOTUNE)
    train = train.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)
    test = test.map(prep_test, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)
    info = {"num_classes": IMAGENET_NUM_CLASSES, "input_shape": (image_size, image_size, 3),
            "train_examples": None, "test_examples": None, "drop_remainder": True}
    try:
        info["train_examples"] = builder.info.splits[train_split].num_examples
        info["test_examples"] = builder.info.splits[test_split].num_examples
    except Exception:  # noqa: BLE001 (split sizes are informational only)
        pass
    return train, test, info


DATASETS = ("fashion_mnist", "imagenet2012")


def get_datasets(name, batch_size, **kwargs):
    """Dispatches to :func:`fashion_mnist_datasets` or :func:`imagenet_datasets`."""
    if name == "fashion_mnist":
        return fashion_mnist_datasets(batch_size, **kwargs)
    if name == "imagenet2012":
        return imagenet_datasets(batch_size, **kwargs)
    raise ValueError("unknown dataset %r; known: %s" % (name, ", ".join(DATASETS)))
