import gzip
import struct

import numpy as np
import pytest

from keras_vae import data_files, datasets


def write_idx(path, array):
    """Writes `array` as an IDX file: the oracle is the format's definition."""
    type_codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    array = np.asarray(array)
    if array.dtype == np.int32:
        array = array.astype(">i4")
    header = struct.pack(">BBBB", 0, 0, type_codes[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}i", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def write_mnist_like(directory, n_train=30, n_test=10, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    images = {
        "train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
    }
    labels = {s: rng.integers(0, 10, len(images[s]), dtype=np.uint8)
              for s in images}
    suffix = ".gz" if gz else ""
    for split, (image_name, label_name) in datasets.IDX_FILES.items():
        write_idx(directory / (image_name + suffix), images[split])
        write_idx(directory / (label_name + suffix), labels[split])
    return images, labels


def _epochs(pipeline, count):
    """The batches of `count` epochs of a pipeline from `load`, as NumPy.

    A `tf.data.Dataset` starts a new epoch with each iteration; an
    `ArrayBatches` (the other backends) when `fit` ends one, through
    `on_epoch_end`.
    """
    epochs = []
    for _ in range(count):
        epochs.append([np.asarray(batch) for batch in pipeline])
        if isinstance(pipeline, datasets.ArrayBatches):
            pipeline.on_epoch_end()
    return epochs


