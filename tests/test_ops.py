"""Tests of keras_vae.ops.reparameterize_kl against independent oracles.

The oracles: tf.random.stateless_normal for the noise, TensorFlow
Probability's Normal for the KL and the log-densities, tf.test's numerical
Jacobians and closed forms for the gradients, and scipy's KS test for the
distribution of z.
"""

import warnings

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
import tensorflow_probability as tfp

from helpers.numerics import params
from keras_vae import ops
from keras_vae.backend import tensorflow as tf_backend

# The JAX and PyTorch ops are pinned to this one in test_backend_jax.py and
# test_backend_torch.py.
pytestmark = pytest.mark.tensorflow_only("the TF op against its oracles")

tfd = tfp.distributions

requires_fused = pytest.mark.skipif(
    not ops.fused_available(),
    reason=f"the fused op library is not loaded: {ops.build_info()}",
)

# Fused and reference compute half types in float32 and round once at the
# end, so they agree to a few units in the last place of the output dtype.
DTYPE_TOLERANCE = {
    tf.float16: dict(rtol=2e-3, atol=2e-3),
    tf.bfloat16: dict(rtol=2e-2, atol=2e-2),
    tf.float32: dict(rtol=1e-5, atol=1e-5),
    tf.float64: dict(rtol=1e-12, atol=1e-12),
}


def _params(shape, dtype=tf.float64, seed=0):
    """`numerics.params` (in [-2, 2]) as tensors of `dtype`."""
    mean, log_var = params(shape, np.float64, seed)
    return tf.constant(mean, dtype), tf.constant(log_var, dtype)


def _both(mean, log_var, num_samples, seed, stop=False):
    """The fused and the reference outputs for the same arguments."""
    fused = ops.reparameterize_kl(
        mean, log_var, num_samples, seed, stop, implementation="fused"
    )
    reference = ops.reparameterize_kl(
        mean, log_var, num_samples, seed, stop, implementation="reference"
    )
    return fused, reference


def _assert_outputs_close(actual, expected, **tol):
    for name, a, e in zip(("z", "kl", "log_ratio"), actual, expected):
        assert a.shape == e.shape, name
        assert a.dtype == e.dtype, name
        np.testing.assert_allclose(
            tf.cast(a, tf.float64).numpy(),
            tf.cast(e, tf.float64).numpy(),
            err_msg=name,
            **tol,
        )


# ---------------------------------------------------------------------------
# The noise: eps equals tf.random.stateless_normal([K, ..., D], seed).

NOISE_SHAPES = [[1], [7], [5, 3], [4, 8], [2, 3, 7], [3, 1, 9]]
NOISE_SEEDS = [
    [0, 0],
    [1, 2],
    [-5, 7],
    [-1, -1],
    [2**31 - 1, -(2**31)],
    [2**40 + 3, -(2**62)],
    [2**63 - 1, -(2**63)],
]


@requires_fused
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("shape", NOISE_SHAPES, ids=str)
def test_noise_is_stateless_normal(dtype, shape):
    """The noise contract: equal to stateless_normal within 1e-5.

    float64 and the scalar float path run TensorFlow's own formulas and are
    bit-exact; the vector float paths use polynomial log/sincos (measured
    |delta| < 5e-7 over 1e7 draws in tests/test_cpu_kernels.py).
    """
    from keras_vae import _kernels

    exact = dtype == tf.float64 or _kernels.cpu_isa() == "scalar"
    zeros = tf.zeros(shape, dtype)
    for seed in NOISE_SEEDS:
        for seed_dtype in (tf.int32, tf.int64):
            if seed_dtype == tf.int32 and max(map(abs, seed)) > 2**31:
                continue
            seed_t = tf.constant(seed, seed_dtype)
            z, _, _ = ops.reparameterize_kl(
                zeros, zeros, 3, seed_t, implementation="fused"
            )
            eps = tf.random.stateless_normal([3, *shape], seed_t, dtype=dtype)
            # mean 0 and std 1: z is eps itself, with no rounding in between.
            np.testing.assert_allclose(
                z.numpy(),
                eps.numpy(),
                rtol=0,
                atol=0 if exact else 1e-5,
                err_msg=f"seed {seed} {seed_dtype}",
            )


