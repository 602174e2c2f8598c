"""Variational bounds on log p(x), as pure functions of tensors.

Shapes: `log_px_z` and `log_ratio` are `[K, ...]`, one row per sample
z_k ~ q(z|x) (as returned by `keras_vae.ops.reparameterize_kl`, with
`log_ratio = log q(z_k|x) - log p(z_k)`); `kl` is `[...]`. Every bound is
per example, `[...]`; average over the batch for a loss.

A custom `train_step` can use them directly:

>>> z, kl, log_ratio = keras_vae.ops.reparameterize_kl(mean, log_var, 8, seed)
>>> log_px_z = likelihood.log_prob(x, decode(z))          # [8, B]
>>> loss = -ops.mean(keras_vae.bounds.iwae_bound(log_px_z, log_ratio))

or take the whole objective of `keras_vae.VAE` from `training_losses`.
"""

import math

import keras
from keras import ops

from keras_vae.checks import check_objective

_LOG_2PI = math.log(2.0 * math.pi)

__all__ = [
    "elbo",
    "elbo_mc",
    "log_weights",
    "iwae_bound",
    "dreg_surrogate",
    "kl_per_dimension",
    "normal_log_prob",
    "standard_normal_log_prob",
    "normal_kl",
    "log_ratio_to_prior",
    "free_bits_kl",
    "combine_log_mean_exp",
    "batch_mean",
    "stops_log_ratio_param_grad",
    "training_losses",
]


def _mean(x, axis=0):
    """`ops.mean` along `axis`, float64 kept in float64.

    Off TensorFlow, `ops.mean` computes float64 in float32 and casts back;
    a sum over the count keeps the input's precision.
    """
    x = ops.convert_to_tensor(x)
    if keras.backend.standardize_dtype(x.dtype) != "float64":
        return ops.mean(x, axis=axis)
    return ops.sum(x, axis=axis) / ops.cast(ops.shape(x)[axis], x.dtype)


def elbo(log_px_z, kl):
    """ELBO with the analytic KL: mean_k log p(x|z_k) - KL(q || p)."""
    return _mean(log_px_z) - kl


def elbo_mc(log_px_z, log_ratio):
    """ELBO with a Monte Carlo KL: mean_k [log p(x|z_k) - log_ratio_k]."""
    return _mean(log_weights(log_px_z, log_ratio))


def log_weights(log_px_z, log_ratio):
    """log w_k = log p(x, z_k) - log q(z_k|x) = log p(x|z_k) - log_ratio_k."""
    return log_px_z - log_ratio


def _log_num_samples(log_w):
    return ops.log(ops.cast(ops.shape(log_w)[0], log_w.dtype))


def iwae_bound(log_px_z, log_ratio):
    """Importance-weighted bound (Burda et al. 2015).

    `logsumexp_k log w_k - log K`; equals `elbo_mc` for K=1 and rises
    towards log p(x) with K.
    """
    log_w = log_weights(log_px_z, log_ratio)
    return ops.logsumexp(log_w, axis=0) - _log_num_samples(log_w)


def dreg_surrogate(log_px_z, log_ratio):
    """Encoder surrogate of the doubly reparameterized gradient (DReG).

    Tucker et al. 2018: with `log_ratio` computed with
    `stop_log_ratio_param_grad=True`, the gradient of
    `sum_k stop_gradient(w~_k**2) * log w_k` with respect to the encoder's
    parameters is the DReG estimator of the IWAE bound's gradient, w~ being
    the normalized importance weights. Its value is not a bound, and its
    gradient with respect to the decoder is not the IWAE one: use
    `iwae_bound` for the decoder.
    """
    log_w = log_weights(log_px_z, log_ratio)
    normalized = ops.stop_gradient(ops.softmax(log_w, axis=0))
    return ops.sum(ops.square(normalized) * log_w, axis=0)


