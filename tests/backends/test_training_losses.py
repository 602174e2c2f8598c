"""`bounds.training_losses` against NumPy closed forms, on the active
backend."""

import numpy as np
import pytest
from keras import ops

from keras_vae import bounds

K, B, D = 4, 5, 3
BETA = 0.6


def numpy(t):
    return ops.convert_to_numpy(t)


@pytest.fixture
def terms():
    rng = np.random.default_rng(0)
    mean, log_var = rng.standard_normal((2, B, D)).astype("float32")
    return dict(
        log_px_z=rng.normal(-5.0, 2.0, (K, B)).astype("float32"),
        log_ratio=rng.normal(1.0, 1.0, (K, B)).astype("float32"),
        kl=np.abs(rng.normal(1.0, 1.0, B)).astype("float32"),
        mean=mean,
        log_var=log_var,
        sample_weight=rng.uniform(0.5, 2.0, B).astype("float32"),
    )


def weighted(values, weight):
    return np.sum(values * weight) / np.sum(weight)


def logsumexp(a):
    m = a.max(axis=0)
    return m + np.log(np.exp(a - m).sum(axis=0))


CASES = [
    ("elbo", "standard", "analytic"),
    ("elbo", "standard", "mc"),
    ("elbo", "stl", "analytic"),
    ("iwae", "standard", "analytic"),
    ("iwae", "dreg", "analytic"),
]


@pytest.mark.parametrize("objective, estimator, kl_estimator", CASES)
def test_losses_and_report_equal_the_closed_forms(
    terms, objective, estimator, kl_estimator
):
    t = {k: v.astype("float64") for k, v in terms.items()}
    lp, lr, kl, w = t["log_px_z"], t["log_ratio"], t["kl"], t["sample_weight"]
    losses, report = bounds.training_losses(
        terms["log_px_z"], terms["log_ratio"], terms["kl"],
        objective=objective, gradient_estimator=estimator,
        kl_estimator=kl_estimator, beta=BETA,
        sample_weight=terms["sample_weight"],
    )
    if objective == "iwae":
        log_w = lp - BETA * lr
        loss = -weighted(logsumexp(log_w) - np.log(K), w)
        bound = logsumexp(lp - lr) - np.log(K)
    elif kl_estimator == "mc" or estimator == "stl":
        loss = -weighted(np.mean(lp - BETA * lr, axis=0), w)
        bound = np.mean(lp - lr, axis=0)
    else:
        loss = -weighted(lp.mean(axis=0), w) + BETA * weighted(kl, w)
        bound = lp.mean(axis=0) - kl
    np.testing.assert_allclose(numpy(losses["loss"]), loss, rtol=1e-5)
    np.testing.assert_allclose(numpy(report["bound"]), bound, rtol=1e-5)
    np.testing.assert_allclose(
        numpy(report["reconstruction"]), lp.mean(axis=0), rtol=1e-5
    )
    np.testing.assert_allclose(numpy(report["kl"]), kl, rtol=1e-6)
    if estimator == "dreg":
        log_w = lp - BETA * lr
        normalized = np.exp(log_w - logsumexp(log_w))
        surrogate = np.sum(normalized**2 * log_w, axis=0)
        np.testing.assert_allclose(
            numpy(losses["encoder_loss"]), -weighted(surrogate, w), rtol=1e-5
        )
    else:
        assert set(losses) == {"loss"}


def test_free_bits_floor_each_dimensions_batch_mean(terms):
    mean, log_var = terms["mean"].astype("float64"), terms["log_var"]
    per_dim = 0.5 * (np.exp(log_var) + mean**2 - 1.0 - log_var)
    floor = 0.8
    losses, _ = bounds.training_losses(
        terms["log_px_z"], terms["log_ratio"], terms["kl"], terms["mean"],
        terms["log_var"], beta=BETA, free_bits=floor,
    )
    kl_term = np.sum(np.maximum(per_dim.mean(axis=0), floor))
    expected = -terms["log_px_z"].mean() + BETA * kl_term
    np.testing.assert_allclose(numpy(losses["loss"]), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(objective="elbo", gradient_estimator="dreg"), "dreg"),
        (dict(objective="iwae", free_bits=0.5), "free_bits"),
        (dict(objective="vae"), "objective"),
        (dict(kl_estimator="exact"), "kl must be"),
    ],
)
def test_invalid_objectives_are_refused(terms, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bounds.training_losses(
            terms["log_px_z"], terms["log_ratio"], terms["kl"], **kwargs
        )


def test_stl_and_dreg_need_the_stopped_log_ratio():
    assert not bounds.stops_log_ratio_param_grad("standard")
    assert bounds.stops_log_ratio_param_grad("stl")
    assert bounds.stops_log_ratio_param_grad("dreg")
