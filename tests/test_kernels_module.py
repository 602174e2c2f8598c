"""keras_vae._kernels (the kernels on NumPy arrays) against the TF op."""

import numpy as np
import pytest
import tensorflow as tf

from helpers.numerics import params
from keras_vae import ops

_kernels = pytest.importorskip("keras_vae._kernels")
pytestmark = [
    pytest.mark.backend_independent,
    pytest.mark.skipif(
        not ops.fused_available(), reason="the fused op library is not loaded"
    ),
]


def _as_uint64(seed):
    """The NumPy entry takes the seed words as uint64: s < 0 is s + 2**64."""
    return [s % 2**64 for s in seed]


SHAPES = [[7], [3, 5], [2, 3, 9], [4, 8]]
SEEDS = [[1, 2], [-5, 7], [-(2**63), 2**63 - 1], [2**40 + 1, -1]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_tf_op(dtype, shape):
    mean, log_var = params(shape, dtype)
    for seed in SEEDS:
        expected = ops.reparameterize_kl(
            mean, log_var, 3, tf.constant(seed, tf.int64),
            implementation="fused",
        )
        actual = _kernels.cpu_forward(mean, log_var, 3, *_as_uint64(seed))
        for name, a, e in zip(("z", "kl", "log_ratio"), actual, expected):
            assert a.dtype == dtype, name
            assert a.shape == tuple(e.shape), name
            np.testing.assert_array_equal(a, e.numpy(), err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stop", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_matches_tf_gradient(dtype, stop, shape):
    mean, log_var = params(shape, dtype, seed=1)
    seed, num_samples = [-3, 2**35], 2
    rng = np.random.default_rng(2)
    grad_z = rng.normal(size=[num_samples, *shape]).astype(dtype)
    grad_kl = rng.normal(size=shape[:-1]).astype(dtype)
    grad_log_ratio = rng.normal(size=[num_samples, *shape[:-1]]).astype(dtype)
    mean_t, log_var_t = tf.constant(mean), tf.constant(log_var)
    with tf.GradientTape() as tape:
        tape.watch([mean_t, log_var_t])
        outputs = ops.reparameterize_kl(
            mean_t, log_var_t, num_samples, tf.constant(seed, tf.int64),
            stop, implementation="fused",
        )
    expected = tape.gradient(
        outputs, [mean_t, log_var_t],
        output_gradients=[grad_z, grad_kl, grad_log_ratio],
    )
    actual = _kernels.cpu_backward(
        mean, log_var, num_samples, *_as_uint64(seed),
        grad_z, grad_kl, grad_log_ratio, stop,
    )
    for a, e in zip(actual, expected):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, e.numpy())


def test_float64_is_not_cast_down():
    mean, log_var = params([3, 4], np.float64)
    z, kl, log_ratio = _kernels.cpu_forward(mean, log_var, 2, 1, 2)
    assert z.dtype == kl.dtype == log_ratio.dtype == np.float64
    eps = tf.random.stateless_normal([2, 3, 4], [1, 2], dtype=tf.float64)
    np.testing.assert_allclose(
        (z - mean) / np.exp(0.5 * log_var), eps.numpy(), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(
    "args,message",
    [
        ((np.zeros([3, 4]), np.zeros([3, 5]), 1, 0, 0), "same shape"),
        ((np.float64(0), np.float64(0), 1, 0, 0), "mean must have rank"),
        ((np.zeros([3, 4]), np.zeros([3, 4]), 0, 0, 0), "num_samples"),
    ],
    ids=["shape-mismatch", "rank-0", "num_samples-0"],
)
def test_forward_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        _kernels.cpu_forward(*args)


def test_backward_bad_gradient_shape():
    mean = np.zeros([3, 4])
    with pytest.raises(ValueError, match="grad_z"):
        _kernels.cpu_backward(
            mean, mean, 2, 0, 0, np.zeros([2, 3, 3]), np.zeros([3]),
            np.zeros([2, 3]),
        )


def test_backward_checks_full_shapes_not_sizes():
    mean = np.zeros([3, 4])
    with pytest.raises(ValueError, match=r"grad_z must have shape \(2, 3, 4\), got \(2, 4, 3\)"):
        _kernels.cpu_backward(
            mean, mean, 2, 0, 0, np.zeros([2, 4, 3]), np.zeros([3]),
            np.zeros([2, 3]),
        )
    with pytest.raises(ValueError, match=r"grad_log_ratio must have shape \(2, 3\), got \(3, 2\)"):
        _kernels.cpu_backward(
            mean, mean, 2, 0, 0, np.zeros([2, 3, 4]), np.zeros([3]),
            np.zeros([3, 2]),
        )


def test_empty_last_axis_gives_zero_sums():
    """D == 0 keeps the rows: kl and log_ratio are empty sums, all zero."""
    z, kl, log_ratio = _kernels.cpu_forward(
        np.zeros([3, 0]), np.zeros([3, 0]), 2, 1, 2
    )
    assert z.shape == (2, 3, 0)
    np.testing.assert_array_equal(kl, np.zeros([3]))
    np.testing.assert_array_equal(log_ratio, np.zeros([2, 3]))


def test_build_info():
    info = _kernels.build_info()
    assert info["cpu"] is True
    assert isinstance(info["cuda"], bool)
    assert ops.build_info()["cpu"] is True
