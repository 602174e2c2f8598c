"""The fused kernels on JAX (keras_vae.backend.jax): the typed-FFI handlers.

Oracles: the TensorFlow op (the same kernels, so the same bits for the same
inputs and seed), and for the gradients an independent formula in jnp of z,
kl and log_ratio given the eps recovered from z, differentiated by JAX.
"""

import numpy as np
import pytest
import tensorflow as tf

from helpers.backend_cases import (
    DTYPES,
    SHAPES,
    assert_standard_normal_sample,
    cotangents as _cotangents,
    formula,
    params as _params,
    tf_outputs_and_grads,
)
from keras_vae import ops

jax = pytest.importorskip("jax")
jnp = jax.numpy
backend = pytest.importorskip("keras_vae.backend.jax")

_available, _why = backend.available()
pytestmark = [
    pytest.mark.backend_independent,
    pytest.mark.skipif(not ops.fused_available(), reason="no TF op to compare"),
    pytest.mark.skipif(not _available, reason=str(_why)),
]

# int32 seeds; the words are sign-extended, so TF's int64 seeds equal them.
SEEDS = [[1, 2], [-5, 7], [-(2**31), 2**31 - 1]]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _jax(t):
    """A TF tensor as a JAX array of the same dtype and bits."""
    return jnp.asarray(t.numpy())


def _assert_same(actual, expected, names=("z", "kl", "log_ratio")):
    for name, a, e in zip(names, actual, expected):
        e = e.numpy()
        assert a.dtype == e.dtype, name
        assert a.shape == e.shape, name
        # Bits, so that NaN == NaN and -0 != 0 would both show.
        bits = f"u{e.itemsize}"
        np.testing.assert_array_equal(
            np.atleast_1d(np.asarray(a)).view(bits),
            np.atleast_1d(e).view(bits), err_msg=name,
        )


def _jax_forward_and_vjp(mean, log_var, num_samples, seed, stop, cotangents):
    outputs, vjp = jax.vjp(
        lambda m, lv: backend.reparameterize_kl(m, lv, num_samples, seed, stop),
        mean, log_var,
    )
    return outputs, vjp(tuple(cotangents))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_equals_the_tf_op_bit_for_bit(dtype, shape, x64):
    mean, log_var = _params(shape, dtype)
    for seed in SEEDS:
        expected = ops.reparameterize_kl(
            mean, log_var, 3, tf.constant(seed, tf.int64), implementation="fused"
        )
        actual = backend.reparameterize_kl(
            _jax(mean), _jax(log_var), 3, jnp.asarray(seed, jnp.int32)
        )
        _assert_same(actual, expected)


def test_int64_seeds_beyond_int32_match_tf(x64):
    mean, log_var = _params([4, 6], "float32")
    for seed in ([-(2**63), 2**63 - 1], [2**40 + 1, -1]):
        expected = ops.reparameterize_kl(
            mean, log_var, 2, tf.constant(seed, tf.int64), implementation="fused"
        )
        actual = backend.reparameterize_kl(
            _jax(mean), _jax(log_var), 2, jnp.asarray(seed, jnp.int64)
        )
        _assert_same(actual, expected)


def test_seed_as_python_ints_without_x64():
    mean, log_var = _params([3, 5], "float32")
    expected = ops.reparameterize_kl(mean, log_var, 2, [-3, 4],
                                     implementation="fused")
    _assert_same(
        backend.reparameterize_kl(_jax(mean), _jax(log_var), 2, [-3, 4]),
        expected,
    )


def test_uint32_seed_words_read_as_the_int32_of_the_same_bits():
    """Keras's seed generators hold uint32 on JAX: [2**32 - 1, 2] draws what
    TensorFlow draws from [-1, 2]."""
    mean, log_var = _params([3, 5], "float32")
    expected = ops.reparameterize_kl(mean, log_var, 2, [-1, 2],
                                     implementation="fused")
    seed = jnp.asarray([2**32 - 1, 2], jnp.uint32)
    _assert_same(
        backend.reparameterize_kl(_jax(mean), _jax(log_var), 2, seed), expected
    )


