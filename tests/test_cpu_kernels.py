"""Tests of the CPU kernels on each instruction set they dispatch to.

The float noise comes from a vector generator (AVX-512, AVX2+FMA) or the
portable scalar one, chosen at run time. Each available path is forced in
turn through ``keras_vae._kernels.set_cpu_isa`` and checked against
tf.random.stateless_normal and a float64 NumPy oracle of every formula, over
shapes that are no multiple of a Philox block (4 floats) or a vector (8, 16
blocks): D = 1, odd D, D past one noise chunk, rows that start inside a
Philox block.
"""

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from helpers.numerics import assert_close, params
from keras_vae import ops

pytestmark = pytest.mark.backend_independent

_kernels = pytest.importorskip("keras_vae._kernels")

ALL_ISAS = ("scalar", "avx2", "avx512")
SUPPORTED = tuple(_kernels.supported_cpu_isas())
VECTOR_ISAS = [isa for isa in SUPPORTED if isa != "scalar"]

# The vector log and sincos are polynomials, not the C library's: the noise
# contract is |eps - stateless_normal| <= 1e-5. The paths measure 4.8e-7 (one
# float ulp at |eps| in [4, 8)) over 1e7 draws; assert that, with margin.
VECTOR_EPS_TOL = 1e-6

# [K, N, D]: D = 1 and D of no vector width; N * D odd so that rows of
# k > 0 start inside a Philox block; D = 1100 spans two noise chunks.
SHAPES = [
    (1, 1, 1),
    (3, 5, 1),
    (2, 3, 3),
    (4, 7, 5),
    (2, 9, 17),
    (3, 4, 33),
    (2, 3, 63),
    (5, 6, 65),
    (2, 3, 1100),
    (50, 1, 3),
    (1, 130, 31),
]
SEEDS = [(0, 0), (7, 2**40 + 3), (2**62 + 11, 5)]


@contextlib.contextmanager
def _forced_isa(name):
    """Runs the block on one instruction set, then restores the previous."""
    previous = _kernels.cpu_isa()
    _kernels.set_cpu_isa(name)
    try:
        yield name
    finally:
        _kernels.set_cpu_isa(previous)


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    """Each test using it runs once per instruction set this CPU supports."""
    if request.param not in SUPPORTED:
        pytest.skip(f"{request.param} is not supported here ({SUPPORTED})")
    with _forced_isa(request.param):
        yield request.param


def _stateless_normal(shape, seed, dtype=tf.float32):
    return tf.random.stateless_normal(
        shape, tf.constant(seed, tf.int64), dtype=dtype
    ).numpy()


def _oracle(mean, log_var, eps, grads=None, stop=False):
    """Every output in float64 from the noise eps [K, N, D]."""
    mu, lv, eps = (np.asarray(a, np.float64) for a in (mean, log_var, eps))
    sd = np.exp(0.5 * lv)
    z = mu + sd * eps
    kl = 0.5 * np.sum(sd**2 + mu**2 - 1.0 - lv, axis=-1)
    log_ratio = 0.5 * np.sum(z**2 - eps**2 - lv, axis=-1)
    if grads is None:
        return z, kl, log_ratio
    g_z, g_kl, g_lr = (np.asarray(g, np.float64) for g in grads)
    g_lr = g_lr[..., None]
    d_lr_mu = z - eps / sd if stop else z
    d_lr_lv = 0.5 * eps**2 if stop else 0.5
    d_mu = g_kl[:, None] * mu + np.sum(g_z + g_lr * d_lr_mu, axis=0)
    d_lv = g_kl[:, None] * 0.5 * (sd**2 - 1.0) + np.sum(
        (g_z + g_lr * z) * 0.5 * sd * eps - g_lr * d_lr_lv, axis=0
    )
    return d_mu, d_lv


def test_default_is_the_widest_supported_isa():
    assert SUPPORTED[0] == "scalar"
    assert set(SUPPORTED) <= set(ALL_ISAS)
    if "KERAS_VAE_CPU_ISA" not in os.environ:
        assert _kernels.cpu_isa() == SUPPORTED[-1]


def test_set_cpu_isa_rejects_unknown_and_unsupported_names():
    with pytest.raises(ValueError, match="isa must be .* got 'sse9'"):
        _kernels.set_cpu_isa("sse9")
    unsupported = [isa for isa in ALL_ISAS if isa not in SUPPORTED]
    for name in unsupported:
        with pytest.raises(ValueError, match="not supported"):
            _kernels.set_cpu_isa(name)
    assert _kernels.cpu_isa() in SUPPORTED


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_noise_matches_stateless_normal(isa, shape):
    k, n, d = shape
    zeros = np.zeros((n, d), np.float32)
    for seed in SEEDS:
        # mean 0, log_var 0: z is eps itself.
        z, _, _ = _kernels.cpu_forward(zeros, zeros, k, *seed)
        want = _stateless_normal(shape, seed)
        if isa == "scalar":
            np.testing.assert_array_equal(z, want, err_msg=f"seed {seed}")
        else:
            np.testing.assert_allclose(
                z, want, rtol=0, atol=VECTOR_EPS_TOL, err_msg=f"seed {seed}"
            )


@pytest.mark.parametrize("isa_name", VECTOR_ISAS)
def test_vector_noise_error_over_ten_million_draws(isa_name):
    shape = (5, 2000, 1000)  # 1e7 draws, rows start inside blocks
    zeros = np.zeros(shape[1:], np.float32)
    with _forced_isa(isa_name):
        z, _, _ = _kernels.cpu_forward(zeros, zeros, shape[0], 123, 456)
    error = np.abs(z - _stateless_normal(shape, (123, 456)))
    assert error.max() <= VECTOR_EPS_TOL, error.max()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_oracle(isa, shape):
    k, n, d = shape
    mean, log_var = params((n, d), np.float32, seed=d)
    seed = (3, 4)
    got = _kernels.cpu_forward(mean, log_var, k, *seed)
    want = _oracle(mean, log_var, _stateless_normal(shape, seed))
    for name, got, expected in zip(("z", "kl", "log_ratio"), got, want):
        assert got.shape == expected.shape, name
        assert_close(got, expected, 2e-5, name)