@requires_fused
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("shape", NOISE_SHAPES, ids=str)
def test_noise_recovered_from_general_parameters(dtype, shape):
    mean, log_var = _params(shape, dtype, seed=len(shape))
    seed = tf.constant([-3, 2**33], tf.int64)
    z, _, _ = ops.reparameterize_kl(
        mean, log_var, 4, seed, implementation="fused"
    )
    recovered = (tf.cast(z, tf.float64) - tf.cast(mean, tf.float64)) / tf.exp(
        0.5 * tf.cast(log_var, tf.float64)
    )
    eps = tf.random.stateless_normal([4, *shape], seed, dtype=dtype)
    tol = 1e-5 if dtype == tf.float32 else 1e-12
    np.testing.assert_allclose(
        recovered.numpy(), tf.cast(eps, tf.float64).numpy(), rtol=0, atol=tol
    )


@requires_fused
def test_noise_of_half_types_is_float32_stateless_normal():
    seed = tf.constant([11, -12], tf.int64)
    eps = tf.random.stateless_normal([2, 3, 5], seed, dtype=tf.float32)
    for dtype in (tf.float16, tf.bfloat16):
        zeros = tf.zeros([3, 5], dtype)
        z, _, _ = ops.reparameterize_kl(
            zeros, zeros, 2, seed, implementation="fused"
        )
        np.testing.assert_array_equal(z.numpy(), tf.cast(eps, dtype).numpy())


# ---------------------------------------------------------------------------
# Distribution of z over 1e6 draws.


@requires_fused
def test_z_statistics_over_a_million_draws():
    mean = tf.constant([-1.5, 0.0, 0.7, 3.0], tf.float64)
    log_var = tf.constant([-2.0, 0.0, 1.0, 0.3], tf.float64)
    num_samples = 250_000  # 4 * 250k = 1e6 draws
    z, _, _ = ops.reparameterize_kl(
        mean, log_var, num_samples, [2024, 7], implementation="fused"
    )
    z = z.numpy()
    std = np.exp(0.5 * log_var.numpy())
    # Standardized with the true parameters: N(0, 1) iff z ~ N(mean, std^2).
    u = (z - mean.numpy()) / std
    # Five standard errors: a correct op fails once in ~3.5 million seeds, a
    # wrong scale (e.g. exp(lv) for the std) or shift misses by hundreds.
    se_mean = 1.0 / np.sqrt(num_samples)
    se_var = np.sqrt(2.0 / (num_samples - 1))
    np.testing.assert_array_less(np.abs(u.mean(axis=0)), 5 * se_mean)
    np.testing.assert_array_less(np.abs(u.var(axis=0, ddof=1) - 1), 5 * se_var)
    pooled = u.ravel()
    assert abs(pooled.mean()) < 5 / np.sqrt(pooled.size)
    assert abs(pooled.var(ddof=1) - 1) < 5 * np.sqrt(2.0 / pooled.size)
    # Kolmogorov-Smirnov: p < 1e-6 is a ~5 sigma event for a correct op.
    assert scipy.stats.kstest(pooled, "norm").pvalue > 1e-6
    # Independent columns: sample correlations within 5 standard errors.
    corr = np.corrcoef(u, rowvar=False)
    off_diagonal = corr[~np.eye(4, dtype=bool)]
    np.testing.assert_array_less(np.abs(off_diagonal), 5 * se_mean)


# ---------------------------------------------------------------------------
# kl and log_ratio against TensorFlow Probability.


