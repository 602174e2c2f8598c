"""The fused kernels on JAX: the typed-FFI handlers called with ``jax.ffi``.

The handlers are those TensorFlow's XLA runs (``csrc/xla/``), compiled into
``keras_vae._kernels`` against jaxlib's FFI headers and registered here once
per process, for the CPU and, in CUDA builds, for CUDA.

>>> z, kl, log_ratio = reparameterize_kl(mean, log_var, 5, jnp.array([1, 2]))

Noise contract: for the same inputs and seed the outputs equal those of
``keras_vae.ops.reparameterize_kl`` on TensorFlow bit for bit, since ``eps``
is ``tf.random.stateless_normal([K, *mean.shape], seed)`` drawn by the same
kernels.
"""

import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np

from keras_vae.backend._checks import (
    check_num_samples,
    check_params,
    check_seed,
    with_sample_axis,
)

__all__ = ["reparameterize_kl", "available", "register"]

_FORWARD = "keras_vae_reparameterize_kl"
_BACKWARD = "keras_vae_reparameterize_kl_grad"
_STOP_ATTR = "stop_log_ratio_param_grad"
# _kernels' platform keys -> the platform names of jax.ffi.register_ffi_target.
_JAX_PLATFORMS = {"cpu": "cpu", "cuda": "CUDA"}
# The kernels' default backends ('gpu' is CUDA here: no ROCm handlers).
_BACKENDS = {"cpu": "cpu", "cuda": "gpu"}
# Every output is used and the call has no side effect; under vmap each
# batch member is one call, so vmap(f)(x)[i] == f(x[i]) bit for bit (a
# batched call would draw other noise: eps depends on the whole shape).
_VMAP_METHOD = "sequential"

_lock = threading.Lock()
_platforms = None  # the platforms registered with XLA, once done


def register():
    """Registers the FFI targets with XLA (once); returns their platforms.

    Returns:
        A frozenset of ``_kernels``' platform names: ``"cpu"``, and
        ``"cuda"`` in CUDA builds.

    Raises:
        ImportError: ``keras_vae._kernels`` is not built.
        RuntimeError: it was built without the FFI handlers (jax was not
            importable at build time).
    """
    global _platforms
    with _lock:
        if _platforms is None:
            from keras_vae import _kernels

            handlers = _kernels.ffi_handlers()
            for target, by_platform in handlers.items():
                for platform, capsule in by_platform.items():
                    jax.ffi.register_ffi_target(
                        target, capsule, platform=_JAX_PLATFORMS[platform],
                        api_version=1,
                    )
            _platforms = frozenset(handlers[_FORWARD])
        return _platforms


def available():
    """Whether the fused kernels can run on JAX's default backend here.

    Returns:
        ``(True, None)``, or ``(False, reason)``.
    """
    try:
        platforms = register()
    except (ImportError, RuntimeError) as e:
        return False, str(e)
    backend = jax.default_backend()
    if backend not in {_BACKENDS[p] for p in platforms}:
        return False, (
            f"keras_vae._kernels has no FFI handlers for JAX's {backend!r} "
            f"backend (it has {sorted(platforms)})."
        )
    return True, None


def _seed(seed):
    """seed as an int32 or int64 [2] array, values checked when concrete."""
    if not isinstance(seed, jax.Array):
        words = np.asarray(seed)
        if words.dtype.kind not in "iu":
            raise ValueError(f"seed must hold integers, got {words.dtype}")
        # jnp.asarray would wrap an out-of-range word silently.
        wide = jax.config.jax_enable_x64
        limits = np.iinfo(np.int64 if wide else np.int32)
        if words.size and (words.min() < limits.min or words.max() > limits.max):
            raise ValueError(
                f"seed words must fit in {limits.dtype}"
                f"{'' if wide else ' (int64 needs jax_enable_x64)'}, "
                f"got {words.tolist()}"
            )
        seed = jnp.asarray(words, jnp.int64 if wide else jnp.int32)
    if seed.dtype == jnp.uint32:
        # Keras's seed generators hold uint32 words on JAX. Their bits are
        # taken as int32, then sign-extended like every int32 seed: a word
        # u >= 2**31 draws what TensorFlow draws from u - 2**32, and words
        # below 2**31 (every seed a SeedGenerator starts from an int below
        # 2**31, and its counter) draw the same as on the other backends.
        seed = jax.lax.bitcast_convert_type(seed, jnp.int32)
    check_seed(str(seed.dtype), seed.shape)
    return seed


