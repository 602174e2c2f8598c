"""Image datasets as `tf.data` pipelines with train, validation and test splits.

`load(name, ...)` is the one entry point. Every split yields batches of images
shaped `[batch, *image_shape]` (float32 in [0, 1]); the model needs no labels.

Binarization follows Burda et al. (2015): with `binarize="dynamic"` each
training pixel is resampled as Bernoulli(grey level) every epoch, while the
validation and test images are binarized once with a fixed seed, so that
evaluations of different models see the same binary test set.
"""

import dataclasses
import gzip
import os

import numpy as np
import tensorflow as tf

NAMES = ("digits", "fashion_mnist", "mnist", "npz")
BINARIZATIONS = ("dynamic", "static", "none")

# Where the operating system's packages install the IDX files: Debian's
# `dataset-fashion-mnist` for Fashion-MNIST. Looked up after --data-dir and
# the Keras cache.
SYSTEM_DATA_DIRS = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}
# Subdirectory of `$KERAS_HOME/datasets` that `keras.datasets` downloads into.
_KERAS_CACHE_SUBDIRS = {"fashion_mnist": "fashion-mnist", "mnist": "mnist"}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# The test split of `digits` (which has no official one) is a fixed 20%, the
# same for every seed, so that evaluations are comparable across runs.
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0
# Seed of the one-off binarization of the validation and test images.
_EVAL_BINARIZATION_SEED = 12345


@dataclasses.dataclass
class Splits:
    """The splits of one dataset, as pipelines and as arrays.

    Attributes:
        name: the dataset's name.
        train: `tf.data.Dataset` of shuffled training batches, binarized
            afresh every epoch when `binarize="dynamic"`.
        validation: `tf.data.Dataset` of validation batches, or `None` when
            `validation_fraction` was 0.
        test: `tf.data.Dataset` of test batches.
        arrays: the images as NumPy float32 arrays in [0, 1], keys `"train"`
            (grey levels, before any dynamic binarization), `"validation"`,
            `"test"` (as the pipelines yield them), and the integer labels
            `"train_labels"`, `"validation_labels"`, `"test_labels"`.
        image_shape: shape of one image, e.g. `(28, 28, 1)`.
        train_mean: per-pixel mean of the training images, the target of a
            Bernoulli decoder's initial output bias.
        binarize: the binarization in use.
        source: where the data came from (a path, or a description).
    """

    name: str
    train: tf.data.Dataset
    validation: "tf.data.Dataset | None"
    test: tf.data.Dataset
    arrays: dict
    image_shape: tuple
    train_mean: np.ndarray
    binarize: str
    source: str