@requires_fused
@pytest.mark.parametrize("shape", [[6], [4, 5], [2, 3, 4]], ids=str)
@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_kl_and_log_ratio_match_tfp(shape, implementation):
    mean, log_var = _params(shape, tf.float64, seed=7)
    z, kl, log_ratio = ops.reparameterize_kl(
        mean, log_var, 3, [5, 6], implementation=implementation
    )
    std = tf.exp(0.5 * log_var)
    q = tfd.Normal(mean, std)
    p = tfd.Normal(tf.zeros_like(mean), tf.ones_like(std))
    expected_kl = tf.reduce_sum(tfd.kl_divergence(q, p), axis=-1)
    expected_log_ratio = tf.reduce_sum(
        q.log_prob(z) - p.log_prob(z), axis=-1
    )
    assert kl.shape == shape[:-1]
    assert log_ratio.shape == [3, *shape[:-1]]
    np.testing.assert_allclose(kl.numpy(), expected_kl.numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        log_ratio.numpy(), expected_log_ratio.numpy(), rtol=1e-10, atol=1e-10
    )


# ---------------------------------------------------------------------------
# Gradients.


def _weighted_sum_fn(output_index, implementation, stop, num_samples=2):
    """A scalar function of (mean, log_var) through one output."""

    def fn(mean, log_var):
        outputs = ops.reparameterize_kl(
            mean, log_var, num_samples, [3, -4], stop, implementation
        )
        out = outputs[output_index]
        # The same weights on every call: the numerical Jacobian needs a
        # fixed function.
        rng = np.random.default_rng(output_index)
        weights = tf.constant(rng.normal(size=out.shape), out.dtype)
        return tf.reduce_sum(weights * out)

    return fn


@requires_fused
@pytest.mark.parametrize("output_index", [0, 1, 2], ids=["z", "kl", "lr"])
def test_gradients_match_numerical_jacobian(output_index):
    mean, log_var = _params([2, 3], tf.float64, seed=3)
    fn = _weighted_sum_fn(output_index, "fused", stop=False)
    theoretical, numerical = tf.test.compute_gradient(fn, [mean, log_var])
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6)


def _gradients(mean, log_var, stop, implementation, num_samples=3, seed=None):
    """Gradients of a random linear function of all three outputs."""
    seed = [8, 9] if seed is None else seed
    with tf.GradientTape() as tape:
        tape.watch([mean, log_var])
        outputs = ops.reparameterize_kl(
            mean, log_var, num_samples, seed, stop, implementation
        )
        rng = np.random.default_rng(1)
        loss = sum(
            tf.reduce_sum(
                tf.constant(rng.normal(size=o.shape), tf.float64)
                * tf.cast(o, tf.float64)
            )
            for o in outputs
        )
    return tape.gradient(loss, [mean, log_var])


@requires_fused
@pytest.mark.parametrize("stop", [False, True])
@pytest.mark.parametrize("shape", [[5], [3, 6], [2, 2, 3]], ids=str)
def test_gradients_match_reference(stop, shape):
    mean, log_var = _params(shape, tf.float64, seed=11)
    fused = _gradients(mean, log_var, stop, "fused")
    reference = _gradients(mean, log_var, stop, "reference")
    for f, r in zip(fused, reference):
        np.testing.assert_allclose(f.numpy(), r.numpy(), rtol=1e-10, atol=1e-10)


