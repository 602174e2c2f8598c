"""The fused reparameterize-and-KL op: loader, wrapper, gradient, reference.

One call draws ``z = mean + exp(0.5 * log_var) * eps`` for ``num_samples``
samples per input, and returns with it the analytic KL to N(0, I) and the
per-sample ``log q(z|x) - log p(z)``:

>>> z, kl, log_ratio = keras_vae.ops.reparameterize_kl(
...     mean, log_var, num_samples=5, seed=[1, 2])

Reproducibility contract: the noise ``eps`` equals
``tf.random.stateless_normal([num_samples, *mean.shape], seed=seed)`` (in
float64 for float64 inputs, float32 otherwise) outside XLA. Under XLA the
reference implementation runs, and XLA's own generator gives other numbers.
"""

import importlib.machinery
import os
import warnings

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import control_flow_util

from keras_vae import seeding

__all__ = [
    "reparameterize_kl",
    "reparameterize_kl_reference",
    "fused_available",
    "build_info",
    "IMPLEMENTATIONS",
]

IMPLEMENTATIONS = ("auto", "fused", "reference")
_FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_LIBRARY_STEM = "_reparam_kl_ops"
_REBUILD_HINT = (
    "Rebuild it with `make build` in a source checkout, or "
    "`pip install --no-build-isolation .` with TensorFlow installed."
)


def _load_library():
    """Loads the op library from this package's directory, and only there."""
    candidates = [
        os.path.join(_PACKAGE_DIR, _LIBRARY_STEM + suffix)
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    ]
    existing = [p for p in candidates if os.path.exists(p)]
    if not existing:
        return None, f"{_LIBRARY_STEM}*.so was not found in {_PACKAGE_DIR}."
    path = existing[0]
    try:
        return tf.load_op_library(path), None
    except (tf.errors.NotFoundError, OSError) as e:
        return None, f"{path} could not be loaded: {e}"


_library, _load_error = _load_library()
_warned_fallback = False


def fused_available():
    """Whether the compiled op library is loaded."""
    return _library is not None


def build_info():
    """What the compiled library was built with.

    Returns:
        A dict with ``"cpu"``, ``"cuda"`` (bools), ``"cuda_architectures"``
        and ``"loaded"``; ``"error"`` says why when the library is not loaded.
    """
    info = {"cpu": False, "cuda": False, "cuda_architectures": ""}
    try:
        from keras_vae import _kernels

        info.update(_kernels.build_info())
    except ImportError:
        pass
    info["loaded"] = fused_available()
    if _load_error:
        info["error"] = _load_error
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


def _check_args(mean, log_var, num_samples, seed, implementation):
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {IMPLEMENTATIONS}, "
            f"got {implementation!r}"
        )
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
    """Reparameterized samples of N(mean, exp(log_var)), KL and log-ratio.

    Args:
        mean: float tensor `[..., D]` (float16, bfloat16, float32 or float64).
            Half types are computed in float32 and returned in their dtype.
        log_var: tensor of the shape and dtype of `mean`.
        num_samples: K, the samples drawn per input; an int >= 1 or an
            int32 scalar tensor.
        seed: an int `s` (standing for `[s, 0]`), a pair of ints, or a
            shape-`[2]` int32/int64 tensor; see `keras_vae.seeding`. The op
            is stateless: the same seed gives the same outputs. `None`
            draws one from TensorFlow's global generator.
        stop_log_ratio_param_grad: stop the gradient through `mean` and
            `log_var` inside `log_ratio`'s log q term while keeping the path
            through `z`: the "sticking the landing" and DReG estimators.
        implementation: `"fused"` (the compiled op), `"reference"` (pure
            TensorFlow), or `"auto"`: fused unless XLA compiles the caller
            or the library is not loaded.
        name: optional name scope.

    Returns:
        `(z, kl, log_ratio)`:
        - `z`: `[K, ..., D]`, `mean + exp(0.5 * log_var) * eps`;
        - `kl`: `[...]`, `0.5 * sum_D(exp(lv) + mean**2 - 1 - lv)`;
        - `log_ratio`: `[K, ...]`, `log q(z|x) - log p(z)`, summed over D.
    """
    with tf.name_scope(name or "reparameterize_kl"):
        mean = tf.convert_to_tensor(mean)
        log_var = tf.convert_to_tensor(log_var)
        if seed is None:
            seed = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
        elif not isinstance(seed, (tf.Tensor, tf.Variable)):
            # The seed forms of `keras_vae.seeding`: an int s is [s, 0].
            seed = seeding.seed_pair(seed)
        seed = tf.convert_to_tensor(seed)
        num_samples = _num_samples_tensor(num_samples)
        _check_args(mean, log_var, num_samples, seed, implementation)

        in_xla = in_xla_context()
        if implementation == "fused" and in_xla:
            # Otherwise XLA fails later with "unsupported operations".
            raise ValueError(
                'implementation="fused" cannot run in an XLA-compiled '
                "function (jit_compile=True): the compiled op has no XLA "
                'kernel. Use implementation="auto" or "reference" there.'
            )
        use_fused = implementation == "fused" or (
            implementation == "auto" and not in_xla
        )
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
