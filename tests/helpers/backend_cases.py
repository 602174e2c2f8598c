"""What the tests of the JAX and PyTorch bindings share: inputs, upstream
gradients, the TF op's outputs and gradients as the bit-for-bit oracle, and a
formula of the outputs given eps as the independent one."""

import numpy as np
import tensorflow as tf

from keras_vae import ops

DTYPES = ["float16", "bfloat16", "float32", "float64"]
SHAPES = [[7], [3, 5], [2, 3, 9]]


def params(shape, dtype, seed=0):
    """mean and log_var, TF tensors uniform in [-2, 2]."""
    rng = np.random.default_rng(seed)
    return (
        tf.constant(rng.uniform(-2, 2, size=shape), dtype),
        tf.constant(rng.uniform(-2, 2, size=shape), dtype),
    )


def cotangents(mean, num_samples, seed=3):
    """Upstream gradients of (z, kl, log_ratio) for mean's shape and dtype."""
    rng = np.random.default_rng(seed)
    shape, dtype = mean.shape.as_list(), mean.dtype
    return [
        tf.constant(rng.normal(size=s), dtype)
        for s in ([num_samples, *shape], shape[:-1], [num_samples, *shape[:-1]])
    ]


def tf_outputs_and_grads(mean, log_var, num_samples, seed, stop, upstream):
    """The TF op's (z, kl, log_ratio) and its vjp of `upstream`."""
    with tf.GradientTape() as tape:
        tape.watch([mean, log_var])
        outputs = ops.reparameterize_kl(
            mean, log_var, num_samples, tf.constant(seed, tf.int64), stop,
            implementation="fused",
        )
    grads = tape.gradient(outputs, [mean, log_var], output_gradients=upstream)
    return outputs, grads


def formula(xp, stop_gradient, mean, log_var, eps, stop):
    """z, kl and log_ratio of eps in the array namespace `xp` (jnp, torch):
    no kernel, no TensorFlow."""
    z = mean + xp.exp(0.5 * log_var) * eps
    kl = 0.5 * xp.sum(xp.exp(log_var) + mean**2 - 1.0 - log_var, axis=-1)
    if stop:
        # log q(z | mean, log_var stopped) - log p(z): its path through z only.
        m, lv = stop_gradient(mean), stop_gradient(log_var)
        log_q = -0.5 * xp.sum((z - m) ** 2 / xp.exp(lv) + lv, axis=-1)
    else:
        log_q = -0.5 * xp.sum(eps**2 + log_var, axis=-1)
    return z, kl, log_q + 0.5 * xp.sum(z**2, axis=-1)


def assert_standard_normal_sample(eps):
    """eps (a NumPy array) looks drawn, not a constant or a copy."""
    assert abs(float(eps.mean())) < 0.5 and 0.5 < float(eps.std()) < 1.5
    assert len(np.unique(eps)) == eps.size
