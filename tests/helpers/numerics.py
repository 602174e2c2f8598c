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
    _, (grad,) = outputs_and_gradients(lambda t: (fn(t), ()), x)
    return grad


def outputs_and_gradients(fn, *args):
    """Runs `fn` on `args` and differentiates its loss, by the active Keras
    backend's autodiff.

    Args:
        fn: maps tensors of the active backend, one per arg, to
            `(loss, outputs)`: a scalar tensor and a tuple of tensors.
        *args: NumPy arrays, the point of differentiation.

    Returns:
        `(outputs, grads)`: lists of NumPy arrays, `grads[i]` being
        d loss / d args[i].
    """
    import keras

    to_numpy = keras.ops.convert_to_numpy
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        args = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(args)
            loss, outputs = fn(*args)
        grads = tape.gradient(loss, args)
    elif backend == "jax":
        import jax

        (_, outputs), grads = jax.value_and_grad(
            fn, argnums=tuple(range(len(args))), has_aux=True
        )(*(jax.numpy.asarray(a) for a in args))
    else:
        import torch

        args = [torch.tensor(a, requires_grad=True) for a in args]
        loss, outputs = fn(*args)
        loss.backward()
        grads = [a.grad for a in args]
    return [to_numpy(t) for t in outputs], [to_numpy(g) for g in grads]


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