@pytest.mark.parametrize("stop", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_matches_oracle(isa, shape, stop):
    k, n, d = shape
    mean, log_var = params((n, d), np.float32, seed=d + 1)
    rng = np.random.default_rng(k)
    grads = (
        rng.normal(size=shape).astype(np.float32),
        rng.normal(size=(n,)).astype(np.float32),
        rng.normal(size=(k, n)).astype(np.float32),
    )
    seed = (9, 2**33)
    d_mean, d_log_var = _kernels.cpu_backward(
        mean, log_var, k, *seed, *grads, stop
    )
    eps = _stateless_normal(shape, seed)
    want = _oracle(mean, log_var, eps, grads, stop)
    assert_close(d_mean, want[0], 2e-5, "grad_mean")
    assert_close(d_log_var, want[1], 2e-5, "grad_log_var")


@pytest.mark.parametrize("isa_name", VECTOR_ISAS)
@pytest.mark.parametrize("stop", [False, True])
def test_vector_paths_match_scalar_path(isa_name, stop):
    """Same outputs, to float rounding, on a shape of many chunks and shards."""
    k, n, d = 7, 301, 37
    mean, log_var = params((n, d), np.float32, seed=5)
    rng = np.random.default_rng(6)
    grads = (
        rng.normal(size=(k, n, d)).astype(np.float32),
        rng.normal(size=(n,)).astype(np.float32),
        rng.normal(size=(k, n)).astype(np.float32),
    )
    outputs = {}
    for name in ("scalar", isa_name):
        with _forced_isa(name):
            outputs[name] = _kernels.cpu_forward(
                mean, log_var, k, 1, 2
            ) + _kernels.cpu_backward(mean, log_var, k, 1, 2, *grads, stop)
    names = ("z", "kl", "log_ratio", "grad_mean", "grad_log_var")
    for name, got, want in zip(names, outputs[isa_name], outputs["scalar"]):
        assert_close(got, want, 1e-5, name)


def test_scales_of_extreme_log_variances(isa):
    """exp(0.5 * log_var) over the whole float range, infinities and NaN."""
    log_var = np.array(
        [-np.inf, -300, -200, -176, -100, -20, -1e-3, 0, 1e-3, 20, 100, 176,
         177.4, 178, 200, np.inf, np.nan],
        np.float32,
    )[None, :]
    zeros = np.zeros_like(log_var)
    k = 6
    eps, _, _ = _kernels.cpu_forward(zeros, zeros, k, 5, 6)
    z, _, _ = _kernels.cpu_forward(zeros, log_var, k, 5, 6)
    with np.errstate(over="ignore", invalid="ignore"):
        want = np.exp(0.5 * log_var.astype(np.float64)).astype(np.float32) * eps
    np.testing.assert_array_equal(np.isnan(z), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(z), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(z[finite], want[finite], rtol=1e-6, atol=1e-44)


def test_float64_noise_is_stateless_normal_on_every_isa(isa):
    """float64 stays on the scalar generator whatever the instruction set."""
    zeros = np.zeros((3, 7), np.float64)
    z, _, _ = _kernels.cpu_forward(zeros, zeros, 5, 8, 9)
    np.testing.assert_array_equal(
        z, _stateless_normal((5, 3, 7), (8, 9), tf.float64)
    )


def test_nan_stays_in_its_row(isa):
    mean, log_var = params((4, 9), np.float32, seed=0)
    mean[1, 3] = np.nan
    z, kl, log_ratio = _kernels.cpu_forward(mean, log_var, 3, 1, 1)
    assert np.isnan(z[:, 1, 3]).all() and np.isnan(log_ratio[:, 1]).all()
    assert np.isnan(kl[1])
    z[:, 1, 3] = 0.0
    assert np.isfinite(z).all()
    assert np.isfinite(np.delete(log_ratio, 1, axis=1)).all()
    assert np.isfinite(np.delete(kl, 1)).all()


def _run_with_isa_env(value, code):
    env = dict(os.environ, KERAS_VAE_CPU_ISA=value, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_environment_variable_caps_the_isa():
    # The extension alone, without the package (and TensorFlow) around it.
    code = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location("
        f"'keras_vae._kernels', {_kernels.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(module.cpu_isa())\n"
    )
    for name in SUPPORTED:
        assert _run_with_isa_env(name, code) == name
    # An unknown value leaves the default.
    assert _run_with_isa_env("none-such", code) == SUPPORTED[-1]


@pytest.mark.slow
@pytest.mark.skipif(not ops.fused_available(), reason="the op is not loaded")
def test_op_honours_the_environment_variable():
    """Forced onto the scalar generator, the op's float noise is bit-exact."""
    code = (
        "import numpy as np, tensorflow as tf\n"
        "from keras_vae import ops\n"
        "zeros = tf.zeros([5, 7])\n"
        "z, _, _ = ops.reparameterize_kl(zeros, zeros, 3, [1, 2],"
        " implementation='fused')\n"
        "eps = tf.random.stateless_normal([3, 5, 7], [1, 2])\n"
        "print(np.array_equal(z.numpy(), eps.numpy()))\n"
    )
    assert _run_with_isa_env("scalar", code) == "True"