def _forward_call(num_samples, mean, log_var, seed):
    shape, dtype = mean.shape, mean.dtype
    results = (
        jax.ShapeDtypeStruct(with_sample_axis(shape, num_samples), dtype),
        jax.ShapeDtypeStruct(shape[:-1], dtype),
        jax.ShapeDtypeStruct(with_sample_axis(shape[:-1], num_samples), dtype),
    )
    call = jax.ffi.ffi_call(_FORWARD, results, vmap_method=_VMAP_METHOD)
    return tuple(call(mean, log_var, seed))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _fused(mean, log_var, seed, num_samples, stop):
    return _forward_call(num_samples, mean, log_var, seed)


def _fused_fwd(mean, log_var, seed, num_samples, stop):
    # Stores the inputs only: the backward kernel regenerates eps.
    return _forward_call(num_samples, mean, log_var, seed), (mean, log_var, seed)


def _fused_bwd(num_samples, stop, residuals, cotangents):
    mean, log_var, seed = residuals
    grads = (jax.ShapeDtypeStruct(mean.shape, mean.dtype),) * 2
    call = jax.ffi.ffi_call(_BACKWARD, grads, vmap_method=_VMAP_METHOD)
    grad_mean, grad_log_var = call(
        mean, log_var, seed, *cotangents, **{_STOP_ATTR: stop}
    )
    return grad_mean, grad_log_var, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def reparameterize_kl(
    mean, log_var, num_samples, seed, stop_log_ratio_param_grad=False
):
    """Reparameterized samples of N(mean, exp(log_var)), KL and log-ratio.

    The fused kernels through ``jax.ffi``, differentiable (``jax.custom_vjp``:
    the backward kernel regenerates the noise from the seed), under
    ``jax.jit``, and under ``jax.vmap`` with ``vmap_method="sequential"``:
    the kernel runs once per batch member, so ``vmap(f)(x)[i]`` equals
    ``f(x[i])`` bit for bit, the same seed giving each member the same noise
    (vmap the seed too for independent noise).

    Args:
        mean: array ``[..., D]``: float16, bfloat16, float32 or float64
            (float64 needs ``jax_enable_x64``). 16-bit types are computed in
            float32 and rounded once, as on TensorFlow.
        log_var: array of the shape and dtype of ``mean``.
        num_samples: K, a Python int >= 1 (static: it sets the shape of z).
        seed: int32, uint32 (a Keras seed generator's) or int64 (with
            ``jax_enable_x64``) array of shape ``[2]``, or a pair of Python
            ints. uint32 words are read as the int32 of the same bits; words
            are sign-extended to 64 bits, so ``[-1, 2]`` in int32 (and
            ``[2**32 - 1, 2]`` in uint32) draws what TensorFlow draws from
            ``[-1, 2]`` in int64. It gets no gradient.
        stop_log_ratio_param_grad: a Python bool: stop the gradient through
            ``mean`` and ``log_var`` inside ``log_ratio``'s log q term, keeping
            the path through ``z`` (the STL and DReG estimators).

    Returns:
        ``(z, kl, log_ratio)`` in the dtype of ``mean``: ``z`` ``[K, ..., D]``,
        ``kl`` ``[...]``, ``log_ratio`` ``[K, ...]``, as
        ``keras_vae.ops.reparameterize_kl``.

    Raises:
        ValueError, TypeError: at trace time, naming the bad argument.
        ImportError, RuntimeError: the handlers are not built (see
            ``available()``).
    """
    mean, log_var = jnp.asarray(mean), jnp.asarray(log_var)
    check_params(str(mean.dtype), str(log_var.dtype), mean.shape, log_var.shape)
    num_samples = check_num_samples(num_samples)
    seed = _seed(seed)
    register()
    dtype = mean.dtype
    compute = jnp.float64 if dtype == jnp.float64 else jnp.float32
    outputs = _fused(
        mean.astype(compute), log_var.astype(compute), seed, num_samples,
        bool(stop_log_ratio_param_grad),
    )
    return tuple(x.astype(dtype) for x in outputs)


def reference_normal(shape, seed, dtype):
    """Standard normal noise for the reference implementation, from JAX's
    own generator keyed by the seed's words: not the kernels' stream."""
    key = jax.random.wrap_key_data(_seed(seed).astype(jnp.uint32)[:2])
    return jax.random.normal(key, shape, dtype)