def kl_per_dimension(mean, log_var):
    """KL(N(mean, exp(log_var)) || N(0, 1)) per latent dimension, `[..., D]`.

    The op returns the sum over D; free bits needs the terms.
    """
    return 0.5 * (ops.exp(log_var) + ops.square(mean) - 1.0 - log_var)


def _tensors(*values):
    """The values as tensors: NumPy arrays mixed with PyTorch tensors in
    Python arithmetic fail."""
    return tuple(ops.convert_to_tensor(v) for v in values)


def normal_log_prob(z, mean, log_var):
    """log N(z; mean, diag(exp(log_var))), summed over the last axis."""
    z, mean, log_var = _tensors(z, mean, log_var)
    return -0.5 * ops.sum(
        _LOG_2PI + log_var + ops.square(z - mean) * ops.exp(-log_var),
        axis=-1,
    )


def standard_normal_log_prob(z):
    """log N(z; 0, I), summed over the last axis."""
    return -0.5 * ops.sum(_LOG_2PI + ops.square(z), axis=-1)


def normal_kl(mean, log_var, prior_mean, prior_log_var):
    """KL(N(mean, exp(log_var)) || N(prior_mean, exp(prior_log_var))),
    summed over the last axis: the analytic KL against a learned Gaussian
    prior (the op's `kl` is against N(0, I))."""
    mean, log_var, prior_mean, prior_log_var = _tensors(
        mean, log_var, prior_mean, prior_log_var
    )
    return 0.5 * ops.sum(
        prior_log_var
        - log_var
        + (ops.exp(log_var) + ops.square(mean - prior_mean))
        * ops.exp(-prior_log_var)
        - 1.0,
        axis=-1,
    )


def log_ratio_to_prior(log_ratio, z, prior_mean, prior_log_var):
    """The op's `log q(z|.) - log N(z; 0, I)` turned into
    `log q(z|.) - log p(z)` for a Gaussian prior p with the given parameters
    (a conditional prior, or p(z_l | z_{l+1}) in a hierarchy).

    Args:
        log_ratio: `[K, ...]`, from `keras_vae.ops.reparameterize_kl`.
        z: `[K, ..., D]`, the samples it came with.
        prior_mean, prior_log_var: `[..., D]` or `[K, ..., D]`.
    """
    return (
        log_ratio
        + standard_normal_log_prob(z)
        - normal_log_prob(z, prior_mean, prior_log_var)
    )


def free_bits_kl(kl_per_dim, free_bits):
    """KL with a floor of `free_bits` nats per latent dimension.

    Kingma et al. 2016: each dimension's KL, averaged over the batch, is
    replaced by `max(free_bits, kl_d)`, so the optimizer gains nothing from
    pushing a dimension's KL below the floor.

    Args:
        kl_per_dim: `[B, D]`, from `kl_per_dimension`.
        free_bits: the floor in nats per dimension, >= 0.

    Returns:
        The floored KL for the batch, a scalar (it is not per example).
    """
    return ops.sum(ops.maximum(_mean(kl_per_dim), free_bits))


def combine_log_mean_exp(chunk_logsumexps, num_samples):
    """log of the mean of exp(log w) over all samples, from chunks.

    Args:
        chunk_logsumexps: `[C, ...]`, `logsumexp` of the log-weights of each
            of C chunks of samples.
        num_samples: the total number of samples over the chunks.

    Returns:
        `[...]`: `logsumexp_c chunk_logsumexps[c] - log num_samples`, the
        importance-sampling estimate of log p(x) (Burda et al. 2015).
    """
    return ops.logsumexp(chunk_logsumexps, axis=0) - math.log(num_samples)


def batch_mean(values, sample_weight=None):
    """The mean of per-example `values` `[B]`, weighted by `sample_weight`."""
    if sample_weight is None:
        return _mean(values)
    weight = ops.cast(ops.reshape(sample_weight, ops.shape(values)), "float32")
    return ops.sum(values * weight) / ops.sum(weight)