@pytest.mark.parametrize("stop", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_equal_the_tf_op_bit_for_bit(dtype, stop, x64):
    shape, num_samples, seed = [3, 2, 5], 4, [-7, 9]
    mean, log_var = _params(shape, dtype, seed=1)
    cotangents = _cotangents(mean, num_samples)
    expected_out, expected = tf_outputs_and_grads(
        mean, log_var, num_samples, seed, stop, cotangents
    )
    actual_out, actual = _jax_forward_and_vjp(
        _jax(mean), _jax(log_var), num_samples, jnp.asarray(seed, jnp.int32),
        stop, [_jax(c) for c in cotangents],
    )
    _assert_same(actual_out, expected_out)
    _assert_same(actual, expected, names=("grad_mean", "grad_log_var"))


@pytest.mark.parametrize("stop", [False, True])
def test_gradients_match_an_independent_formula(stop, x64):
    shape, num_samples, seed = [4, 6], 3, jnp.asarray([5, -6], jnp.int32)
    mean, log_var = (_jax(t) for t in _params(shape, "float64", seed=2))
    cotangents = [_jax(c) for c in _cotangents(_params(shape, "float64")[0],
                                               num_samples, seed=4)]
    outputs, grads = _jax_forward_and_vjp(
        mean, log_var, num_samples, seed, stop, cotangents
    )
    eps = (outputs[0] - mean) / jnp.exp(0.5 * log_var)
    expected_out, vjp = jax.vjp(
        lambda m, lv: formula(jnp, jax.lax.stop_gradient, m, lv, eps, stop),
        mean, log_var,
    )
    expected = vjp(tuple(cotangents))
    for a, e in zip((*outputs, *grads), (*expected_out, *expected)):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12)
    assert_standard_normal_sample(np.asarray(eps))


def test_stop_flag_changes_gradients_not_values():
    mean, log_var = (_jax(t) for t in _params([3, 4], "float32"))

    def log_ratio_sum(stop):
        return lambda m, lv: jnp.sum(
            backend.reparameterize_kl(m, lv, 2, [1, 2], stop)[2]
        )

    plain = jax.value_and_grad(log_ratio_sum(False), argnums=(0, 1))(mean, log_var)
    stopped = jax.value_and_grad(log_ratio_sum(True), argnums=(0, 1))(mean, log_var)
    assert plain[0] == stopped[0]
    # d/dmean is sum_K z without the stop and sum_K (z - eps/std) with it:
    # the stop keeps log q's path through z only.
    z = backend.reparameterize_kl(mean, log_var, 2, [1, 2])[0]
    std = jnp.exp(0.5 * log_var)
    eps_over_std = jnp.sum((z - mean) / std**2, axis=0)
    np.testing.assert_allclose(plain[1][0], jnp.sum(z, axis=0), rtol=1e-6)
    np.testing.assert_allclose(
        plain[1][0] - stopped[1][0], eps_over_std, rtol=1e-4, atol=1e-5
    )
    assert not np.allclose(plain[1][1], stopped[1][1])


def test_jit_equals_eager_and_lowers_to_the_custom_calls():
    mean, log_var = (_jax(t) for t in _params([5, 3], "float32"))
    seed = jnp.asarray([2, 3], jnp.int32)

    def loss(m, lv, s):
        z, kl, log_ratio = backend.reparameterize_kl(m, lv, 4, s, True)
        return jnp.sum(z**2) + jnp.sum(kl) + 0.5 * jnp.sum(log_ratio)

    step = jax.value_and_grad(loss, argnums=(0, 1))
    eager = step(mean, log_var, seed)
    jitted = jax.jit(step)
    compiled = jitted(mean, log_var, seed)
    for a, e in zip(jax.tree.leaves(compiled), jax.tree.leaves(eager)):
        np.testing.assert_array_equal(a, e)
    hlo = jitted.lower(mean, log_var, seed).as_text()
    assert "custom_call @keras_vae_reparameterize_kl(" in hlo
    assert "custom_call @keras_vae_reparameterize_kl_grad(" in hlo
    # Another seed as a traced argument draws other noise without retracing.
    other = jitted(mean, log_var, seed + 1)
    assert not np.array_equal(other[0], compiled[0])