@pytest.fixture
def no_system_data(monkeypatch, tmp_path):
    """Hides the Keras cache and system directories, and any download."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(
        data_files,
        "SYSTEM_DATA_DIRS",
        {name: str(tmp_path / "system" / name)
         for name in data_files.SYSTEM_DATA_DIRS},
    )


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trips_images_and_labels(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    ints = np.array([-5, 7, 1 << 20], dtype=np.int32)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"images{suffix}", images)
    write_idx(tmp_path / f"ints{suffix}", ints)
    np.testing.assert_array_equal(
        datasets.read_idx(tmp_path / f"images{suffix}"), images)
    np.testing.assert_array_equal(
        datasets.read_idx(tmp_path / f"ints{suffix}"), ints)


def test_read_idx_rejects_truncated_file(tmp_path):
    write_idx(tmp_path / "f", np.zeros((4, 5), dtype=np.uint8))
    content = (tmp_path / "f").read_bytes()
    (tmp_path / "f").write_bytes(content[:-3])
    with pytest.raises(ValueError, match="header says shape"):
        datasets.read_idx(tmp_path / "f")
    (tmp_path / "g").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="magic"):
        datasets.read_idx(tmp_path / "g")


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_data_dir(tmp_path, no_system_data, gz):
    images, labels = write_mnist_like(tmp_path / "data", gz=gz)
    data = datasets.load("fashion_mnist", data_dir=tmp_path / "data",
                         binarize="none", validation_fraction=0.2,
                         batch_size=7)
    assert data.image_shape == (28, 28, 1)
    assert data.source == str(tmp_path / "data")
    np.testing.assert_allclose(data.arrays["test"][..., 0],
                               images["test"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.arrays["test_labels"], labels["test"])
    # The held-out validation images plus the train ones are the IDX train
    # split, each image exactly once.
    assert len(data.arrays["validation"]) == 6
    assert len(data.arrays["train"]) == 24
    together = np.concatenate([data.arrays["train"], data.arrays["validation"]])
    np.testing.assert_allclose(
        np.sort(together.reshape(30, -1), axis=0),
        np.sort(images["train"].reshape(30, -1) / 255.0, axis=0), rtol=1e-6)
    (test_batches,) = _epochs(data.test, 1)
    assert [len(b) for b in test_batches] == [7, 3]
    np.testing.assert_allclose(np.concatenate(test_batches),
                               data.arrays["test"])
    np.testing.assert_allclose(data.train_mean,
                               data.arrays["train"].mean(axis=0), rtol=1e-6)


def test_mnist_found_in_keras_cache_and_system_dir(tmp_path, no_system_data):
    images, _ = write_mnist_like(tmp_path / "system" / "mnist", seed=1)
    data = datasets.load("mnist", binarize="none")
    assert data.source == str(tmp_path / "system" / "mnist")
    np.testing.assert_allclose(data.arrays["test"][..., 0],
                               images["test"] / 255.0, rtol=1e-6)
    # The Keras cache comes before the system directory.
    cached, _ = write_mnist_like(
        tmp_path / "keras_home" / "datasets" / "mnist", seed=2)
    data = datasets.load("mnist", binarize="none")
    np.testing.assert_allclose(data.arrays["test"][..., 0],
                               cached["test"] / 255.0, rtol=1e-6)


def test_missing_data_error_lists_every_path(tmp_path, no_system_data,
                                             monkeypatch):
    import keras

    def offline():
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(FileNotFoundError) as info:
        datasets.load("fashion_mnist", data_dir=tmp_path / "mine")
    message = str(info.value)
    searched = datasets.search_dirs("fashion_mnist", tmp_path / "mine")
    assert str(tmp_path / "mine") in searched
    assert str(tmp_path / "keras_home" / "datasets" / "fashion-mnist") in searched
    assert str(tmp_path / "system" / "fashion_mnist") in searched
    for directory in searched:
        assert directory in message
    assert "network unreachable" in message
    assert "train-images-idx3-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message

    with pytest.raises(FileNotFoundError, match="download=False"):
        datasets.load("mnist", download=False)


def test_incomplete_directory_is_skipped(tmp_path, no_system_data):
    write_mnist_like(tmp_path / "data")
    (tmp_path / "data" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        datasets.load("fashion_mnist", data_dir=tmp_path / "data",
                      download=False)


def test_dynamic_binarization_resamples_each_epoch():
    data = datasets.load("digits", binarize="dynamic", batch_size=2000,
                         validation_fraction=0.0, seed=3)
    grey = data.arrays["train"]
    (first,), (second,) = _epochs(data.train, 2)
    assert set(np.unique(first)) == {0.0, 1.0}
    assert first.shape == grey.shape
    assert not np.array_equal(first, second)
    # Shuffling reorders the images but not an epoch's per-pixel mean, which
    # must match the grey levels' (the oracle) within 5 standard errors.
    # Each draw is Bernoulli with mean E[grey], so its variance is p(1 - p).
    p = grey.mean(axis=0)
    stderr = np.sqrt(p * (1 - p) / len(grey))
    for draws in (first, second):
        assert np.all(np.abs(draws.mean(axis=0) - p) <= 5 * stderr + 1e-6)


@pytest.mark.tensorflow_only("dynamic_binarization maps a tf.data pipeline")
def test_dynamic_binarization_draws_bernoulli_of_each_pixel():
    import tensorflow as tf

    grey = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    images = np.tile(grey, (4000, 1))
    pipeline = datasets.dynamic_binarization(
        tf.data.Dataset.from_tensor_slices(images).batch(4000), seed=7)
    epochs = [next(iter(pipeline)).numpy() for _ in range(2)]
    for draws in epochs:
        # Per-pixel means match the grey levels within 5 standard errors.
        stderr = np.sqrt(grey * (1 - grey) / len(images)) + 1e-6
        assert np.all(np.abs(draws.mean(axis=0) - grey) <= 5 * stderr)
        assert np.all(draws[:, 0] == 0) and np.all(draws[:, -1] == 1)
    assert not np.array_equal(epochs[0], epochs[1])
    # Reproducible from the seed.
    again = datasets.dynamic_binarization(
        tf.data.Dataset.from_tensor_slices(images).batch(4000), seed=7)
    np.testing.assert_array_equal(next(iter(again)).numpy(), epochs[0])


@pytest.mark.backend_independent
def test_array_batches_draw_bernoulli_of_each_pixel():
    grey = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    images = np.tile(grey, (4000, 1))
    labels = np.arange(4000)
    pipeline = datasets.ArrayBatches((images, labels), 4000, binarize_seed=7)
    epochs = [pipeline[0]]
    pipeline.on_epoch_end()
    epochs.append(pipeline[0])
    for draws, batch_labels in epochs:
        # Per-pixel means match the grey levels within 5 standard errors.
        stderr = np.sqrt(grey * (1 - grey) / len(images)) + 1e-6
        assert np.all(np.abs(draws.mean(axis=0) - grey) <= 5 * stderr)
        assert np.all(draws[:, 0] == 0) and np.all(draws[:, -1] == 1)
        # Labels are kept as they are.
        np.testing.assert_array_equal(batch_labels, labels)
    assert not np.array_equal(epochs[0][0], epochs[1][0])
    # Reproducible from the seed and the epoch.
    again = datasets.ArrayBatches((images, labels), 4000, binarize_seed=7)
    np.testing.assert_array_equal(again[0][0], epochs[0][0])


def test_evaluation_splits_are_binarized_once():
    data = datasets.load("digits", binarize="dynamic", batch_size=50)
    first, second = (np.concatenate(e) for e in _epochs(data.test, 2))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, data.arrays["test"])
    assert set(np.unique(first)) == {0.0, 1.0}
    # The same for every seed, so that all models see the same test set.
    other = datasets.load("digits", binarize="dynamic", seed=9)
    np.testing.assert_array_equal(other.arrays["test"], first)


def test_digits_splits_and_scaling():
    from sklearn.datasets import load_digits

    data = datasets.load("digits", binarize="none", validation_fraction=0.1)
    sizes = {k: len(data.arrays[k]) for k in ("train", "validation", "test")}
    assert sum(sizes.values()) == len(load_digits().images) == 1797
    assert sizes["test"] == 359 and sizes["validation"] == 144
    assert data.image_shape == (8, 8, 1)
    for split in ("train", "validation", "test"):
        x = data.arrays[split]
        assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert data.arrays["train"].max() == 1.0
    unscaled = datasets.load("digits", binarize="none", scale=False)
    assert unscaled.arrays["train"].max() == 16.0
    with pytest.raises(ValueError, match="needs pixel values in \\[0, 1\\]"):
        datasets.load("digits", binarize="dynamic", scale=False)


def test_npz_with_named_splits(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.uniform(-2, 6, (40, 5)).astype(np.float32)
    x_test = rng.uniform(-3, 7, (10, 5)).astype(np.float32)
    np.savez(tmp_path / "mine.npz", x_train=x_train, x_test=x_test,
             y_test=np.arange(10))
    data = datasets.load("npz", path=tmp_path / "mine.npz", binarize="none",
                         validation_fraction=0.0)
    assert data.image_shape == (5,)
    assert data.validation is None
    low, high = x_train.min(), x_train.max()
    np.testing.assert_allclose(data.arrays["train"],
                               (x_train - low) / (high - low), rtol=1e-5)
    np.testing.assert_allclose(
        data.arrays["test"], np.clip((x_test - low) / (high - low), 0, 1),
        rtol=1e-5)
    np.testing.assert_array_equal(data.arrays["test_labels"], np.arange(10))
    assert np.all(data.arrays["train_labels"] == -1)


def test_npz_single_array_and_bad_keys(tmp_path):
    x = np.random.default_rng(0).uniform(0, 1, (50, 3, 3)).astype(np.float32)
    np.savez(tmp_path / "one.npz", x=x)
    data = datasets.load("npz", path=tmp_path / "one.npz", binarize="static",
                         scale=False, validation_fraction=0.0)
    assert len(data.arrays["train"]) == 40 and len(data.arrays["test"]) == 10
    assert data.image_shape == (3, 3, 1)
    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(ValueError, match="must hold arrays 'x_train'"):
        datasets.load("npz", path=tmp_path / "bad.npz")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "cifar"}, "name must be one of"),
        ({"binarize": "yes"}, "binarize must be one of"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"validation_fraction": 1.0}, "validation_fraction must be in"),
        ({"name": "npz"}, "needs path="),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        datasets.load(**kwargs)
