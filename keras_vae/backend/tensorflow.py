"""The fused op on TensorFlow: loader, wrapper, gradient, reference.

`keras_vae.ops.reparameterize_kl` dispatches here on the TensorFlow backend.

One call draws ``z = mean + exp(0.5 * log_var) * eps`` for ``num_samples``
samples per input, and returns with it the analytic KL to N(0, I) and the
per-sample ``log q(z|x) - log p(z)``:

>>> z, kl, log_ratio = keras_vae.ops.reparameterize_kl(
...     mean, log_var, num_samples=5, seed=[1, 2])

Reproducibility contract: the noise ``eps`` equals
``tf.random.stateless_normal([num_samples, *mean.shape], seed=seed)`` (in
float64 for float64 inputs, float32 otherwise), inside XLA-compiled functions
too: there the op lowers to a typed-FFI custom call to the same kernels.
Only the pure-TensorFlow reference, which runs where the compiled libraries
are missing, draws XLA's own numbers under XLA.
"""

import importlib.machinery
import json
import os
import warnings

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import control_flow_util

__all__ = [
    "reparameterize_kl",
    "reparameterize_kl_reference",
    "fused_available",
    "fused_xla_available",
    "build_info",
]

_FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LIBRARY_STEM = "_reparam_kl_ops"
_XLA_LIBRARY_STEM = "_reparam_kl_xla"
_BUILD_CONFIG = "_build_config.json"
_REBUILD_HINT = (
    "Rebuild it with `make build` in a source checkout, or "
    "`pip install --no-build-isolation .` with TensorFlow installed."
)


def _library_path(stem):
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(_PACKAGE_DIR, stem + suffix)
        if os.path.exists(path):
            return path
    return None


def _minor_version(version):
    return tuple(version.split(".")[:2])


def _version_mismatch():
    """Why the libraries were built for another TensorFlow, or None.

    The build records the TensorFlow it compiled against; a library built
    for another minor version may load and then crash (TensorFlow's C++ ABI
    changes between minor versions), so it is not loaded.
    """
    try:
        with open(os.path.join(_PACKAGE_DIR, _BUILD_CONFIG)) as f:
            built_for = json.load(f)["tensorflow"]
    except (OSError, ValueError, KeyError):
        return None
    if _minor_version(built_for) != _minor_version(tf.__version__):
        return (
            f"The compiled op was built against TensorFlow {built_for}, but "
            f"TensorFlow {tf.__version__} is installed. Install TensorFlow "
            f"{'.'.join(_minor_version(built_for))}.* (pip install "
            '"keras-vae[tensorflow]"), or build keras-vae from source against '
            "yours."
        )
    return None


def _load(stem):
    """Loads one op library from this package's directory, and only there."""
    path = _library_path(stem)
    if path is None:
        return None, f"{stem}*.so was not found in {_PACKAGE_DIR}."
    try:
        return tf.load_op_library(path), None
    except (tf.errors.NotFoundError, OSError) as e:
        return None, f"{path} could not be loaded: {e}"


def _load_libraries():
    """The op library and, loaded after it, its XLA lowerings."""
    mismatch = _version_mismatch()
    if mismatch:
        return None, mismatch, None, mismatch
    library, error = _load(_LIBRARY_STEM)
    if library is None:
        return None, error, None, error
    xla_library, xla_error = _load(_XLA_LIBRARY_STEM)
    return library, None, xla_library, xla_error


_library, _load_error, _xla_library, _xla_load_error = _load_libraries()
_warned_fallback = False
_warned_xla_fallback = False


def fused_available():
    """Whether the compiled op library is loaded."""
    return _library is not None


def fused_xla_available():
    """Whether the op's XLA lowerings are loaded, so that XLA-compiled
    functions run the compiled kernels too."""
    return _xla_library is not None


def build_info():
    """What the compiled library was built with.

    Returns:
        A dict with ``"cpu"``, ``"cuda"`` (bools), ``"cuda_architectures"``,
        ``"loaded"`` and ``"xla"`` (the XLA lowerings loaded); ``"error"``
        (``"xla_error"``) says why when the library (the lowerings) did not
        load.
    """
    info = {"cpu": False, "cuda": False, "cuda_architectures": ""}
    try:
        from keras_vae import _kernels

        info.update(_kernels.build_info())
        info["ffi_handlers"] = bool(getattr(_kernels, "has_ffi_handlers", False))
    except ImportError:
        pass
    info["loaded"] = fused_available()
    info["xla"] = fused_xla_available()
    if _load_error:
        info["error"] = _load_error
    elif _xla_load_error:
        info["xla_error"] = _xla_load_error
    return info


def _warn_fallback_once():
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "keras_vae: the fused op library is not loaded, so the pure "
            f"TensorFlow reference implementation is used. {_load_error} "
            f"{_REBUILD_HINT}",
            RuntimeWarning,
            stacklevel=3,
        )