def test_vmap_runs_each_member_as_its_own_call():
    mean, log_var = (_jax(t) for t in _params([3, 4, 5], "float32"))
    seeds = jnp.asarray([[1, 2], [1, 2], [-4, 8]], jnp.int32)

    def f(m, lv, s):
        return backend.reparameterize_kl(m, lv, 2, s)

    shared = jax.vmap(f, in_axes=(0, 0, None))(mean, log_var, seeds[0])
    per_seed = jax.jit(jax.vmap(f))(mean, log_var, seeds)
    for i in range(3):
        alone = f(mean[i], log_var[i], seeds[0])
        for a, b in zip(shared, alone):
            np.testing.assert_array_equal(a[i], b)
        for a, b in zip(per_seed, f(mean[i], log_var[i], seeds[i])):
            np.testing.assert_array_equal(a[i], b)
    assert shared[0].shape == (3, 2, 4, 5)
    # A seed shared by the members gives each the same noise; another seed
    # other noise.
    eps = (per_seed[0] - mean[:, None]) / jnp.exp(0.5 * log_var[:, None])
    np.testing.assert_allclose(eps[0], eps[1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(eps[1], eps[2], atol=0.1)


def test_vmap_of_gradients_equals_per_member_gradients():
    mean, log_var = (_jax(t) for t in _params([2, 3, 4], "float32"))

    def grads(m, lv):
        loss = lambda m, lv: sum(  # noqa: E731
            jnp.sum(o * w) for o, w in zip(
                backend.reparameterize_kl(m, lv, 3, [7, 8], True), (1.0, 2.0, 0.5)
            )
        )
        return jax.grad(loss, argnums=(0, 1))(m, lv)

    batched = jax.vmap(grads)(mean, log_var)
    for i in range(2):
        for a, b in zip(batched, grads(mean[i], log_var[i])):
            np.testing.assert_array_equal(a[i], b)


def test_large_input_on_the_thread_pool_equals_the_tf_op():
    """Big enough for the Host handler to shard over XLA's thread pool."""
    mean, log_var = _params([512, 64], "float32", seed=5)
    cotangents = _cotangents(mean, 8)
    expected = tf_outputs_and_grads(mean, log_var, 8, [3, 4], False, cotangents)
    actual = _jax_forward_and_vjp(
        _jax(mean), _jax(log_var), 8, jnp.asarray([3, 4], jnp.int32), False,
        [_jax(c) for c in cotangents],
    )
    _assert_same(actual[0], expected[0])
    _assert_same(actual[1], expected[1], names=("grad_mean", "grad_log_var"))


@pytest.mark.parametrize("shape", [[0, 4], [3, 0], [2, 0, 5]], ids=str)
def test_empty_inputs(shape):
    mean = jnp.zeros(shape, jnp.float32)

    def loss(m, lv):
        z, kl, log_ratio = backend.reparameterize_kl(m, lv, 3, [1, 2])
        return jnp.sum(z) + jnp.sum(kl) + jnp.sum(log_ratio), (z, kl, log_ratio)

    (_, (z, kl, log_ratio)), grads = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    )(mean, mean + 1.0)
    assert z.shape == (3, *shape)
    assert kl.shape == tuple(shape[:-1])
    assert log_ratio.shape == (3, *shape[:-1])
    # With D = 0 the sums over D are empty: kl and log_ratio are exactly 0.
    np.testing.assert_array_equal(kl, np.zeros(shape[:-1]))
    np.testing.assert_array_equal(log_ratio, np.zeros([3, *shape[:-1]]))
    assert all(g.shape == tuple(shape) for g in grads)


def _call(mean=None, log_var=None, num_samples=2, seed=(1, 2)):
    mean = jnp.zeros([3, 4]) if mean is None else mean
    log_var = jnp.zeros_like(mean) if log_var is None else log_var
    return backend.reparameterize_kl(mean, log_var, num_samples, seed)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(mean=jnp.zeros([3, 4], jnp.int32)), ValueError, "mean must be float"),
        (dict(log_var=jnp.zeros([3, 4], jnp.bfloat16)), ValueError,
         "log_var must have the dtype of mean"),
        (dict(mean=jnp.zeros([])), ValueError, r"mean must have rank >= 1"),
        (dict(log_var=jnp.zeros([4, 4])), ValueError,
         r"mean and log_var must have the same shape.*\[3, 4\].*\[4, 4\]"),
        (dict(num_samples=0), ValueError, "num_samples must be an int >= 1"),
        (dict(num_samples=2.0), TypeError, "num_samples must be a Python int"),
        (dict(num_samples=True), ValueError, "num_samples must be an int >= 1"),
        (dict(seed=(1, 2, 3)), ValueError, r"seed must have shape \[2\]"),
        (dict(seed=(1.0, 2.0)), ValueError, "seed must hold integers"),
        (dict(seed=jnp.zeros([2], jnp.float32)), ValueError,
         "seed must be int32 or int64"),
        (dict(seed=(2**40, 1)), ValueError, "seed words must fit in int32"),
    ],
)
def test_bad_input_raises_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        _call(**kwargs)
    # At trace time under jit too, before anything runs.
    arrays = {k: v for k, v in kwargs.items() if isinstance(v, jax.Array)}
    if arrays:
        with pytest.raises(error, match=match):
            jax.jit(lambda a: _call(**{**kwargs, **a})).lower(arrays)


