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


def check_count(value, name: str = "num_samples", allow_none: bool = False):
    """`value` as a Python int >= 1 (or None when allowed).

    Python and NumPy integers are accepted; bools, floats (even 5.0) and
    anything below 1 raise a ValueError naming `name`.
    """
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 1
    ):
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def check_implementation(implementation: str) -> str:
    from keras_vae.ops import IMPLEMENTATIONS

    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {IMPLEMENTATIONS}, got "
            f"{implementation!r}"
        )
    return implementation
