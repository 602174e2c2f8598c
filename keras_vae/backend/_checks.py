"""The argument checks every backend's wrapper shares, on plain Python values
(dtype names, shape tuples), so that each framework reports bad input in the
same words."""

import operator

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# The largest K: the kernels take the sample axis as an int32, as
# TensorFlow's op does.
MAX_NUM_SAMPLES = 2**31 - 1


def check_num_samples(num_samples):
    """num_samples as an int in [1, MAX_NUM_SAMPLES]; a static int, since it
    sets z's shape. Bools are refused (True is not a count)."""
    shape = getattr(num_samples, "shape", ())
    if len(shape):
        raise ValueError(
            f"num_samples must be a scalar int, got shape {list(shape)}"
        )
    try:
        k = operator.index(num_samples)
    except TypeError:
        raise TypeError(
            "num_samples must be a Python int (it sets the shape of z), got "
            f"{type(num_samples).__name__}"
        ) from None
    if isinstance(num_samples, bool) or k < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    if k > MAX_NUM_SAMPLES:
        raise ValueError(
            f"num_samples must be <= 2**31 - 1 = {MAX_NUM_SAMPLES} (the "
            f"kernels' int32 sample axis), got {k}"
        )
    return k


def check_params(mean_dtype, log_var_dtype, mean_shape, log_var_shape):
    """mean and log_var: one float dtype (by name), one shape of rank >= 1."""
    if mean_dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"mean must be float16, bfloat16, float32 or float64, got {mean_dtype}"
        )
    if log_var_dtype != mean_dtype:
        raise ValueError(
            f"log_var must have the dtype of mean, got mean {mean_dtype} and "
            f"log_var {log_var_dtype}"
        )
    if len(mean_shape) < 1:
        raise ValueError(
            f"mean must have rank >= 1 ([..., D]), got shape {list(mean_shape)}"
        )
    if tuple(log_var_shape) != tuple(mean_shape):
        raise ValueError(
            "mean and log_var must have the same shape, got mean "
            f"{list(mean_shape)} and log_var {list(log_var_shape)}"
        )


def check_seed(dtype, shape):
    """A seed tensor: int32 or int64 (by name), shape [2]."""
    if dtype not in ("int32", "int64"):
        raise ValueError(f"seed must be int32 or int64, got {dtype}")
    if tuple(shape) != (2,):
        raise ValueError(f"seed must have shape [2], got {list(shape)}")


def with_sample_axis(shape, num_samples):
    """[K, *shape]: the shape of z for mean's, of log_ratio for kl's."""
    return (num_samples, *shape)
