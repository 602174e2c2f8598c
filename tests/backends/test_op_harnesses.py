"""The fused op under each framework's own checker, on the active backend.

`make test` runs this directory under KERAS_BACKEND=tensorflow, jax and
torch; each test here is about one framework's registration of the op and
runs on that backend only (it says so):

- PyTorch: `torch.library.opcheck` on both custom ops, for every dtype the
  raw ops take (float16, bfloat16, float32, float64): schema, fake (meta)
  kernel against the real one, autograd registration, AOT dispatch.
- JAX: `jax.test_util.check_grads` on the op's custom VJP against numerical
  differences.
- TensorFlow: `tf.test.compute_gradient`, the registered gradient's
  Jacobian against the numerical one.
"""

import keras
import numpy as np
import pytest

import keras_vae

BACKEND = keras.backend.backend()
DTYPES = ("float16", "bfloat16", "float32", "float64")


def on(backend):
    return pytest.mark.skipif(BACKEND != backend,
                              reason=f"{backend}'s registration of the op")


def parameters(shape=(3, 4), dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(shape)
    log_var = 0.5 * rng.standard_normal(shape)
    return mean.astype(dtype), log_var.astype(dtype)


@on("torch")
@pytest.mark.parametrize("stop", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_forward_and_gradient_ops(dtype, stop):
    import torch

    from keras_vae.backend import torch as torch_backend

    torch_dtype = getattr(torch, dtype)
    mean, log_var = (torch.tensor(a, dtype=torch.float32).to(torch_dtype)
                     for a in parameters())
    mean.requires_grad_(True)
    log_var.requires_grad_(True)
    seed = torch.tensor([7, 11], dtype=torch.int64)
    torch.library.opcheck(
        torch.ops.keras_vae.reparameterize_kl.default,
        (mean, log_var, seed, 5, stop),
    )
    grads = [torch.ones((5, 3, 4), dtype=torch_dtype),
             torch.ones((3,), dtype=torch_dtype),
             torch.ones((5, 3), dtype=torch_dtype)]
    torch.library.opcheck(
        torch.ops.keras_vae.reparameterize_kl_grad.default,
        (mean.detach(), log_var.detach(), seed, *grads, stop),
    )
    # The real kernels give the dtype the fake ones say.
    outputs = torch_backend._forward(mean, log_var, seed, 5, stop)
    assert [t.dtype for t in outputs] == [torch_dtype] * 3


@on("torch")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_values_are_the_float32_ones_rounded_once(dtype):
    """16-bit inputs are computed in float32 and rounded once, as on
    TensorFlow: the float32 op on the same (rounded) inputs, rounded."""
    import torch

    torch_dtype = getattr(torch, dtype)
    mean, log_var = (torch.tensor(a, dtype=torch.float32).to(torch_dtype)
                     for a in parameters())
    low = keras_vae.ops.reparameterize_kl(mean, log_var, 3, seed=[1, 2])
    wide = keras_vae.ops.reparameterize_kl(mean.float(), log_var.float(), 3,
                                           seed=[1, 2])
    for a, b in zip(low, wide):
        assert a.dtype == torch_dtype
        torch.testing.assert_close(a, b.to(torch_dtype), atol=0, rtol=0)


@on("jax")
@pytest.mark.parametrize("stop", [False, True])
def test_jax_check_grads(stop):
    import jax
    import jax.numpy as jnp
    from jax.test_util import check_grads

    jax.config.update("jax_enable_x64", True)
    try:
        mean, log_var = (jnp.asarray(a) for a in parameters())
        seed = jnp.asarray([3, 4], dtype=jnp.int64)

        def op(mean, log_var):
            z, kl, log_ratio = keras_vae.ops.reparameterize_kl(
                mean, log_var, num_samples=4, seed=seed,
                stop_log_ratio_param_grad=stop, implementation="fused")
            # With the stop, log_ratio's gradient is by design not its
            # derivative (the path through z alone): z and kl are checked.
            return (z, kl) if stop else (z, kl, log_ratio)

        # The op's custom VJP against numerical differences (reverse mode:
        # custom VJPs have no forward mode).
        check_grads(op, (mean, log_var), order=1, modes=["rev"],
                    atol=1e-5, rtol=1e-5)
    finally:
        jax.config.update("jax_enable_x64", False)


@on("tensorflow")
@pytest.mark.parametrize("stop", [False, True])
def test_tf_compute_gradient(stop):
    """TensorFlow-only: the op's registered gradient, Jacobian against the
    numerical one."""
    import tensorflow as tf

    mean, log_var = (tf.constant(a) for a in parameters())

    # With the stop, log_ratio's gradient is by design not its derivative
    # (the path through z alone): z and kl are checked.
    for output in range(2 if stop else 3):
        def op(mean, log_var, output=output):
            return keras_vae.ops.reparameterize_kl(
                mean, log_var, num_samples=4, seed=[3, 4],
                stop_log_ratio_param_grad=stop, implementation="fused",
            )[output]

        theoretical, numerical = tf.test.compute_gradient(
            op, [mean, log_var], delta=1e-6)
        for t, n in zip(theoretical, numerical):
            np.testing.assert_allclose(t, n, atol=1e-6, rtol=1e-6)