def load(
    name="digits",
    *,
    batch_size=100,
    binarize="dynamic",
    scale=True,
    validation_fraction=0.1,
    seed=0,
    data_dir=None,
    path=None,
    download=True,
):
    """Loads a dataset as `tf.data` pipelines with train/validation/test splits.

    Args:
        name: `"digits"` (scikit-learn's bundled 8x8 digits; needs no
            network), `"fashion_mnist"` or `"mnist"` (the standard IDX files)
            or `"npz"` (your own arrays, see `path`).
        batch_size: examples per batch, a positive integer.
        binarize: `"dynamic"` resamples every training pixel as
            Bernoulli(grey level) each epoch and binarizes validation and
            test once with a fixed seed; `"static"` binarizes every split once;
            `"none"` keeps grey levels.
        scale: scale pixel values to [0, 1] (by the format's maximum, 16 for
            digits and 255 for the MNISTs; by the training minimum and maximum
            for npz). Binarization needs values in [0, 1].
        validation_fraction: fraction of the training split held out for
            validation, in [0, 1); 0 gives `validation=None`.
        seed: integer seed of the validation split, shuffling and dynamic
            binarization.
        data_dir: a directory searched first for the IDX files.
        path: the `.npz` file for `name="npz"`: arrays `x_train` and `x_test`
            (and optionally `x_validation`, and `y_*` labels), or a single
            array `x` that is split 80/20 into train and test.
        download: when the MNIST files are found nowhere, let
            `keras.datasets` download them.

    Returns:
        A `Splits`.

    Example:

    >>> data = keras_vae.datasets.load("digits", batch_size=64)
    >>> next(iter(data.train)).shape
    TensorShape([64, 8, 8, 1])
    """
    if name not in NAMES:
        raise ValueError(f"name must be one of {NAMES}, got {name!r}")
    if binarize not in BINARIZATIONS:
        raise ValueError(
            f"binarize must be one of {BINARIZATIONS}, got {binarize!r}"
        )
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer, got {batch_size!r}"
        )
    if not 0 <= validation_fraction < 1:
        raise ValueError(
            "validation_fraction must be in [0, 1), got "
            f"{validation_fraction!r}"
        )
    if name == "npz" and path is None:
        raise ValueError("name='npz' needs path= (the .npz file)")

    if name == "digits":
        raw, max_value, source = _load_digits(), 16.0, "scikit-learn digits"
    elif name == "npz":
        raw, max_value, source = _load_npz(path), None, os.fspath(path)
    else:
        raw, source = _load_mnist_like(name, data_dir, download)
        max_value = 255.0

    x_train, y_train = raw["x_train"], raw["y_train"]
    if "x_validation" in raw:
        x_val, y_val = raw["x_validation"], raw["y_validation"]
    else:
        x_train, y_train, x_val, y_val = _hold_out(
            x_train, y_train, validation_fraction, seed
        )
    x_test, y_test = raw["x_test"], raw["y_test"]

    if scale:
        if max_value is None:
            low = float(np.min(x_train))
            high = float(np.max(x_train))
            rescale = lambda x: np.clip(  # noqa: E731
                (x - low) / max(high - low, 1e-12), 0.0, 1.0
            )
        else:
            rescale = lambda x: x / max_value  # noqa: E731
    else:
        rescale = lambda x: x  # noqa: E731
    x_train, x_val, x_test = (
        None if x is None else _as_images(rescale(x.astype(np.float32)))
        for x in (x_train, x_val, x_test)
    )
    if binarize != "none":
        for split, x in (("train", x_train), ("test", x_test)):
            if x.min() < 0 or x.max() > 1:
                raise ValueError(
                    f"binarize={binarize!r} needs pixel values in [0, 1], but "
                    f"the {split} split spans [{x.min()}, {x.max()}]; "
                    "pass scale=True"
                )

    train_mean = x_train.mean(axis=0)
    if binarize != "none":
        x_val = None if x_val is None else _binarize_once(x_val, 1)
        x_test = _binarize_once(x_test, 2)
    if binarize == "static":
        x_train = _binarize_once(x_train, 0)

    train = tf.data.Dataset.from_tensor_slices(x_train).shuffle(
        len(x_train), seed=seed, reshuffle_each_iteration=True
    )
    train = train.batch(batch_size)
    if binarize == "dynamic":
        train = dynamic_binarization(train, seed)
    arrays = {
        "train": x_train,
        "validation": x_val,
        "test": x_test,
        "train_labels": y_train,
        "validation_labels": y_val,
        "test_labels": y_test,
    }
    return Splits(
        name=name,
        train=train.prefetch(tf.data.AUTOTUNE),
        validation=None if x_val is None else _batches(x_val, batch_size),
        test=_batches(x_test, batch_size),
        arrays=arrays,
        image_shape=tuple(x_train.shape[1:]),
        train_mean=train_mean,
        binarize=binarize,
        source=source,
    )


