"""Seed forms, counts and seed state, the same everywhere."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.ops import convert_to_numpy as to_numpy

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
    if implementation == "fused" or keras.backend.backend() == "tensorflow":
        eps = tf.random.stateless_normal([2, 3, 4], seed=[42, 0])
    else:
        eps = _reference_noise([2, 3, 4], [42, 0])
    np.testing.assert_allclose(to_numpy(z), mean + to_numpy(eps), atol=1e-5)


def _reference_noise(shape, seed):
    """The pure reference's noise off TensorFlow: its backend's own
    generator keyed by the seed pair, not the kernels' stream."""
    if keras.backend.backend() == "jax":
        import jax

        key = jax.random.wrap_key_data(np.asarray(seed, np.uint32))
        return jax.random.normal(key, shape, "float32")
    from keras_vae.backend import torch as torch_backend

    return torch_backend.reference_normal(shape, seed, "float32")


def test_sampling_layer_and_model_take_a_pair_and_numpy_ints():
    mean, log_var = _posterior()
    layer = keras_vae.layers.Sampling(num_samples=np.int64(2), seed=[5, 6])
    eps = tf.random.stateless_normal([2, 3, 4], seed=[5, 6])
    np.testing.assert_allclose(
        to_numpy(layer([mean, log_var])), mean + to_numpy(eps), atol=1e-5
    )
    clone = keras_vae.layers.Sampling.from_config(layer.get_config())
    assert clone.seed == [5, 6] and clone.num_samples == 2

    model = tiny_vae.build(seed=0, num_samples=np.int64(2))
    assert model.num_samples == 2 and type(model.num_samples) is int
    pair = keras_vae.VAE(model.encoder, model.decoder, seed=np.array([3, 4]))
    assert pair.seed == [3, 4]
    np.testing.assert_array_equal(to_numpy(pair.seed_generator.state), [3, 4])
    head = keras_vae.layers.GaussianEncoderHead(np.int64(3))
    assert head.latent_dim == 3


def test_sample_seeds_agree_across_forms():
    model = tiny_vae.build()
    a = to_numpy(model.sample(4, seed=7))
    for seed in (np.int64(7), [7, 0], np.array([7, 0])):
        np.testing.assert_array_equal(to_numpy(model.sample(4, seed=seed)), a)
    np.testing.assert_array_equal(
        to_numpy(model.sample(np.int64(4), seed=7)), a
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
        to_numpy(fresh.seed_generator.state),
        to_numpy(layer.seed_generator.state),
    )
    np.testing.assert_array_equal(
        to_numpy(fresh([mean, log_var])), to_numpy(layer([mean, log_var]))
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
    before = to_numpy(model.seed_generator.state).copy()
    model.load_own_variables(own)
    np.testing.assert_array_equal(to_numpy(model.seed_generator.state), before)


def test_seed_state_is_saved_with_the_model(tmp_path):
    model = tiny_vae.build()
    model = keras_vae.VAE(model.encoder, model.decoder, seed=[9, 9])
    model.sample(2)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(
        to_numpy(loaded.seed_generator.state),
        to_numpy(model.seed_generator.state),
    )
    np.testing.assert_array_equal(
        to_numpy(loaded.sample(3)), to_numpy(model.sample(3))
    )
