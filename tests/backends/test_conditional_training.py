"""ConditionalVAE with a learned prior trains and samples on the active
Keras backend (`make test` runs this directory under TensorFlow, JAX and
PyTorch). Oracles: finite differences of the loss, the estimators'
documented gradients, and the op's noise for the seed."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_vae
from helpers import tiny_vae

NUM_CLASSES = tiny_vae.NUM_CLASSES
conditional_vae = tiny_vae.build_conditional


def numpy(t):
    return ops.convert_to_numpy(t)


def data():
    return tiny_vae.data(), tiny_vae.labels()


def prior_gradients(model, gradients, variables):
    prior = {id(v) for v in model.prior.trainable_variables}
    return [numpy(g) for g, v in zip(gradients, variables) if id(v) in prior]


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_conditional_gradients_equal_finite_differences(objective):
    x, labels = data()
    model = conditional_vae(num_samples=3, objective=objective)
    seed = (2, 9)
    gradients, variables, _, _ = model.compute_gradients((x, labels), seed=seed)
    assert max(np.abs(g).max() for g in prior_gradients(
        model, gradients, variables)) > 1e-3
    gradient = np.concatenate([numpy(g).ravel() for g in gradients])
    weights = [numpy(v) for v in variables]
    direction = np.random.default_rng(1).standard_normal(gradient.shape)
    direction /= np.linalg.norm(direction)
    h = 1e-2
    values = []
    for sign in (1, -1):
        start = 0
        for v, w in zip(variables, weights):
            step = direction[start : start + w.size].reshape(w.shape)
            v.assign((w + sign * h * step).astype("float32"))
            start += w.size
        _, _, losses, _ = model.compute_gradients((x, labels), seed=seed)
        values.append(float(numpy(losses["loss"])))
    numerical = (values[0] - values[1]) / (2 * h)
    np.testing.assert_allclose(gradient @ direction, numerical, rtol=2e-2)


def test_stl_and_dreg_keep_the_priors_gradient():
    """The prior belongs to the generative model: with the same samples
    STL and DReG give it IWAE's gradient, while DReG's encoder gradient is
    its own."""
    x, labels = data()
    results = {}
    for estimator in ("standard", "stl", "dreg"):
        model = conditional_vae(
            num_samples=4, objective="iwae", gradient_estimator=estimator
        )
        gradients, variables, _, _ = model.compute_gradients(
            (x, labels), seed=(5, 1)
        )
        encoder = {id(v) for v in model.encoder.trainable_variables}
        results[estimator] = (
            prior_gradients(model, gradients, variables),
            [numpy(g) for g, v in zip(gradients, variables)
             if id(v) in encoder],
        )
    standard_prior, standard_encoder = results["standard"]
    assert max(np.abs(g).max() for g in standard_prior) > 1e-3
    for estimator in ("stl", "dreg"):
        for a, b in zip(results[estimator][0], standard_prior):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(
        not np.allclose(a, b, rtol=1e-2)
        for a, b in zip(results["dreg"][1], standard_encoder)
    )


@pytest.mark.parametrize("estimator", ["standard", "dreg"])
def test_fit_with_labels_and_a_learned_prior_lowers_the_loss(estimator):
    x, labels = data()
    model = conditional_vae(
        num_samples=2, objective="iwae", gradient_estimator=estimator
    )
    model.compile(keras.optimizers.Adam(3e-2))
    before = model.evaluate(x, labels, verbose=0, return_dict=True)["loss"]
    prior_before = [numpy(v) for v in model.prior.trainable_variables]
    history = model.fit(x, labels, batch_size=8, epochs=15, verbose=0,
                        validation_data=(x, labels))
    after = model.evaluate(x, labels, verbose=0, return_dict=True)["loss"]
    assert after < before - 1.0
    assert "val_loss" in history.history
    # The prior was trained too.
    assert any(
        not np.allclose(numpy(v), b)
        for v, b in zip(model.prior.trainable_variables, prior_before)
    )


def test_sample_draws_the_ops_noise_through_the_learned_prior():
    """sample(n, labels, seed)'s z is the op's noise for the seed (the same
    on every backend) scaled and shifted by p(z|c): the decoder's output
    at that z, on this backend."""
    model = conditional_vae()
    labels = np.array([0, 1, 2, 1, 0])
    one_hot = np.eye(NUM_CLASSES, dtype="float32")[labels]
    mean, log_var = (numpy(t) for t in model.prior(one_hot))
    zeros = np.zeros_like(mean)
    noise, _, _ = keras_vae.ops.reparameterize_kl(zeros, zeros, seed=[4, 0])
    z = mean + np.exp(0.5 * log_var) * numpy(noise)[0]
    expected = numpy(model.likelihood.mean(model.decoder([z, one_hot])))
    np.testing.assert_allclose(
        numpy(model.sample(5, labels, seed=4)), expected, rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        numpy(model.sample(5, 1, seed=4))[[1, 3]], expected[[1, 3]],
        rtol=1e-5, atol=1e-6,
    )
