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


def gradient(fn, x):
    """d fn(x) / dx as NumPy, by the active Keras backend's autodiff.

    Args:
        fn: maps a tensor of the active backend to a scalar tensor.
        x: NumPy array, the point of differentiation.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        return tape.gradient(value, x).numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(fn)(jax.numpy.asarray(x)))
    import torch

    x = torch.tensor(x, requires_grad=True)
    fn(x).backward()
    return x.grad.numpy()


def variable_gradient(fn, variable):
    """d fn() / d variable as NumPy, by the active Keras backend's autodiff.

    Args:
        fn: takes no arguments and returns a scalar tensor computed from
            `variable` (a `keras.Variable`).
        variable: the `keras.Variable` to differentiate against.
    """
    import keras

    def with_value(value):
        # Stateless: the variable reads `value` inside fn.
        with keras.StatelessScope(state_mapping=[(variable, value)]):
            return fn()

    return gradient(with_value, keras.ops.convert_to_numpy(variable))
