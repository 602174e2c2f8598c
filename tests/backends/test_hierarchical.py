"""HierarchicalVAE against the closed forms of a linear-Gaussian model with
two stochastic layers (tests/helpers/linear_gaussian.py), on the active
Keras backend: log p(x) is exact, so is the ELBO of any q, and with q the
true posterior every bound equals log p(x)."""

import keras
import numpy as np
import pytest
from keras import ops

from helpers import linear_gaussian as lg

DIM = 3


def numpy(t):
    return np.asarray(ops.convert_to_numpy(t), dtype=np.float64)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(7)
    p = lg.generative(rng, DIM)
    q = lg.exact_posterior(p)
    x = lg.data(p, rng, 64)
    return p, q, lg.perturbed(q, rng), x


@pytest.mark.parametrize("kl", ["mc", "analytic"])
def test_every_bound_is_log_px_at_the_true_posterior(setup, kl):
    p, q, _, x = setup
    model = lg.model(p, q, kl=kl, seed=3)
    exact = lg.exact_log_px(p, x)
    np.testing.assert_allclose(
        numpy(model.iwae_bound(x, num_samples=1, seed=1)), exact, atol=2e-4)
    np.testing.assert_allclose(
        numpy(model.iwae_bound(x, num_samples=20, seed=2)), exact, atol=2e-4)
    np.testing.assert_allclose(
        numpy(model.log_likelihood(x, num_samples=300, chunk_size=100,
                                   seed=3, verbose=0)), exact, atol=2e-4)
    elbo = numpy(model.elbo(x, num_samples=400, seed=4))
    if kl == "mc":
        np.testing.assert_allclose(elbo, exact, atol=2e-4)
    else:
        # The top layer's analytic KL replaces a Monte Carlo term: the
        # estimate is unbiased, no longer exact per sample.
        assert abs(np.mean(elbo - exact)) < 0.02


@pytest.mark.parametrize("kl", ["mc", "analytic"])
def test_elbo_estimates_the_closed_form_elbo_of_any_posterior(setup, kl):
    p, _, q, x = setup
    model = lg.model(p, q, kl=kl, seed=5)
    estimate = numpy(model.elbo(x, num_samples=4000, seed=6))
    expected = lg.analytic_elbo(p, q, x)
    assert np.all(expected < lg.exact_log_px(p, x))
    np.testing.assert_allclose(estimate, expected, atol=0.06)
    # Not a coincidence of the tolerance: the bound is well below log p(x).
    assert np.mean(lg.exact_log_px(p, x) - expected) > 0.1


def test_iwae_bounds_rise_with_k_towards_log_px(setup):
    p, _, q, x = setup
    model = lg.model(p, q, seed=7)
    exact = np.mean(lg.exact_log_px(p, x))
    # Each example 50 times, so the means' Monte Carlo error is small
    # against the gaps between them.
    many = np.tile(x, (50, 1))
    means = [np.mean(numpy(model.iwae_bound(many, num_samples=k, seed=k)))
             for k in (1, 10, 100)]
    np.testing.assert_allclose(
        means[0], np.mean(lg.analytic_elbo(p, q, x)), atol=0.02)
    assert means[0] < means[1] < means[2] < exact
    estimate = numpy(model.log_likelihood(x, num_samples=3000, seed=8,
                                          verbose=0))
    # Unbiased in the limit; per example, 3000 samples of this q still
    # leave about 0.05 nats of Monte Carlo error.
    np.testing.assert_allclose(np.mean(estimate), exact, atol=0.01)
    np.testing.assert_allclose(estimate, lg.exact_log_px(p, x), atol=0.25)
    assert abs(np.mean(estimate) - exact) < 0.1 * (exact - means[2])


@pytest.mark.parametrize("objective,estimator",
                         [("elbo", "stl"), ("iwae", "dreg")])
def test_path_gradients_vanish_at_the_true_posterior(setup, objective,
                                                     estimator):
    """Every log-weight is log p(x) whatever z is, so the estimators that
    keep only the paths through z give the encoders zero gradient. Dropping
    the path through z_1 into q(z_2|z_1) would not: the standard gradient,
    and the control with it, are far from zero."""
    p, q, _, x = setup
    model = lg.model(p, q, objective=objective, gradient_estimator=estimator,
                     num_samples=5, seed=9)
    gradients, variables, _, _ = model.compute_gradients(x, seed=[4, 4])
    encoder_ids = {id(v) for n in model.encoders for v in
                   n.trainable_variables}
    encoder_grads = [numpy(g) for g, v in zip(gradients, variables)
                     if id(v) in encoder_ids]
    assert len(encoder_grads) == 8
    assert max(np.abs(g).max() for g in encoder_grads) < 1e-4

    control = lg.model(p, q, objective=objective, num_samples=5, seed=9)
    gradients, variables, _, _ = control.compute_gradients(x, seed=[4, 4])
    assert max(np.abs(numpy(g)).max() for g, v in zip(gradients, variables)
               if id(v) in {id(w) for n in control.encoders
                            for w in n.trainable_variables}) > 1e-2


def test_fit_learns_the_generative_model(setup):
    """Trained on the model's own data from a perturbed start, the IWAE
    bound rises towards the exact log-likelihood of the true model."""
    p, _, q, _ = setup
    rng = np.random.default_rng(11)
    x = lg.data(p, rng, 512)
    model = lg.model(p, q, objective="iwae", num_samples=5, seed=10)
    before = np.mean(numpy(model.iwae_bound(x, num_samples=5, seed=1)))
    model.compile(keras.optimizers.Adam(1e-2))
    model.fit(x, epochs=15, batch_size=64, verbose=0)
    after = np.mean(numpy(model.iwae_bound(x, num_samples=5, seed=1)))
    exact = np.mean(lg.exact_log_px(p, x))
    assert before < after
    assert exact - after < 0.5 * (exact - before)


def test_sample_draws_ancestrally_from_the_generative_model(setup):
    """x from `sample(draw=True)` has the model's marginal mean and
    variance."""
    p, q, _, _ = setup
    model = lg.model(p, q, seed=11)
    x = numpy(model.sample(20000, seed=12, draw=True))
    mean = p["c"] * p["b"] + p["d"]
    var = p["c"] ** 2 * (p["a"] ** 2 + p["s1"] ** 2) + p["sx"] ** 2
    assert np.all(np.abs(x.mean(0) - mean) < 4 * np.sqrt(var / len(x)))
    np.testing.assert_allclose(x.var(0), var, rtol=0.05)
