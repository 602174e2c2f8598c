import keras
import numpy as np
import pytest
import tensorflow_probability as tfp
from keras.ops import convert_to_numpy as to_numpy
from scipy.special import logsumexp

from helpers.numerics import gradient
from keras_vae import bounds

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _float64():
    """The bounds are checked in float64, which JAX computes only with
    x64 enabled (otherwise it takes float64 input as float32)."""
    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    with jax.enable_x64(True):
        yield


def _log_terms(k=5, batch=3):
    log_px_z = RNG.normal(scale=3.0, size=(k, batch))
    log_ratio = RNG.normal(scale=2.0, size=(k, batch))
    return log_px_z, log_ratio


def test_elbo_is_mean_reconstruction_minus_kl():
    log_px_z, _ = _log_terms()
    kl = RNG.uniform(size=3)
    np.testing.assert_allclose(
        to_numpy(bounds.elbo(log_px_z, kl)), log_px_z.mean(0) - kl, rtol=1e-12
    )


def test_iwae_bound_is_log_mean_exp_of_weights():
    log_px_z, log_ratio = _log_terms()
    log_w = log_px_z - log_ratio
    expected = np.log(np.mean(np.exp(log_w), axis=0))
    iwae = to_numpy(bounds.iwae_bound(log_px_z, log_ratio))
    np.testing.assert_allclose(iwae, expected)
    # Jensen: the IWAE bound is >= the Monte Carlo ELBO on the same samples.
    assert np.all(iwae >= to_numpy(bounds.elbo_mc(log_px_z, log_ratio)))


def test_iwae_bound_with_one_sample_is_the_elbo():
    log_px_z, log_ratio = _log_terms(k=1)
    np.testing.assert_allclose(
        to_numpy(bounds.iwae_bound(log_px_z, log_ratio)),
        to_numpy(bounds.elbo_mc(log_px_z, log_ratio)),
    )


def test_iwae_bound_is_stable_for_large_log_weights():
    log_px_z = np.array([[-1e4], [-1e4 + 1.0]])
    value = to_numpy(bounds.iwae_bound(log_px_z, np.zeros_like(log_px_z)))
    np.testing.assert_allclose(value, logsumexp(log_px_z, axis=0) - np.log(2))


def test_chunks_combine_to_the_whole():
    log_px_z, log_ratio = _log_terms(k=12)
    log_w = log_px_z - log_ratio
    chunks = np.stack([logsumexp(c, axis=0) for c in np.split(log_w, [5, 9])])
    np.testing.assert_allclose(
        to_numpy(bounds.combine_log_mean_exp(chunks, 12)),
        to_numpy(bounds.iwae_bound(log_px_z, log_ratio)),
    )


def test_dreg_surrogate_gradient_is_squared_normalized_weights():
    log_px_z, log_ratio = _log_terms()
    log_ratio_tensor = keras.ops.convert_to_tensor(log_ratio)
    grad = gradient(
        lambda t: keras.ops.sum(bounds.dreg_surrogate(t, log_ratio_tensor)),
        log_px_z,
    )
    log_w = log_px_z - log_ratio
    normalized = np.exp(log_w - logsumexp(log_w, axis=0))
    np.testing.assert_allclose(grad, normalized**2)


def test_kl_per_dimension_matches_tfp():
    mean = RNG.normal(size=(4, 3))
    log_var = RNG.normal(size=(4, 3))
    q = tfp.distributions.Normal(mean, np.exp(0.5 * log_var))
    p = tfp.distributions.Normal(np.float64(0.0), np.float64(1.0))
    np.testing.assert_allclose(
        to_numpy(bounds.kl_per_dimension(mean, log_var)),
        tfp.distributions.kl_divergence(q, p).numpy(),
        rtol=1e-10,
    )


def test_free_bits_floors_each_dimension_of_the_batch_mean_kl():
    kl = np.array([[0.1, 2.0, 0.0], [0.3, 4.0, 0.1]], "float32")
    # Dimension means: 0.2 -> 0.5, 3.0 stays, 0.05 -> 0.5.
    value = to_numpy(bounds.free_bits_kl(kl, 0.5))
    np.testing.assert_allclose(value, 4.0, rtol=1e-6)
    # Floored dimensions get no gradient; the others the batch mean's.
    np.testing.assert_allclose(
        gradient(lambda t: bounds.free_bits_kl(t, 0.5), kl),
        [[0.0, 0.5, 0.0], [0.0, 0.5, 0.0]],
    )
    np.testing.assert_allclose(
        to_numpy(bounds.free_bits_kl(kl, 0.0)), 3.25, rtol=1e-6
    )


def _diagonal_normal(mean, log_var):
    return tfp.distributions.Independent(
        tfp.distributions.Normal(mean, np.exp(0.5 * log_var)), 1)


def test_normal_log_probs_and_kl_match_tfp():
    z, mean, log_var, prior_mean, prior_log_var = RNG.normal(size=(5, 4, 3))
    q = _diagonal_normal(mean, log_var)
    p = _diagonal_normal(prior_mean, prior_log_var)
    expected_log_q = q.log_prob(z).numpy()
    expected_log_prior = _diagonal_normal(0 * z, 0 * z).log_prob(z).numpy()
    expected_kl = tfp.distributions.kl_divergence(q, p).numpy()
    # The functions take tensors (a NumPy array left of a PyTorch tensor
    # in an operator does not convert).
    z, mean, log_var, prior_mean, prior_log_var = (
        keras.ops.convert_to_tensor(v)
        for v in (z, mean, log_var, prior_mean, prior_log_var)
    )
    np.testing.assert_allclose(
        to_numpy(bounds.normal_log_prob(z, mean, log_var)), expected_log_q,
        rtol=1e-12)
    np.testing.assert_allclose(
        to_numpy(bounds.standard_normal_log_prob(z)), expected_log_prior,
        rtol=1e-12)
    np.testing.assert_allclose(
        to_numpy(bounds.normal_kl(mean, log_var, prior_mean, prior_log_var)),
        expected_kl, rtol=1e-10)


def test_log_ratio_to_prior_turns_the_ops_ratio_into_one_against_p():
    """From the op's log q(z) - log N(z; 0, I), for samples broadcast
    against the prior's parameters."""
    import keras_vae

    mean, log_var = RNG.normal(size=(2, 4, 3)).astype("float32")
    prior_mean, prior_log_var = RNG.normal(size=(2, 6, 4, 3))
    z, _, log_ratio = keras_vae.ops.reparameterize_kl(
        mean, log_var, num_samples=6, seed=[1, 2])
    z = to_numpy(z).astype(np.float64)
    q = _diagonal_normal(mean.astype(np.float64), log_var.astype(np.float64))
    expected = q.log_prob(z) - (
        _diagonal_normal(prior_mean, prior_log_var).log_prob(z))
    log_ratio, z, prior_mean, prior_log_var = (
        keras.ops.convert_to_tensor(v)
        for v in (to_numpy(log_ratio).astype(np.float64), z, prior_mean,
                  prior_log_var)
    )
    np.testing.assert_allclose(
        to_numpy(bounds.log_ratio_to_prior(
            log_ratio, z, prior_mean, prior_log_var)),
        expected.numpy(), rtol=2e-5, atol=2e-5)