@requires_fused
@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_stopped_log_ratio_gradient_closed_form(implementation):
    mean, log_var = _params([3, 4], tf.float64, seed=5)
    num_samples, seed = 3, tf.constant([21, 22], tf.int64)
    upstream = tf.constant(
        np.random.default_rng(2).normal(size=[num_samples, 3]), tf.float64
    )
    with tf.GradientTape() as tape:
        tape.watch([mean, log_var])
        _, _, log_ratio = ops.reparameterize_kl(
            mean, log_var, num_samples, seed, True, implementation
        )
        loss = tf.reduce_sum(upstream * log_ratio)
    grad_mean, grad_log_var = tape.gradient(loss, [mean, log_var])

    eps = tf.random.stateless_normal(
        [num_samples, 3, 4], seed, dtype=tf.float64
    )
    s = tf.exp(0.5 * log_var)
    z = mean + s * eps
    g = upstream[..., None]
    expected_mean = tf.reduce_sum(g * (z - eps / s), axis=0)
    expected_log_var = tf.reduce_sum(
        g * (0.5 * z * s * eps - 0.5 * eps**2), axis=0
    )
    np.testing.assert_allclose(grad_mean.numpy(), expected_mean.numpy(), 1e-10)
    np.testing.assert_allclose(
        grad_log_var.numpy(), expected_log_var.numpy(), 1e-10
    )


@requires_fused
def test_stop_option_leaves_z_and_kl_gradients_unchanged():
    mean, log_var = _params([2, 5], tf.float64, seed=9)
    for output_index in (0, 1):
        grads = {}
        for stop in (False, True):
            fn = _weighted_sum_fn(output_index, "fused", stop)
            with tf.GradientTape() as tape:
                tape.watch([mean, log_var])
                loss = fn(mean, log_var)
            grads[stop] = tape.gradient(loss, [mean, log_var])
        for a, b in zip(grads[False], grads[True]):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


@requires_fused
def test_gradient_keeps_nothing_of_sample_size_but_z():
    """The backward op reads the forward inputs and the upstream gradients."""
    mean, log_var = _params([4, 3], tf.float64)

    @tf.function
    def grads(mean, log_var):
        with tf.GradientTape() as tape:
            tape.watch([mean, log_var])
            z, kl, log_ratio = ops.reparameterize_kl(
                mean, log_var, 5, [1, 2], implementation="fused"
            )
            loss = (
                tf.reduce_sum(tf.sin(z))
                + tf.reduce_sum(kl)
                + tf.reduce_sum(log_ratio)
            )
        return tape.gradient(loss, [mean, log_var])

    graph = grads.get_concrete_function(mean, log_var).graph
    (forward,) = [
        op for op in graph.get_operations()
        if op.type == "KerasVaeReparameterizeKl"
    ]
    (backward,) = [
        op for op in graph.get_operations()
        if op.type == "KerasVaeReparameterizeKlGrad"
    ]
    # No hidden noise output that the backward pass could hold on to.
    assert len(forward.outputs) == 3
    assert list(backward.inputs[:4]) == list(forward.inputs)
    # Of the backward inputs, only the upstream grad_z is [K, N, D]; it is
    # computed from z by sin's gradient, not stored by this op.
    sample_sized = [
        t for t in backward.inputs if t.shape.as_list() == [5, 4, 3]
    ]
    assert sample_sized == [backward.inputs[4]]
    backward_inputs = {t.ref() for t in backward.inputs}
    assert not {t.ref() for t in forward.outputs} & backward_inputs


# ---------------------------------------------------------------------------
# Determinism.


@requires_fused
@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_same_seed_same_outputs_different_seed_different(implementation):
    mean, log_var = _params([3, 4], tf.float32)

    def run(seed):
        return ops.reparameterize_kl(
            mean, log_var, 2, seed, implementation=implementation
        )

    first, again = run([1, 2]), run(tf.constant([1, 2], tf.int64))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for other_seed in ([1, 3], [2, 2], [2, 1]):
        other = run(other_seed)
        assert not np.any(first[0].numpy() == other[0].numpy())
        assert not np.any(first[2].numpy() == other[2].numpy())
        np.testing.assert_array_equal(first[1].numpy(), other[1].numpy())


def test_default_seed_draws_a_new_seed_each_call():
    mean, log_var = _params([3, 4], tf.float32)
    z1, _, _ = ops.reparameterize_kl(mean, log_var)
    z2, _, _ = ops.reparameterize_kl(mean, log_var)
    assert not np.any(z1.numpy() == z2.numpy())


