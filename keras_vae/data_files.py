"""Dataset files: where they are found, and their readers (IDX, npz, digits).

`read_raw(name, ...)` returns the raw arrays of a dataset's official splits;
`keras_vae.datasets` turns them into pipelines. Nothing here needs a
framework, so the command line can list the datasets without one.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

NAMES = ("digits", "fashion_mnist", "mnist", "npz")
BINARIZATIONS = ("dynamic", "static", "none")
# The labels of Fashion-MNIST, in label order.
CLASS_NAMES = {
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "mnist": tuple(str(d) for d in range(10)),
    "digits": tuple(str(d) for d in range(10)),
}
# The value of a white pixel in each format (npz: none, scaled by its range).
MAX_VALUES = {"digits": 16.0, "fashion_mnist": 255.0, "mnist": 255.0}

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


def read_raw(name, data_dir=None, path=None, download=True):
    """The raw arrays of a dataset and where they came from.

    Returns:
        `(raw, source)`: `raw` holds `x_train`, `y_train`, `x_test`,
        `y_test` (and `x_validation`, `y_validation` when an npz has them).
    """
    if name == "digits":
        return _load_digits(), "scikit-learn digits"
    if name == "npz":
        return _load_npz(path), os.fspath(path)
    return _load_mnist_like(name, data_dir, download)


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
        if len(raw[f"x_{split}"]) == 0:
            how = ("" if "x_train" in arrays else
                   f" (its single array 'x', of shape {arrays['x'].shape}, is "
                   "split 80/20 into train and test)")
            raise ValueError(
                f"{path}: the {split} split has no examples{how}; every "
                "split needs at least one"
            )
        labels = arrays.get(f"y_{split}")
        if labels is None:
            labels = np.full(len(raw[f"x_{split}"]), -1, dtype=np.int64)
        raw[f"y_{split}"] = labels
    return raw
