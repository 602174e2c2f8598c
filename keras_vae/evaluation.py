"""The evaluation protocol of Burda et al. (2015), as `keras-vae evaluate`
runs it: bounds, log p(x), KL and active units, as mean and standard error
over the examples.

`evaluate_arrays` evaluates a model; `mean_stderr` and `paired_difference`
summarize per-example values, for the command line and the results table
alike.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Burda et al. (2015), section 5.2: a latent dimension is active when the
# variance over the data of its posterior mean exceeds this.
ACTIVE_UNIT_THRESHOLD = 0.01


def mean_stderr(values) -> dict:
    """`{"mean", "stderr"}` of per-example values (stderr NaN for one)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    stderr = (
        float(values.std(ddof=1) / np.sqrt(len(values)))
        if len(values) > 1
        else float("nan")
    )
    return {"mean": float(values.mean()), "stderr": stderr}


def paired_difference(a, b) -> dict:
    """Mean and standard error of `a - b`, two models' values on the same
    examples: the spread between examples cancels out of its error."""
    return mean_stderr(np.asarray(a, np.float64) - np.asarray(b, np.float64))


def format_mean_stderr(summary: dict, digits: int = 2) -> str:
    return f"{summary['mean']:.{digits}f} ± {summary['stderr']:.{digits}f}"


def evaluate_arrays(
    model,
    x: np.ndarray,
    iwae_ks: Sequence[int] = (1, 5, 50),
    elbo_samples: int = 1,
    ll_samples: int = 5000,
    batch_size: int = 100,
    seed: int = 0,
    verbose: int = 1,
    condition=None,
) -> dict:
    """Evaluates `model` on the examples `x`, one batch at a time.

    Returns a dict of per-example means and standard errors of the ELBO, the
    IWAE bounds at each K, the log-likelihood estimate (the IWAE bound at
    `ll_samples`, Burda et al. 2015) and the KL, and the number of active
    units: latent dimensions whose posterior mean varies over `x` with
    variance above `ACTIVE_UNIT_THRESHOLD` (Burda et al. 2015, section 5.2),
    of the first stochastic layer and, under `"layers"`, of each (the
    means of a layer above the first taken at the mean of the one below,
    `posterior_means`). `"per_example"`
    holds each example's values, as NumPy arrays. `seed` makes the Monte
    Carlo estimates reproducible. For a `keras_vae.ConditionalVAE` pass
    the examples' `condition` (e.g. their labels); the values are then
    given it: log p(x|c) and its bounds.
    """
    import keras

    columns = {"elbo": [], "log_likelihood": [], "kl": []}
    columns.update({f"iwae_{k}": [] for k in iwae_ks})
    means = []
    seeds = np.random.default_rng(seed)

    def next_seed():
        return int(seeds.integers(2**31))

    progress = keras.utils.Progbar(len(x), verbose=verbose,
                                   unit_name="example")
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        given = ({} if condition is None
                 else {"condition": condition[start : start + batch_size]})
        means.append(
            [np.asarray(m) for m in model.posterior_means(batch, **given)])
        columns["elbo"].append(model.elbo(
            batch, num_samples=elbo_samples, seed=next_seed(), **given))
        for k in iwae_ks:
            columns[f"iwae_{k}"].append(model.iwae_bound(
                batch, num_samples=k, seed=next_seed(), **given))
        # One progress bar, over examples: none of its own per chunk.
        columns["log_likelihood"].append(model.log_likelihood(
            batch, num_samples=ll_samples, batch_size=batch_size,
            seed=next_seed(), verbose=0, **given))
        columns["kl"].append(
            model.kl_divergence(batch, seed=next_seed(), **given))
        progress.add(len(batch))

    per_example = {
        name: np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1)
                              for v in values])
        for name, values in columns.items()
    }

    def summary(name):
        return mean_stderr(per_example[name])

    variances = [np.concatenate(layer).var(axis=0) for layer in zip(*means)]
    layers = [
        {
            "active_units": int(np.sum(v > ACTIVE_UNIT_THRESHOLD)),
            "latent_dim": int(len(v)),
            "posterior_mean_variance": v.tolist(),
        }
        for v in variances
    ]
    return {
        "per_example": per_example,
        "num_examples": int(len(x)),
        "elbo": {**summary("elbo"), "num_samples": elbo_samples},
        "iwae": {str(k): summary(f"iwae_{k}") for k in iwae_ks},
        "log_likelihood": {**summary("log_likelihood"),
                           "num_samples": ll_samples},
        "kl": summary("kl"),
        # The first stochastic layer's; "layers" has every layer's, first
        # to top (one for a one-layer VAE).
        **layers[0],
        "layers": layers,
    }