def stops_log_ratio_param_grad(gradient_estimator):
    """Whether `gradient_estimator` needs `log_ratio` from the op with
    `stop_log_ratio_param_grad=True` (STL and DReG: the path through z
    alone)."""
    return gradient_estimator != "standard"


def training_losses(
    log_px_z,
    log_ratio,
    kl,
    mean=None,
    log_var=None,
    objective="elbo",
    gradient_estimator="standard",
    kl_estimator="analytic",
    beta=1.0,
    free_bits=0.0,
    sample_weight=None,
):
    """The losses of one batch and the per-example terms to report.

    The objective of `keras_vae.VAE`, for a custom `train_step`:

    >>> stop = bounds.stops_log_ratio_param_grad("dreg")
    >>> z, kl, log_ratio = keras_vae.ops.reparameterize_kl(
    ...     mean, log_var, 5, seed, stop_log_ratio_param_grad=stop)
    >>> log_px_z = likelihood.log_prob(x, decode(z))
    >>> losses, report = bounds.training_losses(
    ...     log_px_z, log_ratio, kl, objective="iwae",
    ...     gradient_estimator="dreg")

    Then differentiate `losses["loss"]` for every variable, except, with
    DReG, the encoder's, which take the gradient of
    `losses["encoder_loss"]` (computed from the same samples).

    Args:
        log_px_z: `[K, B]`, log p(x|z_k).
        log_ratio: `[K, B]`, log q(z_k|x) - log p(z_k), from the op with
            `stop_log_ratio_param_grad=stops_log_ratio_param_grad(
            gradient_estimator)`.
        kl: `[B]`, the analytic KL.
        mean, log_var: `[B, D]`, q's parameters; needed for free bits only.
        objective: `"elbo"` or `"iwae"`.
        gradient_estimator: `"standard"`, `"stl"` or `"dreg"` (IWAE only).
            STL with the ELBO uses the Monte Carlo KL.
        kl_estimator: `"analytic"` or `"mc"`, the ELBO's KL.
        beta: the KL weight (a float or a scalar tensor); with the IWAE
            objective it scales `log_ratio` inside the weights.
        free_bits: the floor in nats per latent dimension (ELBO, analytic
            KL, standard gradient only).
        sample_weight: optional `[B]` weights of the batch mean.

    Returns:
        `(losses, report)`: `losses["loss"]`, the scalar to minimize (the
        negative bound with beta, averaged over the batch), and with DReG
        `losses["encoder_loss"]`; `report["bound"]` (the bound with
        beta = 1), `report["reconstruction"]` (`mean_k log p(x|z_k)`) and
        `report["kl"]`, each `[B]`.
    """
    free_bits = check_objective(
        objective, gradient_estimator, kl_estimator, free_bits
    )
    log_px_z, log_ratio, kl = (
        ops.convert_to_tensor(t) for t in (log_px_z, log_ratio, kl)
    )
    reconstruction = _mean(log_px_z)
    losses = {}
    if objective == "iwae":
        bound = iwae_bound(log_px_z, log_ratio)
        losses["loss"] = -batch_mean(
            iwae_bound(log_px_z, beta * log_ratio), sample_weight
        )
        if gradient_estimator == "dreg":
            losses["encoder_loss"] = -batch_mean(
                dreg_surrogate(log_px_z, beta * log_ratio), sample_weight
            )
    elif kl_estimator == "mc" or gradient_estimator == "stl":
        bound = elbo_mc(log_px_z, log_ratio)
        losses["loss"] = -batch_mean(
            elbo_mc(log_px_z, beta * log_ratio), sample_weight
        )
    else:
        bound = elbo(log_px_z, kl)
        if free_bits > 0.0:
            kl_term = free_bits_kl(kl_per_dimension(mean, log_var), free_bits)
        else:
            kl_term = batch_mean(kl, sample_weight)
        losses["loss"] = (
            -batch_mean(reconstruction, sample_weight) + beta * kl_term
        )
    report = {"bound": bound, "reconstruction": reconstruction, "kl": kl}
    return losses, report