# ---------------------------------------------------------------------------
# Bad input: a clear error that names the argument.

_GOOD = dict(
    mean=np.zeros([3, 4], np.float32),
    log_var=np.zeros([3, 4], np.float32),
    num_samples=2,
    seed=np.array([1, 2], np.int64),
)

BAD_INPUTS = {
    "shape-mismatch": (dict(log_var=np.zeros([3, 5], np.float32)), "log_var"),
    "rank-0": (
        dict(mean=np.float32(0), log_var=np.float32(0)),
        "mean must have rank",
    ),
    "num_samples-0": (dict(num_samples=0), "num_samples"),
    "num_samples-negative": (dict(num_samples=-3), "num_samples"),
    "num_samples-vector": (dict(num_samples=np.array([1, 2])), "num_samples"),
    "seed-[3]": (dict(seed=np.array([1, 2, 3], np.int64)), "seed"),
    "seed-[2,2]": (dict(seed=np.array([[1, 2], [3, 4]], np.int64)), "seed"),
}

# These the wrapper rejects before any tensor is built (dtype checks).
BAD_DTYPES = {
    "seed-float": (dict(seed=np.array([1.0, 2.0], np.float32)), "seed"),
    "mean-int": (
        dict(mean=np.zeros([3, 4], np.int32), log_var=np.zeros([3, 4], np.int32)),
        "mean",
    ),
    "dtype-mismatch": (dict(log_var=np.zeros([3, 4], np.float64)), "log_var"),
    "num_samples-overflow": (dict(num_samples=2**40), "num_samples"),
}


@pytest.mark.parametrize("implementation", ["auto", "fused", "reference"])
@pytest.mark.parametrize(
    "overrides,names", list({**BAD_INPUTS, **BAD_DTYPES}.values()),
    ids=list({**BAD_INPUTS, **BAD_DTYPES}),
)
def test_bad_input_eager(overrides, names, implementation):
    if implementation == "fused" and not ops.fused_available():
        pytest.skip("the fused op library is not loaded")
    args = {**_GOOD, **overrides}
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=names):
        ops.reparameterize_kl(**args, implementation=implementation)


def test_num_samples_tensor_below_one_eager():
    for implementation in ("auto", "reference"):
        for k in (0, -1):
            with pytest.raises(
                (ValueError, tf.errors.InvalidArgumentError),
                match="num_samples must be >= 1",
            ):
                ops.reparameterize_kl(
                    _GOOD["mean"], _GOOD["log_var"], tf.constant(k),
                    _GOOD["seed"], implementation=implementation,
                )


@pytest.mark.parametrize("implementation", ["fused", "reference"])
@pytest.mark.parametrize(
    "overrides,names", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS)
)
def test_bad_input_unknown_shapes_caught_at_run_time(
    overrides, names, implementation
):
    """With no static shapes, the kernel (or the graph) must catch it."""
    if implementation == "fused" and not ops.fused_available():
        pytest.skip("the fused op library is not loaded")
    args = {**_GOOD, **overrides}

    @tf.function(
        input_signature=[
            tf.TensorSpec(None, tf.float32),
            tf.TensorSpec(None, tf.float32),
            tf.TensorSpec(None, tf.int32),
            tf.TensorSpec(None, tf.int64),
        ]
    )
    def run(mean, log_var, num_samples, seed):
        return ops.reparameterize_kl(
            mean, log_var, num_samples, seed, implementation=implementation
        )

    with pytest.raises(tf.errors.InvalidArgumentError, match=names):
        run(*(args[k] for k in ("mean", "log_var", "num_samples", "seed")))