def _warn_xla_fallback_once(reason):
    global _warned_xla_fallback
    if not _warned_xla_fallback:
        _warned_xla_fallback = True
        warnings.warn(
            "keras_vae: inside XLA-compiled functions the pure TensorFlow "
            f"reference implementation runs, with XLA's own noise: {reason}",
            RuntimeWarning,
            stacklevel=3,
        )


def _xla_unavailable_reason():
    """Why the compiled kernels cannot run inside XLA here, or None."""
    if not fused_available():
        return None  # the general fallback warning says it
    if not fused_xla_available():
        return f"the op's XLA lowerings are not loaded. {_xla_load_error}"
    if tf.config.list_physical_devices("GPU") and not build_info()["cuda"]:
        return "this build has no CUDA kernels to lower to on the GPU."
    return None


def in_xla_context():
    """Whether the graph being built will be compiled by XLA."""
    return control_flow_util.GraphOrParentsInXlaContext(
        tf_ops.get_default_graph()
    )


def _compute_dtype(dtype):
    return tf.float64 if dtype == tf.float64 else tf.float32


def _num_samples_tensor(num_samples):
    """num_samples as the int32 tensor the op takes, without silent wrap."""
    num_samples = tf.convert_to_tensor(num_samples, dtype_hint=tf.int32)
    if not num_samples.dtype.is_integer:
        raise ValueError(
            f"num_samples must be an integer, got {num_samples.dtype.name}"
        )
    static = tf.get_static_value(num_samples)
    if static is not None and np.any(static > tf.int32.max):
        raise ValueError(f"num_samples must fit in int32, got {static}")
    return tf.cast(num_samples, tf.int32)


def _run_time_checks(mean, log_var, num_samples, seed):
    """Asserts what unknown static shapes left undecided (graph mode)."""
    checks = []
    if not seed.shape.is_fully_defined():
        is_pair = tf.logical_and(
            tf.equal(tf.rank(seed), 1), tf.equal(tf.size(seed), 2)
        )
        checks.append(
            tf.debugging.Assert(
                is_pair, ["seed must have shape [2], got", tf.shape(seed)]
            )
        )
    if mean.shape.rank is None:
        checks.append(
            tf.debugging.assert_rank_at_least(
                mean, 1, message="mean must have rank >= 1 ([..., D])"
            )
        )
    if not (mean.shape.is_fully_defined() and log_var.shape.is_fully_defined()):
        mean_shape, log_var_shape = tf.shape(mean), tf.shape(log_var)
        same_shape = tf.cond(
            tf.equal(tf.size(mean_shape), tf.size(log_var_shape)),
            lambda: tf.reduce_all(tf.equal(mean_shape, log_var_shape)),
            lambda: tf.constant(False),
        )
        checks.append(
            tf.debugging.Assert(
                same_shape,
                ["mean and log_var must have the same shape, got mean",
                 mean_shape, "and log_var", log_var_shape],
            )
        )
    if tf.get_static_value(num_samples) is None:
        if num_samples.shape.rank is None:
            checks.append(
                tf.debugging.assert_rank(
                    num_samples, 0, message="num_samples must be a scalar"
                )
            )
        checks.append(
            tf.debugging.assert_positive(
                num_samples, message="num_samples must be >= 1"
            )
        )
    return checks


def _check_args(mean, log_var, num_samples, seed):
    # `implementation` was checked at the edge, in keras_vae.ops.
    if mean.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            "mean must be float16, bfloat16, float32 or float64, got "
            f"{mean.dtype.name}"
        )
    if log_var.dtype != mean.dtype:
        raise ValueError(
            "log_var must have the dtype of mean, got mean "
            f"{mean.dtype.name} and log_var {log_var.dtype.name}"
        )
    if mean.shape.rank is not None and mean.shape.rank < 1:
        raise ValueError(
            f"mean must have rank >= 1 ([..., D]), got shape {mean.shape}"
        )
    if not mean.shape.is_compatible_with(log_var.shape):
        raise ValueError(
            "mean and log_var must have the same shape, got mean "
            f"{mean.shape} and log_var {log_var.shape}"
        )
    if num_samples.shape.rank is not None and num_samples.shape.rank != 0:
        raise ValueError(
            f"num_samples must be a scalar, got shape {num_samples.shape}"
        )
    static_num_samples = tf.get_static_value(num_samples)
    if static_num_samples is not None and static_num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {static_num_samples}")
    if seed.dtype not in (tf.int32, tf.int64):
        raise ValueError(f"seed must be int32 or int64, got {seed.dtype.name}")
    if seed.shape.rank is not None and seed.shape != (2,):
        raise ValueError(f"seed must have shape [2], got {seed.shape}")


