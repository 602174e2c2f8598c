import contextlib

import numpy as np
import pytest
import tensorflow_probability as tfp
import keras
from keras.ops import convert_to_numpy as to_numpy

from helpers.numerics import variable_gradient
from keras_vae import likelihoods

tfd = tfp.distributions
RNG = np.random.default_rng(0)


def _recording_gradients(recording):
    """PyTorch's grad mode, on or off; a no-op on the other backends."""
    if keras.backend.backend() != "torch" or recording:
        return contextlib.nullcontext()
    import torch

    return torch.no_grad()


@pytest.mark.parametrize("recording", [True, False])
def test_bernoulli_log_prob_matches_tfp_summed_over_event(recording):
    """TFP's value, summed over the event, for several sample axes and for
    none. PyTorch sums the terms one way while recording gradients and
    another (a contraction) without: both are checked. Recording, the
    gradient is x - sigmoid(t)."""
    x = (RNG.uniform(size=(4, 3, 5)) < 0.5).astype("float32")
    logits = RNG.normal(scale=3.0, size=(3, 2, 4, 3, 5)).astype("float32")
    with _recording_gradients(recording):
        for t in (logits, logits[0, 0]):
            got = to_numpy(likelihoods.Bernoulli().log_prob(x, t))
            expected = tfd.Independent(tfd.Bernoulli(logits=t), 2).log_prob(x)
            assert got.shape == t.shape[:-2]
            np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5)
    if recording:
        variable = keras.Variable(logits)
        grad = variable_gradient(
            lambda: keras.ops.sum(
                likelihoods.Bernoulli().log_prob(x, variable)
            ),
            variable,
        )
        expected = x - 1.0 / (1.0 + np.exp(-logits))
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_bernoulli_log_prob_is_stable_for_large_logits():
    x = np.array([[1.0, 0.0]], "float32")
    logits = np.array([[200.0, -200.0]], "float32")
    np.testing.assert_allclose(
        to_numpy(likelihoods.Bernoulli().log_prob(x, logits)), [0.0], atol=1e-6
    )


def test_bernoulli_mean_and_sample():
    logits = np.full((20000,), 0.8, "float32")[None]
    bern = likelihoods.Bernoulli()
    p = 1.0 / (1.0 + np.exp(-0.8))
    np.testing.assert_allclose(
        to_numpy(bern.mean(logits)), np.full_like(logits, p), rtol=1e-6
    )
    draws = to_numpy(bern.sample(logits, seed=1))
    assert set(np.unique(draws)) <= {0.0, 1.0}
    assert abs(draws.mean() - p) < 0.02


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_gaussian_fixed_scale_matches_tfp(scale):
    x = RNG.normal(size=(4, 6)).astype("float32")
    loc = RNG.normal(size=(3, 4, 6)).astype("float32")
    got = to_numpy(likelihoods.Gaussian(scale).log_prob(x, loc))
    expected = tfd.Independent(tfd.Normal(loc, scale), 1).log_prob(x)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5)
    assert not likelihoods.Gaussian(scale).weights


def test_gaussian_learned_scale_has_one_weight_per_output_dimension():
    gauss = likelihoods.Gaussian("learned")
    gauss.build((None, 2, 3))
    assert gauss.log_scale.shape == (2, 3) and gauss.trainable_weights
    log_scale = RNG.normal(scale=0.5, size=(2, 3)).astype("float32")
    gauss.log_scale.assign(log_scale)
    x = RNG.normal(size=(4, 2, 3)).astype("float32")
    loc = RNG.normal(size=(4, 2, 3)).astype("float32")
    expected = tfd.Independent(tfd.Normal(loc, np.exp(log_scale)), 2).log_prob(x)
    np.testing.assert_allclose(
        to_numpy(gauss.log_prob(x, loc)), expected.numpy(), rtol=1e-5
    )
    # The gradient reaches the scale.
    grad = variable_gradient(
        lambda: keras.ops.sum(gauss.log_prob(x, loc)), gauss.log_scale
    )
    assert np.abs(grad).max() > 0