@pytest.mark.parametrize("implementation", ["auto", "reference"])
def test_num_samples_of_any_integer_type(implementation):
    expected = ops.reparameterize_kl(**_GOOD, implementation=implementation)
    for k in (np.int64(2), tf.constant(2, tf.int64), tf.constant(2, tf.int32)):
        args = {**_GOOD, "num_samples": k}
        actual = ops.reparameterize_kl(**args, implementation=implementation)
        _assert_outputs_close(actual, expected, rtol=0, atol=0)


def test_invalid_implementation():
    with pytest.raises(ValueError, match="implementation must be one of"):
        ops.reparameterize_kl(**_GOOD, implementation="cuda")


# ---------------------------------------------------------------------------
# NaN, Inf and empty inputs.


@requires_fused
@pytest.mark.parametrize("stop", [False, True])
def test_nan_and_inf_propagate_to_their_rows_only(stop):
    mean, log_var = _params([5, 4], tf.float64)
    mean = tf.tensor_scatter_nd_update(mean, [[0, 1], [3, 2]], [np.nan, np.inf])
    log_var = tf.tensor_scatter_nd_update(
        log_var, [[1, 0], [2, 3]], [np.inf, -np.inf]
    )
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([mean, log_var])
        fused, reference = _both(mean, log_var, 2, [4, 4], stop)
        losses = [tf.reduce_sum(sum(tf.reduce_sum(o) for o in out))
                  for out in (fused, reference)]
    _assert_outputs_close(fused, reference, rtol=1e-12, equal_nan=True)
    z, kl, log_ratio = (o.numpy() for o in fused)
    # The stop option changes gradients only, never values.
    unstopped = ops.reparameterize_kl(
        mean, log_var, 2, [4, 4], False, implementation="fused"
    )
    _assert_outputs_close(fused, unstopped, rtol=0, atol=0, equal_nan=True)
    bad_rows = [0, 1, 2, 3]
    good_rows = [4]
    assert np.all(np.isfinite(z[:, good_rows]))
    assert np.all(np.isfinite(kl[good_rows]))
    assert np.all(np.isfinite(log_ratio[:, good_rows]))
    assert not np.any(np.isfinite(kl[bad_rows]))
    assert not np.any(np.isfinite(log_ratio[:, bad_rows]))
    # z is non-finite exactly where mean is NaN/Inf or log_var is +Inf.
    z_bad = np.zeros([5, 4], bool)
    z_bad[0, 1] = z_bad[3, 2] = z_bad[1, 0] = True
    np.testing.assert_array_equal(~np.isfinite(z), np.broadcast_to(z_bad, z.shape))
    grads = [tape.gradient(loss, [mean, log_var]) for loss in losses]
    for g in grads[0]:
        assert np.all(np.isfinite(g.numpy()[good_rows]))


@requires_fused
@pytest.mark.parametrize("shape", [[0, 4], [3, 0], [0], [2, 0, 3]], ids=str)
@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_empty_inputs_forward_and_backward(shape, implementation):
    mean, log_var = tf.ones(shape, tf.float32), tf.ones(shape, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([mean, log_var])
        z, kl, log_ratio = ops.reparameterize_kl(
            mean, log_var, 3, [1, 2], implementation=implementation
        )
        loss = tf.reduce_sum(z) + tf.reduce_sum(kl) + tf.reduce_sum(log_ratio)
    assert z.shape == [3, *shape]
    assert kl.shape == shape[:-1]
    assert log_ratio.shape == [3, *shape[:-1]]
    # A sum over zero dimensions is zero (D = 0).
    np.testing.assert_array_equal(kl.numpy(), np.zeros(shape[:-1]))
    np.testing.assert_array_equal(log_ratio.numpy(), np.zeros([3, *shape[:-1]]))
    grad_mean, grad_log_var = tape.gradient(loss, [mean, log_var])
    assert grad_mean.shape == shape and grad_log_var.shape == shape


# ---------------------------------------------------------------------------
# Fused and reference agree in every execution mode and dtype.

ALL_DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]