def reparameterize_kl(
    mean,
    log_var,
    num_samples=1,
    seed=None,
    stop_log_ratio_param_grad=False,
    implementation="auto",
    name=None,
):
    """`keras_vae.ops.reparameterize_kl` on TensorFlow (see it for the
    arguments): the custom op, inside XLA its lowering, or the reference."""
    with tf.name_scope(name or "reparameterize_kl"):
        mean = tf.convert_to_tensor(mean)
        log_var = tf.convert_to_tensor(log_var)
        if seed is None:
            seed = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
        seed = tf.convert_to_tensor(seed)
        num_samples = _num_samples_tensor(num_samples)
        _check_args(mean, log_var, num_samples, seed)

        use_fused = implementation != "reference"
        if use_fused and in_xla_context():
            reason = _xla_unavailable_reason()
            if reason and implementation == "fused":
                raise ValueError(
                    'implementation="fused" cannot run in this XLA-compiled '
                    f"function (jit_compile=True): {reason} Use "
                    'implementation="auto" or "reference" there.'
                )
            if reason:
                _warn_xla_fallback_once(reason)
                use_fused = False
        if use_fused and not fused_available():
            if implementation == "fused":
                raise RuntimeError(
                    f"keras_vae: the fused op is not loaded. {_load_error} "
                    f"{_REBUILD_HINT}"
                )
            _warn_fallback_once()
            use_fused = False
        if use_fused:
            return tuple(
                _library.keras_vae_reparameterize_kl(
                    mean,
                    log_var,
                    seed,
                    num_samples,
                    stop_log_ratio_param_grad=stop_log_ratio_param_grad,
                )
            )
        return reparameterize_kl_reference(
            mean, log_var, num_samples, seed, stop_log_ratio_param_grad
        )


@tf.custom_gradient
def _zero_with_gradient(x, dfdx):
    """Zeros shaped like x whose gradient with respect to x is dfdx.

    A term of value exactly 0, even where x or dfdx is infinite, unlike
    dfdx * (x - stop_gradient(x)).
    """

    def grad(upstream):
        return upstream * dfdx, None

    return tf.zeros_like(x), grad


def reparameterize_kl_reference(
    mean, log_var, num_samples, seed, stop_log_ratio_param_grad=False
):
    """The op's semantics in plain TensorFlow (XLA-compatible, the oracle)."""
    dtype = mean.dtype
    compute = _compute_dtype(dtype)
    num_samples = _num_samples_tensor(num_samples)
    seed = tf.convert_to_tensor(seed)
    with tf.control_dependencies(
        _run_time_checks(mean, log_var, num_samples, seed)
    ):
        # identity: a cast to the same dtype is no op, and would not wait.
        mu = tf.identity(tf.cast(mean, compute))
        lv = tf.identity(tf.cast(log_var, compute))
        seed = tf.identity(seed)
        shape = tf.concat([[num_samples], tf.shape(mu)], axis=0)
    # Outside XLA, "philox" is what the default picks, so the numbers are
    # the same; inside XLA the default is ThreeFry, many times slower on CPU.
    eps = tf.random.stateless_normal(
        shape, seed=seed, dtype=compute, alg="philox"
    )
    std = tf.exp(0.5 * lv)
    z = mu + std * eps
    kl = 0.5 * tf.reduce_sum(tf.exp(lv) + tf.square(mu) - 1.0 - lv, axis=-1)
    # In eps-coordinates log q is -eps**2/2 - lv/2, and eps carries no
    # gradient: the value is the same with or without the stop option.
    lv_q = tf.stop_gradient(lv) if stop_log_ratio_param_grad else lv
    log_ratio = 0.5 * tf.reduce_sum(
        tf.square(z) - tf.square(eps) - lv_q, axis=-1
    )
    if stop_log_ratio_param_grad:
        # log q(z | stopped params) keeps its path through z, whose
        # derivative is -(z - mean) / std**2 = -eps / std.
        log_ratio += tf.reduce_sum(_zero_with_gradient(z, -eps / std), axis=-1)
    return tf.cast(z, dtype), tf.cast(kl, dtype), tf.cast(log_ratio, dtype)


if _library is not None:

    @tf.RegisterGradient("KerasVaeReparameterizeKl")
    def _reparameterize_kl_grad(op, grad_z, grad_kl, grad_log_ratio):
        """Regenerates eps from the seed; stores nothing of size K*N*D."""
        mean, log_var, seed, num_samples = op.inputs
        grads = [
            tf.zeros_like(out) if g is None else g
            for g, out in zip((grad_z, grad_kl, grad_log_ratio), op.outputs)
        ]
        grad_mean, grad_log_var = _library.keras_vae_reparameterize_kl_grad(
            mean,
            log_var,
            seed,
            num_samples,
            *grads,
            stop_log_ratio_param_grad=op.get_attr("stop_log_ratio_param_grad"),
        )
        return grad_mean, grad_log_var, None, None