def dynamic_binarization(dataset, seed):
    """Maps a dataset of grey-level batches to Bernoulli draws, new each epoch.

    Every batch gets its own stateless seed from a `tf.data.Dataset.random`
    stream that is rerandomized on each iteration, so each epoch sees new
    binary images while the whole run stays reproducible from `seed`.
    """
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def draw(images, batch_seed):
        uniform = tf.random.stateless_uniform(
            tf.shape(images), seed=[batch_seed, seed], dtype=images.dtype
        )
        return tf.cast(uniform < images, images.dtype)

    return tf.data.Dataset.zip(dataset, seeds).map(
        draw, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def read_idx(path):
    """Reads an IDX file (optionally gzipped) into a NumPy array.

    The format: two zero bytes, a type code, the number of dimensions, then
    each dimension as a big-endian int32, then the data in C order.
    """
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        content = f.read()
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    type_code, ndim = content[2], content[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type 0x{type_code:02x}")
    header = 4 + 4 * ndim
    shape = tuple(
        int(d) for d in np.frombuffer(content[4:header], dtype=">i4")
    )
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(content) - header != expected:
        raise ValueError(
            f"{path}: header says shape {shape} ({expected} bytes of data) "
            f"but the file holds {len(content) - header}"
        )
    data = np.frombuffer(content[header:], dtype=dtype).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def search_dirs(name, data_dir=None):
    """The directories searched for a dataset's IDX files, in order."""
    dirs = []
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
        dirs += [data_dir, os.path.join(data_dir, _KERAS_CACHE_SUBDIRS[name])]
    keras_home = os.environ.get(
        "KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")
    )
    dirs.append(
        os.path.join(keras_home, "datasets", _KERAS_CACHE_SUBDIRS[name])
    )
    dirs.append(SYSTEM_DATA_DIRS[name])
    return dirs


def _find_idx(directory):
    """Paths of the four IDX files in `directory`, or None if any is missing."""
    found = {}
    for split, basenames in IDX_FILES.items():
        for kind, basename in zip(("images", "labels"), basenames):
            for candidate in (basename, basename + ".gz"):
                full = os.path.join(directory, candidate)
                if os.path.isfile(full):
                    found[(split, kind)] = full
                    break
            else:
                return None
    return found


def _load_mnist_like(name, data_dir, download):
    searched = search_dirs(name, data_dir)
    for directory in searched:
        files = _find_idx(directory)
        if files is not None:
            raw = {
                "x_train": read_idx(files[("train", "images")]),
                "y_train": read_idx(files[("train", "labels")]),
                "x_test": read_idx(files[("test", "images")]),
                "y_test": read_idx(files[("test", "labels")]),
            }
            return raw, directory
    # keras.datasets caches MNIST as one .npz rather than IDX files.
    if name == "mnist":
        cached = os.path.join(os.path.dirname(searched[-2]), "mnist.npz")
        searched.append(cached)
        if os.path.isfile(cached):
            return _load_npz(cached), cached
    if not download:
        reason = "downloading is disabled (download=False)"
    else:
        import keras

        module = getattr(keras.datasets, name)
        try:
            (x_train, y_train), (x_test, y_test) = module.load_data()
        except Exception as error:  # noqa: BLE001 - reported below
            reason = f"downloading with keras.datasets.{name} failed: {error}"
        else:
            raw = {"x_train": x_train, "y_train": y_train}
            raw.update(x_test=x_test, y_test=y_test)
            return raw, f"keras.datasets.{name}"
    names = ", ".join(b + "[.gz]" for pair in IDX_FILES.values() for b in pair)
    looked = "\n".join(f"  {d}" for d in searched)
    hint = ""
    if name == "fashion_mnist":
        hint = (
            "\nOn Debian or Ubuntu, `apt-get install dataset-fashion-mnist` "
            f"installs them into {SYSTEM_DATA_DIRS[name]}."
        )
    raise FileNotFoundError(
        f"Could not find the {name} files ({names}); looked in:\n{looked}\n"
        f"and {reason}. Put the files in one of these directories or pass "
        f"data_dir (--data-dir).{hint}"
    )


def _load_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(x))
    n_test = int(round(_DIGITS_TEST_FRACTION * len(x)))
    test, train = order[:n_test], order[n_test:]
    return {
        "x_train": x[train],
        "y_train": y[train],
        "x_test": x[test],
        "y_test": y[test],
    }


def _load_npz(path):
    with np.load(path, allow_pickle=False) as f:
        arrays = dict(f)
    if "x_train" in arrays and "x_test" in arrays:
        raw = {"x_train": arrays["x_train"], "x_test": arrays["x_test"]}
        if "x_validation" in arrays:
            raw["x_validation"] = arrays["x_validation"]
        splits = [k[2:] for k in raw]
    elif "x" in arrays:
        x = arrays["x"]
        n_test = int(round(0.2 * len(x)))
        raw = {"x_train": x[n_test:], "x_test": x[:n_test]}
        if "y" in arrays:
            arrays["y_train"] = arrays["y"][n_test:]
            arrays["y_test"] = arrays["y"][:n_test]
        splits = ["train", "test"]
    else:
        raise ValueError(
            f"{path} must hold arrays 'x_train' and 'x_test' (optionally "
            f"'x_validation' and 'y_*' labels) or a single array 'x'; it "
            f"holds {sorted(arrays)}"
        )
    for split in splits:
        labels = arrays.get(f"y_{split}")
        if labels is None:
            labels = np.full(len(raw[f"x_{split}"]), -1, dtype=np.int64)
        raw[f"y_{split}"] = labels
    return raw


def _hold_out(x, y, fraction, seed):
    """Splits off a random `fraction` of (x, y) as the validation set."""
    n_val = int(round(fraction * len(x)))
    if n_val == 0:
        return x, y, None, None
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[train], y[train], x[val], y[val]


def _as_images(x):
    """Adds a channel axis to [N, H, W] arrays; flat vectors stay as they are."""
    return x[..., None] if x.ndim == 3 else x


def _binarize_once(x, stream):
    rng = np.random.default_rng([_EVAL_BINARIZATION_SEED, stream])
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)


def _batches(x, batch_size):
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)
