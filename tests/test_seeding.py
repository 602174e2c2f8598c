"""Seed forms, counts and seed state, the same everywhere."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vae
from helpers import tiny_vae
from keras_vae import seeding


@pytest.mark.parametrize(
    "seed, want",
    [
        (None, None),
        (42, 42),
        (np.int64(42), 42),
        (np.int32(-3), -3),
        ([1, 2], (1, 2)),
        ((1, 2), (1, 2)),
        (np.array([1, 2], np.int64), (1, 2)),
        (np.array([1, 2], np.uint32), (1, 2)),
    ],
)
def test_normalize_seed_accepts_every_form(seed, want):
    got = seeding.normalize_seed(seed)
    assert got == want
    assert type(got) is type(want)


@pytest.mark.parametrize(
    "seed", [1.5, True, "1", [1, 2, 3], [[1, 2]], [1.0, 2.0], 2**70]
)
def test_normalize_seed_rejects_other_values(seed):
    with pytest.raises(ValueError, match="seed"):
        seeding.normalize_seed(seed)


def _posterior():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 4)).astype("float32")
    return mean, np.zeros_like(mean)


@pytest.mark.parametrize("implementation", ["fused", "reference"])
@pytest.mark.parametrize("seed", [42, np.int64(42), (42, 0), np.array([42, 0])])
def test_op_takes_every_seed_form(seed, implementation):
    if implementation == "fused" and not keras_vae.ops.fused_available():
        pytest.skip("the fused op library is not loaded")
    mean, log_var = _posterior()
    z, _, _ = keras_vae.ops.reparameterize_kl(
        mean, log_var, 2, seed=seed, implementation=implementation
    )
    # An int s stands for [s, 0], as in keras.random.
    eps = tf.random.stateless_normal([2, 3, 4], seed=[42, 0])
    np.testing.assert_allclose(z.numpy(), mean + eps.numpy(), atol=1e-5)


def test_sampling_layer_and_model_take_a_pair_and_numpy_ints():
    mean, log_var = _posterior()
    layer = keras_vae.layers.Sampling(num_samples=np.int64(2), seed=[5, 6])
    eps = tf.random.stateless_normal([2, 3, 4], seed=[5, 6])
    np.testing.assert_allclose(
        layer([mean, log_var]).numpy(), mean + eps.numpy(), atol=1e-5
    )
    clone = keras_vae.layers.Sampling.from_config(layer.get_config())
    assert clone.seed == [5, 6] and clone.num_samples == 2

    model = tiny_vae.build(seed=0, num_samples=np.int64(2))
    assert model.num_samples == 2 and type(model.num_samples) is int
    pair = keras_vae.VAE(model.encoder, model.decoder, seed=np.array([3, 4]))
    assert pair.seed == [3, 4]
    np.testing.assert_array_equal(pair.seed_generator.state.numpy(), [3, 4])
    head = keras_vae.layers.GaussianEncoderHead(np.int64(3))
    assert head.latent_dim == 3


def test_sample_seeds_agree_across_forms():
    model = tiny_vae.build()
    a = model.sample(4, seed=7).numpy()
    for seed in (np.int64(7), [7, 0], np.array([7, 0])):
        np.testing.assert_array_equal(model.sample(4, seed=seed).numpy(), a)
    np.testing.assert_array_equal(
        model.sample(np.int64(4), seed=7).numpy(), a
    )
    elbo = model.elbo(tiny_vae.data(), num_samples=np.int64(3), seed=1)
    assert elbo.shape == (tiny_vae.NUM_EXAMPLES,)


@pytest.mark.parametrize("n", [2.5, -1, 0, True, "3"])
def test_sample_rejects_bad_counts_by_name(n):
    model = tiny_vae.build()
    with pytest.raises(ValueError, match=r"^n must be an int >= 1"):
        model.sample(n)


def test_seed_state_round_trips_through_the_public_store():
    layer = keras_vae.layers.Sampling(seed=1)
    mean, log_var = _posterior()
    layer([mean, log_var])
    layer([mean, log_var])
    store = {}
    layer.save_own_variables(store)
    assert list(store) == ["seed_generator_state"]
    fresh = keras_vae.layers.Sampling(seed=1)
    fresh.load_own_variables(store)
    np.testing.assert_array_equal(
        fresh.seed_generator.state.numpy(), layer.seed_generator.state.numpy()
    )
    np.testing.assert_array_equal(
        fresh([mean, log_var]).numpy(), layer([mean, log_var]).numpy()
    )
    # A store without the state (an older file) loads the weights alone.
    head = keras_vae.layers.GaussianEncoderHead(2)
    head.build((None, 3))
    weights = {}
    head.save_own_variables(weights)
    model = tiny_vae.build()
    own = {}
    model.save_own_variables(own)
    own.pop("seed_generator_state")
    before = model.seed_generator.state.numpy().copy()
    model.load_own_variables(own)
    np.testing.assert_array_equal(model.seed_generator.state.numpy(), before)


def test_seed_state_is_saved_with_the_model(tmp_path):
    model = tiny_vae.build()
    model = keras_vae.VAE(model.encoder, model.decoder, seed=[9, 9])
    model.sample(2)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(
        loaded.seed_generator.state.numpy(), model.seed_generator.state.numpy()
    )
    np.testing.assert_array_equal(
        loaded.sample(3).numpy(), model.sample(3).numpy()
    )
