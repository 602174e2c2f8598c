"""The fused reparameterize-and-KL op, on every Keras backend.

One call draws ``z = mean + exp(0.5 * log_var) * eps`` for ``num_samples``
samples per input, and returns with it the analytic KL to N(0, I) and the
per-sample ``log q(z|x) - log p(z)``:

>>> z, kl, log_ratio = keras_vae.ops.reparameterize_kl(
...     mean, log_var, num_samples=5, seed=[1, 2])

Reproducibility contract: the noise ``eps`` equals
``tf.random.stateless_normal([num_samples, *mean.shape], seed=seed)`` as
TensorFlow computes it outside XLA (float64 for float64 inputs, float32
otherwise), on every backend and inside XLA-compiled functions: the same
kernels draw it everywhere. Only the pure reference, which runs where the
compiled libraries are missing, draws its backend's own numbers.

Where it runs (see `keras_vae.backend`):
- TensorFlow: a custom op, lowered to a typed-FFI custom call under XLA;
- JAX: the same typed-FFI handlers through `jax.ffi`, under `jax.jit` too;
- PyTorch: a `torch.library` custom op, under `torch.compile` too.
"""

import importlib
import warnings

import keras
from keras import ops

from keras_vae import seeding
from keras_vae.checks import IMPLEMENTATIONS
from keras_vae.checks import check_implementation
from keras_vae.backend._checks import check_num_samples

__all__ = [
    "reparameterize_kl",
    "reparameterize_kl_reference",
    "fused_available",
    "fused_xla_available",
    "build_info",
    "in_xla_context",
    "IMPLEMENTATIONS",
    "SUPPORTED_BACKENDS",
]

SUPPORTED_BACKENDS = ("tensorflow", "jax", "torch")
_warned_fallback = set()


_backend_modules = {}


def _backend():
    """The module that calls the kernels on the active Keras backend."""
    name = keras.backend.backend()
    module = _backend_modules.get(name)
    if module is None:
        if name not in SUPPORTED_BACKENDS:
            raise RuntimeError(
                f"keras_vae supports the Keras backends {SUPPORTED_BACKENDS}, "
                f"not {name!r}. Set KERAS_BACKEND to one of them."
            )
        # Imported once, outside any traced function: AutoGraph would
        # otherwise try to convert the import machinery, and warn.
        module = importlib.import_module(f"keras_vae.backend.{name}")
        _backend_modules[name] = module
    return module


def _on_tensorflow():
    return keras.backend.backend() == "tensorflow"


def fused_available():
    """Whether the compiled kernels can run on the active backend."""
    if _on_tensorflow():
        return _backend().fused_available()
    return _backend().available()[0]


def fused_xla_available():
    """Whether XLA-compiled code runs the compiled kernels: TensorFlow's
    lowerings are loaded, or, on JAX, the FFI handlers are."""
    if _on_tensorflow():
        return _backend().fused_xla_available()
    return keras.backend.backend() == "jax" and fused_available()


def in_xla_context():
    """Whether the TensorFlow graph being built will be compiled by XLA
    (always False on the other backends, which say so themselves)."""
    return _on_tensorflow() and _backend().in_xla_context()


def build_info():
    """What the compiled libraries were built with and what is loaded.

    Returns:
        A dict: ``"cpu"``, ``"cuda"``, ``"cuda_architectures"`` and
        ``"ffi_handlers"`` from the build; ``"backend"``, ``"loaded"`` (the
        kernels run on it) and ``"xla"`` (inside XLA too); ``"error"`` or
        ``"xla_error"`` say why not.
    """
    if _on_tensorflow():
        info = _backend().build_info()
    else:
        info = {"cpu": False, "cuda": False, "cuda_architectures": ""}
        try:
            from keras_vae import _kernels

            info.update(_kernels.build_info())
            info["ffi_handlers"] = bool(_kernels.has_ffi_handlers)
        except ImportError:
            pass
        ok, reason = _backend().available()
        info["loaded"] = ok
        info["xla"] = fused_xla_available()
        if reason:
            info["error"] = reason
    info["backend"] = keras.backend.backend()
    return info


