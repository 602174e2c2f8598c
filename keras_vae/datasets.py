"""Image datasets as pipelines with train, validation and test splits.

`load(name, ...)` is the one entry point. Every split yields batches of images
shaped `[batch, *image_shape]` (float32 in [0, 1]); the model needs no labels.
With `labels=True` they yield `(images, labels)` instead, for a
class-conditional model (`keras_vae.ConditionalVAE`).

The pipelines are `tf.data.Dataset`s on the TensorFlow backend and
`ArrayBatches` (a `keras.utils.PyDataset` of NumPy batches) on JAX and
PyTorch, which need no TensorFlow. `fit`, `evaluate` and `log_likelihood`
take either.

Binarization follows Burda et al. (2015): with `binarize="dynamic"` each
training pixel is resampled as Bernoulli(grey level) every epoch, while the
validation and test images are binarized once with a fixed seed, so that
evaluations of different models see the same binary test set.
"""

import dataclasses
import math

import keras
import numpy as np

from keras_vae import data_files
from keras_vae.data_files import BINARIZATIONS  # noqa: F401 - re-exported
from keras_vae.data_files import CLASS_NAMES  # noqa: F401 - re-exported
from keras_vae.data_files import IDX_FILES  # noqa: F401 - re-exported
from keras_vae.data_files import NAMES  # noqa: F401 - re-exported
from keras_vae.data_files import read_idx  # noqa: F401 - re-exported
from keras_vae.data_files import search_dirs  # noqa: F401 - re-exported

# Seed of the one-off binarization of the validation and test images.
_EVAL_BINARIZATION_SEED = 12345


