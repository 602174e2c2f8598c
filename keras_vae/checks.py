"""Argument checks at the edge: counts and the op's implementation.

Inner code trusts its inputs; these run where users pass arguments (layer
and model constructors, the model's methods).
"""

from __future__ import annotations

import numbers

# The VAE's choices, here so that the command line lists them without
# importing a framework.
OBJECTIVES = ("elbo", "iwae")
GRADIENT_ESTIMATORS = ("standard", "stl", "dreg")
KL_ESTIMATORS = ("analytic", "mc")
# The op's implementations (`keras_vae.ops.reparameterize_kl`).
IMPLEMENTATIONS = ("auto", "fused", "reference")
# The most samples of z per example that a model decodes at once: a
# training step's K, and `elbo`'s, `iwae_bound`'s and `reconstruct`'s.
# (`log_likelihood` draws any number, in chunks.)
MAX_SAMPLES_AT_ONCE = 2**16


def check_count(
    value, name: str = "num_samples", allow_none: bool = False,
    maximum=None, why: str = "",
):
    """`value` as a Python int >= 1 (or None when allowed).

    Python and NumPy integers are accepted; bools, floats (even 5.0),
    anything below 1 and anything above `maximum` (when given; `why` says
    why in the message) raise a ValueError naming `name`.
    """
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 1
    ):
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(
            f"{name} must be <= {maximum}{why}, got {value!r}"
        )
    return int(value)


def check_samples_at_once(num_samples):
    """A model's `num_samples` that are decoded at once: an int in
    [1, MAX_SAMPLES_AT_ONCE]."""
    return check_count(
        num_samples, maximum=MAX_SAMPLES_AT_ONCE,
        why=" (the samples of every example are decoded at once; "
        "log_likelihood draws more, in chunks)",
    )


def check_objective(objective, gradient_estimator, kl, free_bits):
    """The VAE's training objective: one valid cell of the grid of
    objective x gradient estimator x KL estimator x free bits.

    Returns:
        `free_bits` as a float.
    """
    if objective not in OBJECTIVES:
        raise ValueError(
            f"objective must be one of {OBJECTIVES}, got {objective!r}"
        )
    if gradient_estimator not in GRADIENT_ESTIMATORS:
        raise ValueError(
            f"gradient_estimator must be one of {GRADIENT_ESTIMATORS}, "
            f"got {gradient_estimator!r}"
        )
    if gradient_estimator == "dreg" and objective != "iwae":
        raise ValueError(
            'gradient_estimator="dreg" needs objective="iwae", got '
            f"objective={objective!r}"
        )
    if kl not in KL_ESTIMATORS:
        raise ValueError(f"kl must be one of {KL_ESTIMATORS}, got {kl!r}")
    if not float(free_bits) >= 0.0:
        raise ValueError(f"free_bits must be >= 0, got {free_bits!r}")
    free_bits = float(free_bits)
    if free_bits > 0.0 and (
        objective != "elbo" or kl != "analytic" or gradient_estimator != "standard"
    ):
        raise ValueError(
            "free_bits needs objective='elbo', kl='analytic' and "
            "gradient_estimator='standard', got objective="
            f"{objective!r}, kl={kl!r}, "
            f"gradient_estimator={gradient_estimator!r}"
        )
    return free_bits


def check_implementation(implementation: str) -> str:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {IMPLEMENTATIONS}, got "
            f"{implementation!r}"
        )
    return implementation