def reparameterize_kl(
    mean,
    log_var,
    num_samples=1,
    seed=None,
    stop_log_ratio_param_grad=False,
    implementation="auto",
    name=None,
):
    """Reparameterized samples of N(mean, exp(log_var)), KL and log-ratio.

    Args:
        mean: float tensor `[..., D]` (float16, bfloat16, float32 or float64)
            of the active backend. Half types are computed in float32 and
            returned in their dtype.
        log_var: tensor of the shape and dtype of `mean`.
        num_samples: K, the samples drawn per input: an int >= 1 (on
            TensorFlow also an int32 scalar tensor, a compile-time constant
            inside XLA, since it sets the shape of `z`).
        seed: an int `s` (standing for `[s, 0]`), a pair of ints, or a
            shape-`[2]` int32/int64 tensor; see `keras_vae.seeding`. The op
            is stateless: the same seed gives the same outputs. `None`
            draws one from the backend's global generator (eager only).
        stop_log_ratio_param_grad: stop the gradient through `mean` and
            `log_var` inside `log_ratio`'s log q term while keeping the path
            through `z`: the "sticking the landing" and DReG estimators.
        implementation: `"fused"` (the compiled kernels, inside XLA too),
            `"reference"` (pure framework code), or `"auto"`: fused wherever
            the compiled libraries are loaded, the reference elsewhere (with
            one warning).
        name: optional name scope (TensorFlow).

    Returns:
        `(z, kl, log_ratio)`:
        - `z`: `[K, ..., D]`, `mean + exp(0.5 * log_var) * eps`;
        - `kl`: `[...]`, `0.5 * sum_D(exp(lv) + mean**2 - 1 - lv)`;
        - `log_ratio`: `[K, ...]`, `log q(z|x) - log p(z)`, summed over D.
    """
    backend = _backend()
    check_implementation(implementation)
    if seed is not None and not ops.is_tensor(seed):
        # The seed forms of `keras_vae.seeding`: an int s is [s, 0].
        seed = seeding.seed_pair(seed)
    if not (_on_tensorflow() and ops.is_tensor(num_samples)):
        # Python ints are checked here, in the same words on every backend;
        # TensorFlow's op checks its int32 tensors itself.
        num_samples = check_num_samples(num_samples)
    if _on_tensorflow():
        return backend.reparameterize_kl(
            mean, log_var, num_samples, seed, stop_log_ratio_param_grad,
            implementation, name,
        )
    # NumPy arrays (and lists) become the backend's tensors, as in keras.ops.
    mean, log_var = ops.convert_to_tensor(mean), ops.convert_to_tensor(log_var)
    seed = _seed_pair(seed)
    if implementation != "reference":
        ok, reason = backend.available()
        if ok:
            return backend.reparameterize_kl(
                mean, log_var, num_samples, seed, stop_log_ratio_param_grad
            )
        if implementation == "fused":
            raise RuntimeError(f"keras_vae: the fused kernels cannot run: {reason}")
        if keras.backend.backend() not in _warned_fallback:
            _warned_fallback.add(keras.backend.backend())
            warnings.warn(
                "keras_vae: the compiled kernels cannot run, so the pure "
                f"reference implementation is used: {reason}",
                RuntimeWarning,
                stacklevel=2,
            )
    return reparameterize_kl_reference(
        mean, log_var, num_samples, seed, stop_log_ratio_param_grad
    )


def _seed_pair(seed):
    """A seed of any accepted form as a [2] tensor of the active backend."""
    if seed is None:
        return keras.random.randint((2,), 0, 2**31 - 1, dtype="int32")
    return seed


def reparameterize_kl_reference(
    mean, log_var, num_samples, seed, stop_log_ratio_param_grad=False
):
    """The op's semantics in plain framework code: the oracle of the tests
    and the fallback where the compiled libraries are missing.

    On TensorFlow the noise is `stateless_normal`'s (XLA's own inside XLA);
    on JAX and PyTorch it is their generators', keyed by the seed.
    """
    if _on_tensorflow():
        return _backend().reparameterize_kl_reference(
            mean, log_var, num_samples, seed, stop_log_ratio_param_grad
        )
    mean = ops.convert_to_tensor(mean)
    log_var = ops.convert_to_tensor(log_var)
    dtype = keras.backend.standardize_dtype(mean.dtype)
    compute = "float64" if dtype == "float64" else "float32"
    mu, lv = ops.cast(mean, compute), ops.cast(log_var, compute)
    eps = _backend().reference_normal(
        (num_samples, *ops.shape(mu)), seed, compute
    )
    std = ops.exp(0.5 * lv)
    z = mu + std * eps
    kl = 0.5 * ops.sum(ops.exp(lv) + ops.square(mu) - 1.0 - lv, axis=-1)
    if stop_log_ratio_param_grad:
        # log q(z | stopped parameters): the path through z alone.
        mu_q, lv_q = ops.stop_gradient(mu), ops.stop_gradient(lv)
        eps_q = (z - mu_q) * ops.exp(-0.5 * lv_q)
    else:
        lv_q, eps_q = lv, eps
    log_ratio = 0.5 * ops.sum(ops.square(z) - ops.square(eps_q) - lv_q, axis=-1)
    return tuple(ops.cast(t, dtype) for t in (z, kl, log_ratio))


if keras.backend.backend() not in SUPPORTED_BACKENDS:
    raise ImportError(
        f"keras_vae supports the Keras backends {SUPPORTED_BACKENDS}, not "
        f"{keras.backend.backend()!r}. Set KERAS_BACKEND to one of them."
    )
# On TensorFlow the op library loads with this module: graphs and
# SavedModels that hold the op need it registered before they load.
if keras.backend.backend() == "tensorflow":
    _backend()