@dataclasses.dataclass
class Splits:
    """The splits of one dataset, as pipelines and as arrays.

    Attributes:
        name: the dataset's name.
        train: the shuffled training batches, binarized afresh every epoch
            when `binarize="dynamic"`: a `tf.data.Dataset` on TensorFlow, an
            `ArrayBatches` on the other backends.
        validation: the validation batches, or `None` when
            `validation_fraction` was 0.
        test: the test batches.
        arrays: the images as NumPy float32 arrays in [0, 1], keys `"train"`
            (grey levels, before any dynamic binarization), `"validation"`,
            `"test"` (as the pipelines yield them), and the integer labels
            `"train_labels"`, `"validation_labels"`, `"test_labels"`.
        image_shape: shape of one image, e.g. `(28, 28, 1)`.
        train_mean: per-pixel mean of the training images, the target of a
            Bernoulli decoder's initial output bias.
        binarize: the binarization in use.
        source: where the data came from (a path, or a description).
        class_names: the names of the labels, in label order, when the
            dataset has them (Fashion-MNIST's garments, digits' "0"-"9").
    """

    name: str
    train: object
    validation: object
    test: object
    arrays: dict
    image_shape: tuple
    train_mean: np.ndarray
    binarize: str
    source: str
    class_names: tuple = ()


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
    limit=None,
    labels=False,
):
    """Loads a dataset as pipelines with train/validation/test splits:
    `tf.data` on TensorFlow, `ArrayBatches` on JAX and PyTorch.

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
        limit: keep only the first `limit` training examples (after the
            validation split is held out), or `None` for all.
        labels: if True, every split yields `(images, labels)` batches, the
            labels int32 `[batch]` (binarization applies to the images
            only); the dataset must have labels.

    Returns:
        A `Splits`.

    Example:

    >>> data = keras_vae.datasets.load("digits", batch_size=64)
    >>> tuple(next(iter(data.train)).shape)
    (64, 8, 8, 1)
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

    raw, source = data_files.read_raw(name, data_dir, path, download)
    max_value = data_files.MAX_VALUES.get(name)

    x_train, y_train = raw["x_train"], raw["y_train"]
    if "x_validation" in raw:
        x_val, y_val = raw["x_validation"], raw["y_validation"]
    else:
        x_train, y_train, x_val, y_val = _hold_out(
            x_train, y_train, validation_fraction, seed
        )
    x_test, y_test = raw["x_test"], raw["y_test"]
    if limit is not None:
        if not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        x_train, y_train = x_train[:limit], y_train[:limit]

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

    if labels:
        _check_labels(name, y_train, y_val, y_test)
    pair = _with_labels if labels else lambda x, y: x  # noqa: E731

    dynamic = binarize == "dynamic"
    if keras.backend.backend() == "tensorflow":
        train = _tf_train_batches(
            pair(x_train, y_train), batch_size, seed, dynamic
        )
        batches = _batches
    else:
        train = ArrayBatches(
            pair(x_train, y_train), batch_size, shuffle_seed=seed,
            binarize_seed=seed if dynamic else None,
        )
        batches = ArrayBatches
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
        train=train,
        validation=(
            None if x_val is None
            else batches(pair(x_val, y_val), batch_size)
        ),
        test=batches(pair(x_test, y_test), batch_size),
        arrays=arrays,
        image_shape=tuple(x_train.shape[1:]),
        train_mean=train_mean,
        binarize=binarize,
        source=source,
        class_names=data_files.CLASS_NAMES.get(name, ()),
    )


def dynamic_binarization(dataset, seed):
    """Maps a dataset of grey-level batches to Bernoulli draws, new each epoch.

    Every batch gets its own stateless seed from a `tf.data.Dataset.random`
    stream that is rerandomized on each iteration, so each epoch sees new
    binary images while the whole run stays reproducible from `seed`.
    Batches of `(images, labels)` keep their labels as they are.
    (TensorFlow; `ArrayBatches` does the same on any backend.)
    """
    import tensorflow as tf

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def binary(images, batch_seed):
        uniform = tf.random.stateless_uniform(
            tf.shape(images), seed=[batch_seed, seed], dtype=images.dtype
        )
        return tf.cast(uniform < images, images.dtype)

    def draw(batch, batch_seed):
        if isinstance(batch, tuple):
            return (binary(batch[0], batch_seed), *batch[1:])
        return binary(batch, batch_seed)

    return tf.data.Dataset.zip(dataset, seeds).map(
        draw, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def _hold_out(x, y, fraction, seed):
    """Splits off a random `fraction` of (x, y) as the validation set."""
    n_val = int(round(fraction * len(x)))
    if n_val == 0:
        return x, y, None, None
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[train], y[train], x[val], y[val]


def _with_labels(x, y):
    return x, y.astype(np.int32)


def _check_labels(name, *splits):
    """Raises unless every example of every split has a label."""
    for y in splits:
        if y is not None and len(y) and np.min(y) < 0:
            raise ValueError(
                f"labels=True needs labelled data, but the {name!r} data "
                "has examples without labels (npz: give y_train and y_test)"
            )


def _as_images(x):
    """Adds a channel axis to [N, H, W] arrays; flat vectors stay as they are."""
    return x[..., None] if x.ndim == 3 else x


def _binarize_once(x, stream):
    rng = np.random.default_rng([_EVAL_BINARIZATION_SEED, stream])
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)


def _tf_train_batches(x, batch_size, seed, dynamic):
    import tensorflow as tf

    train = tf.data.Dataset.from_tensor_slices(x)
    train = train.shuffle(len(x[0] if isinstance(x, tuple) else x), seed=seed,
                          reshuffle_each_iteration=True)
    train = train.batch(batch_size)
    if dynamic:
        train = dynamic_binarization(train, seed)
    return train.prefetch(tf.data.AUTOTUNE)


def _batches(x, batch_size):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


class ArrayBatches(keras.utils.PyDataset):
    """Batches of NumPy arrays, shuffled and binarized afresh every epoch.

    The pipelines of `load` on JAX and PyTorch: Keras's own data adapters
    feed them to `fit`, `evaluate` and `predict`, and TensorFlow is not
    needed. An epoch's order and binary pixels depend only on the seeds and
    the epoch's number (counted by `on_epoch_end`, which `fit` calls), so a
    run is reproducible from its seed.

    Args:
        arrays: the images `[N, ...]`, or `(images, labels)` with the same
            `N`; batches are then `(images, labels)` tuples.
        batch_size: examples per batch, a positive int; the last batch
            holds the rest.
        shuffle_seed: `None` keeps the order; an int shuffles the examples
            anew every epoch.
        binarize_seed: `None` keeps the grey levels; an int resamples every
            image pixel as Bernoulli(grey level) every epoch (Burda et al.
            2015's dynamic binarization). Labels are kept as they are.

    Example:

    >>> batches = ArrayBatches(x_train, 100, shuffle_seed=0, binarize_seed=0)
    >>> vae.fit(batches, epochs=10)
    """

    def __init__(self, arrays, batch_size, shuffle_seed=None,
                 binarize_seed=None):
        super().__init__()
        self.arrays = tuple(arrays) if isinstance(arrays, tuple) else (arrays,)
        self.batch_size = int(batch_size)
        self.shuffle_seed = shuffle_seed
        self.binarize_seed = binarize_seed
        self.epoch = 0
        self._order_epoch = None
        self._epoch_order = None

    def __len__(self):
        return math.ceil(len(self.arrays[0]) / self.batch_size)

    def _order(self):
        """This epoch's order of the examples (made once per epoch)."""
        if self._order_epoch != self.epoch:
            n = len(self.arrays[0])
            if self.shuffle_seed is None:
                self._epoch_order = np.arange(n)
            else:
                rng = np.random.default_rng([self.shuffle_seed, self.epoch])
                self._epoch_order = rng.permutation(n)
            self._order_epoch = self.epoch
        return self._epoch_order

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        rows = self._order()[index * self.batch_size:][: self.batch_size]
        batch = [a[rows] for a in self.arrays]
        if self.binarize_seed is not None:
            rng = np.random.default_rng([self.binarize_seed, self.epoch, index])
            uniform = rng.random(batch[0].shape, dtype=np.float32)
            batch[0] = (uniform < batch[0]).astype(batch[0].dtype)
        return batch[0] if len(batch) == 1 else tuple(batch)

    def on_epoch_end(self):
        self.epoch += 1