def test_gaussian_sample_moments():
    loc = np.full((1, 50000), 2.0, "float32")
    draws = to_numpy(likelihoods.Gaussian(0.5).sample(loc, seed=3))
    assert abs(draws.mean() - 2.0) < 0.01 and abs(draws.std() - 0.5) < 0.01
    np.testing.assert_array_equal(
        to_numpy(likelihoods.Gaussian(0.5).mean(loc)), loc
    )


def test_half_precision_decoder_output_is_computed_in_float32():
    x = np.ones((2, 3), "float32")
    logits = keras.ops.convert_to_tensor(np.full((2, 3), 20.0), "float16")
    value = likelihoods.Bernoulli().log_prob(x, logits)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    assert np.isfinite(to_numpy(value)).all()


def test_get_accepts_names_instances_and_configs():
    assert isinstance(likelihoods.get("bernoulli"), likelihoods.Bernoulli)
    gauss = likelihoods.get("Gaussian")
    assert isinstance(gauss, likelihoods.Gaussian) and gauss.scale == 1.0
    instance = likelihoods.Gaussian(0.2)
    assert likelihoods.get(instance) is instance
    clone = likelihoods.get(likelihoods.serialize(likelihoods.Gaussian("learned")))
    assert isinstance(clone, likelihoods.Gaussian) and clone.learned


@pytest.mark.parametrize("identifier", ["poisson", 3, None, {"a": 1}])
def test_get_rejects_unknown(identifier):
    with pytest.raises((ValueError, TypeError), match="likelihood|Could not"):
        likelihoods.get(identifier)


@pytest.mark.parametrize("scale", [0.0, -1.0, "fixed", float("nan")])
def test_gaussian_rejects_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        likelihoods.Gaussian(scale)


def test_nan_propagates():
    x = np.array([[np.nan, 1.0]], "float32")
    out = np.zeros((1, 2), "float32")
    assert np.isnan(to_numpy(likelihoods.Bernoulli().log_prob(x, out))).all()
    assert np.isnan(to_numpy(likelihoods.Gaussian().log_prob(x, out))).all()


def test_bernoulli_on_probabilities_matches_tfp():
    x = (RNG.uniform(size=(4, 6)) < 0.5).astype("float32")
    probs = RNG.uniform(0.05, 0.95, size=(3, 4, 6)).astype("float32")
    likelihood = likelihoods.Bernoulli(from_logits=False)
    expected = tfd.Independent(tfd.Bernoulli(probs=probs), 1).log_prob(x)
    np.testing.assert_allclose(
        to_numpy(likelihood.log_prob(x, probs)), expected.numpy(), rtol=1e-5
    )
    np.testing.assert_allclose(to_numpy(likelihood.mean(probs)), probs)
    # Probabilities of exactly 0 and 1 stay finite.
    edge = likelihood.log_prob(np.array([[1.0, 0.0]], "float32"),
                               np.array([[0.0, 1.0]], "float32"))
    assert np.all(np.isfinite(to_numpy(edge)))
    clone = likelihoods.get(likelihoods.serialize(likelihood))
    assert clone.from_logits is False


@pytest.mark.parametrize(
    "likelihood, x, found",
    [
        (likelihoods.Bernoulli(), np.array([[0.0, 255.0]]), r"\[0, 255\]"),
        (likelihoods.Bernoulli(from_logits=False), np.array([[-1.0, 0.5]]),
         r"\[-1, 0.5\]"),
    ],
)
def test_support_check_names_the_likelihood_and_the_range(likelihood, x,
                                                          found):
    with pytest.raises(ValueError, match=found + r".*Bernoulli"):
        likelihood.check_support(x)
    likelihood.check_support(np.clip(x, 0, 1))
    # A Gaussian takes any finite value, and no NaN.
    likelihoods.Gaussian().check_support(x)
    with pytest.raises(ValueError, match="non-finite.*Gaussian"):
        likelihoods.Gaussian().check_support(np.array([[np.nan, 1.0]]))