def test_traced_num_samples_is_refused_naming_it():
    with pytest.raises(TypeError, match="num_samples must be a Python int"):
        jax.jit(lambda k: _call(num_samples=k))(3)


def test_a_build_without_the_handlers_is_reported(monkeypatch):
    from keras_vae import _kernels

    def built_without():
        raise RuntimeError("keras_vae._kernels was built without the XLA FFI "
                           "handlers")

    monkeypatch.setattr(_kernels, "ffi_handlers", built_without)
    monkeypatch.setattr(backend, "_platforms", None)
    ok, reason = backend.available()
    assert not ok and "built without the XLA FFI handlers" in reason
    with pytest.raises(RuntimeError, match="built without"):
        _call()


@pytest.mark.gpu
@pytest.mark.parametrize("stop", [False, True])
def test_cuda_matches_the_cpu_handlers(stop):
    if "cuda" not in backend.register() or jax.default_backend() != "gpu":
        pytest.skip("no CUDA handlers or no JAX GPU backend")
    mean, log_var = (_jax(t) for t in _params([4, 33], "float32"))
    upstream = tuple(_jax(c) for c in _cotangents(_params([4, 33], "float32")[0], 3))

    def run(device):
        args = jax.device_put((mean, log_var, upstream), device)
        return jax.jit(lambda m, lv, u: _jax_forward_and_vjp(
            m, lv, 3, jnp.asarray([5, -6], jnp.int32), stop, u))(*args)

    gpu, cpu = run(jax.devices("gpu")[0]), run(jax.devices("cpu")[0])
    # Device logf/sincosf may differ from the host's in the last bits.
    for a, e in zip(jax.tree.leaves(gpu), jax.tree.leaves(cpu)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e),
                                   rtol=1e-4, atol=1e-4)
