"""Inputs and comparisons shared by the tests of the op and its kernels."""

import numpy as np


def params(shape, dtype=np.float64, seed=0):
    """`(mean, log_var)`: NumPy arrays of `dtype`, uniform in [-2, 2]."""
    rng = np.random.default_rng(seed)
    mean = rng.uniform(-2.0, 2.0, size=shape).astype(dtype)
    log_var = rng.uniform(-2.0, 2.0, size=shape).astype(dtype)
    return mean, log_var


def assert_close(actual, expected, rtol, name):
    """Relative to the largest expected magnitude (sums of many terms)."""
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(
        actual, expected, rtol=rtol, atol=rtol * scale, err_msg=name
    )