@requires_fused
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("stop", [False, True])
def test_fused_matches_reference_eager_and_tf_function(dtype, stop):
    mean, log_var = _params([4, 7], dtype, seed=13)
    seed = tf.constant([31, -32], tf.int64)
    fused, reference = _both(mean, log_var, 3, seed, stop)
    _assert_outputs_close(fused, reference, **DTYPE_TOLERANCE[dtype])
    graph_fused, graph_reference = tf.function(_both)(
        mean, log_var, 3, seed, stop
    )
    _assert_outputs_close(graph_fused, fused, rtol=0, atol=0)
    # Grappler may reassociate the reference's graph by an ulp.
    _assert_outputs_close(graph_reference, reference, **DTYPE_TOLERANCE[dtype])


@requires_fused
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("stop", [False, True])
def test_fused_gradients_match_reference_every_dtype(dtype, stop):
    mean, log_var = _params([4, 7], dtype, seed=17)
    fused = _gradients(mean, log_var, stop, "fused")
    reference = _gradients(mean, log_var, stop, "reference")
    for f, r in zip(fused, reference):
        assert f.dtype == dtype
        # Gradients sum over samples: a few more ulps than the outputs.
        tol = {k: 4 * v for k, v in DTYPE_TOLERANCE[dtype].items()}
        np.testing.assert_allclose(
            tf.cast(f, tf.float64).numpy(), tf.cast(r, tf.float64).numpy(), **tol
        )
    graph_fused = tf.function(_gradients)(mean, log_var, stop, "fused")
    for a, b in zip(graph_fused, fused):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
def test_reference_under_jit_compile(dtype):
    """The fallback inside XLA (where the compiled libraries are missing)."""
    mean, log_var = _params([16, 8], dtype, seed=19)
    num_samples = 64

    @tf.function(jit_compile=True)
    def run(mean, log_var):
        assert ops.in_xla_context()
        return ops.reparameterize_kl(
            mean, log_var, num_samples, [7, 8], implementation="reference"
        )

    graph = run.get_concrete_function(mean, log_var).graph
    op_types = {op.type for op in graph.get_operations()}
    assert "KerasVaeReparameterizeKl" not in op_types
    z, kl, log_ratio = run(mean, log_var)
    assert z.dtype == kl.dtype == log_ratio.dtype == dtype
    assert z.shape == [num_samples, 16, 8] and log_ratio.shape == [num_samples, 16]

    # kl is deterministic: the closed form, in the dtype's precision.
    m64, lv64 = (tf.cast(t, tf.float64) for t in (mean, log_var))
    expected_kl = 0.5 * tf.reduce_sum(tf.exp(lv64) + m64**2 - 1 - lv64, -1)
    np.testing.assert_allclose(
        tf.cast(kl, tf.float64).numpy(), expected_kl.numpy(),
        **{k: 4 * v for k, v in DTYPE_TOLERANCE[dtype].items()},
    )
    # XLA's generator draws other numbers; they must still be N(0, 1) noise.
    u = ((tf.cast(z, tf.float64) - m64) / tf.exp(0.5 * lv64)).numpy().ravel()
    assert abs(u.mean()) < 5 / np.sqrt(u.size)
    assert abs(u.var() - 1) < 5 * np.sqrt(2 / u.size) + (
        0.0 if dtype in (tf.float32, tf.float64) else 0.02
    )
    # log_ratio is consistent with the z it returned.
    std = tf.exp(0.5 * lv64)
    z64 = tf.cast(z, tf.float64)
    expected_log_ratio = tf.reduce_sum(
        tfd.Normal(m64, std).log_prob(z64)
        - tfd.Normal(tf.constant(0.0, tf.float64), 1.0).log_prob(z64),
        axis=-1,
    )
    # z was rounded to the dtype before this oracle saw it: a few ulps.
    tol = {k: 4 * v for k, v in DTYPE_TOLERANCE[dtype].items()}
    np.testing.assert_allclose(
        tf.cast(log_ratio, tf.float64).numpy(), expected_log_ratio.numpy(), **tol
    )


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
def test_reference_gradients_under_jit_compile(dtype):
    """XLA's noise differs, so the oracle is written in terms of its z."""
    mean, log_var = _params([3, 4], dtype, seed=23)
    num_samples = 5

    @tf.function(jit_compile=True)
    def run(mean, log_var):
        with tf.GradientTape() as tape:
            tape.watch([mean, log_var])
            z, kl, _ = ops.reparameterize_kl(
                mean, log_var, num_samples, [5, 5], implementation="reference"
            )
            loss = tf.reduce_sum(z) + tf.reduce_sum(kl)
        return z, tape.gradient(loss, [mean, log_var])

    z, (grad_mean, grad_log_var) = run(mean, log_var)
    m64, lv64, z64 = (tf.cast(t, tf.float64).numpy() for t in (mean, log_var, z))
    # dz/dmean = 1, dz/dlv = 0.5 (z - mean); dkl/dmean = mean,
    # dkl/dlv = 0.5 (exp(lv) - 1).
    expected_mean = m64 + num_samples
    expected_log_var = 0.5 * (np.exp(lv64) - 1) + 0.5 * (z64 - m64).sum(0)
    # Sums of K rounded terms: a few ulps of the dtype.
    tol = {k: 4 * v for k, v in DTYPE_TOLERANCE[dtype].items()}
    np.testing.assert_allclose(
        tf.cast(grad_mean, tf.float64).numpy(), expected_mean, **tol
    )
    np.testing.assert_allclose(
        tf.cast(grad_log_var, tf.float64).numpy(), expected_log_var, **tol
    )


