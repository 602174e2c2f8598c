"""`keras_vae.datasets.ArrayBatches`, the pipelines of `datasets.load` on
JAX and PyTorch (a `keras.utils.PyDataset`), on the active backend.

`make test` runs this directory under KERAS_BACKEND=tensorflow, jax and
torch. Oracles: the arrays themselves (every example once per epoch, labels
beside their images), and Bernoulli frequencies for the binarization.
"""

import keras
import numpy as np

from keras_vae import datasets
from helpers import tiny_vae


def grey(n=10, size=6, seed=0):
    return np.random.default_rng(seed).random((n, size)).astype("float32")


def epoch(batches):
    out = [batches[i] for i in range(len(batches))]
    batches.on_epoch_end()
    return out


def test_every_example_once_per_epoch_in_a_new_order():
    x = np.arange(10, dtype="float32")[:, None]
    labels = np.arange(10)
    batches = datasets.ArrayBatches((x, labels), 4, shuffle_seed=3)
    assert len(batches) == 3
    orders = []
    for _ in range(2):
        got = epoch(batches)
        assert [len(b[0]) for b in got] == [4, 4, 2]
        images = np.concatenate([b[0] for b in got])[:, 0]
        order = np.concatenate([b[1] for b in got])
        np.testing.assert_array_equal(images, order)  # labels kept beside
        assert sorted(order) == list(range(10))
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])
    # The same seeds give the same run.
    again = datasets.ArrayBatches((x, labels), 4, shuffle_seed=3)
    np.testing.assert_array_equal(
        np.concatenate([b[1] for b in epoch(again)]), orders[0])


def test_unshuffled_batches_keep_the_order_and_the_grey_levels():
    x = grey()
    got = np.concatenate(epoch(datasets.ArrayBatches(x, 3)))
    np.testing.assert_array_equal(got, x)


def test_dynamic_binarization_draws_bernoulli_grey_levels_each_epoch():
    x = grey(n=4, size=50)
    batches = datasets.ArrayBatches(x, 4, binarize_seed=7)
    draws = np.stack([epoch(batches)[0] for _ in range(400)])
    assert set(np.unique(draws)) == {0.0, 1.0}
    assert not np.array_equal(draws[0], draws[1])
    # Each pixel's frequency of ones is its grey level (400 draws: a
    # standard error of at most 0.025; 5 of them).
    np.testing.assert_allclose(draws.mean(axis=0), x, atol=0.125)


class Recorded(datasets.ArrayBatches):
    """Records the epoch number of every batch it gives."""

    def __getitem__(self, index):
        self.seen = getattr(self, "seen", []) + [self.epoch]
        return super().__getitem__(index)


def test_fit_takes_array_batches_and_draws_anew_each_epoch():
    vae = tiny_vae.build()
    vae.compile(keras.optimizers.Adam(1e-3))
    batches = Recorded(tiny_vae.data(), 8, shuffle_seed=0, binarize_seed=0)
    history = vae.fit(batches, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    # fit's two epochs of 4 batches each came from two epochs' draws.
    trained = batches.seen[-8:]
    assert trained[:4] == [trained[0]] * 4
    assert trained[4:] == [trained[0] + 1] * 4