# ---------------------------------------------------------------------------
# The fallback when the library is not loaded.


@pytest.fixture
def library_unloaded(monkeypatch):
    monkeypatch.setattr(tf_backend, "_library", None)
    monkeypatch.setattr(tf_backend, "_load_error", "libfoo.so: cannot open file.")
    monkeypatch.setattr(tf_backend, "_warned_fallback", False)


def test_auto_falls_back_with_one_warning(library_unloaded):
    mean, log_var = _params([3, 4], tf.float32)
    assert not ops.fused_available()
    assert ops.build_info()["loaded"] is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = ops.reparameterize_kl(mean, log_var, 2, [1, 2])
        second = ops.reparameterize_kl(mean, log_var, 2, [1, 2])
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1
    message = str(runtime[0].message)
    assert "reference" in message
    assert "libfoo.so: cannot open file." in message
    assert "make build" in message
    expected = ops.reparameterize_kl_reference(mean, log_var, 2, [1, 2])
    for out in (first, second):
        _assert_outputs_close(out, expected, rtol=0, atol=0)


def test_fused_without_library_raises(library_unloaded):
    with pytest.raises(RuntimeError, match="libfoo.so: cannot open file."):
        ops.reparameterize_kl(**_GOOD, implementation="fused")


# ---------------------------------------------------------------------------
# Shapes.


@requires_fused
@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_output_shapes_static_and_dynamic(implementation):
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 5], tf.float32),
            tf.TensorSpec([None, 5], tf.float32),
        ]
    )
    def run(mean, log_var):
        z, kl, log_ratio = ops.reparameterize_kl(
            mean, log_var, 3, [1, 2], implementation=implementation
        )
        assert z.shape.as_list() == [3, None, 5]
        assert kl.shape.as_list() == [None]
        assert log_ratio.shape.as_list() == [3, None]
        return z, kl, log_ratio

    z, kl, log_ratio = run(tf.zeros([2, 5]), tf.zeros([2, 5]))
    assert z.shape == [3, 2, 5] and kl.shape == [2] and log_ratio.shape == [3, 2]
