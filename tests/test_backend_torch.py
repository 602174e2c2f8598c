"""The fused kernels on PyTorch (keras_vae.backend.torch): torch.library ops.

Oracles: the TensorFlow op (the same kernels, so the same bits for the same
inputs and seed), finite differences (torch.autograd.gradcheck in float64),
a torch formula of z, kl and log_ratio given the eps recovered from z, and
torch.library.opcheck for the registrations.
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

torch = pytest.importorskip("torch")
backend = pytest.importorskip("keras_vae.backend.torch")

_available, _why = backend.available()
pytestmark = [
    pytest.mark.backend_independent,
    pytest.mark.skipif(not ops.fused_available(), reason="no TF op to compare"),
    pytest.mark.skipif(not _available, reason=str(_why)),
]

SEEDS = [[1, 2], [-5, 7], [-(2**63), 2**63 - 1], [2**40 + 1, -1]]


def _torch(t, requires_grad=False):
    """A TF tensor as a torch tensor of the same dtype and bits."""
    if t.dtype == tf.bfloat16:
        bits = tf.bitcast(t, tf.int16).numpy()
        out = torch.from_numpy(bits).view(torch.bfloat16)
    else:
        out = torch.from_numpy(t.numpy())
    return out.clone().requires_grad_(requires_grad)


def _bits(t):
    """The bits of a torch or TF tensor as a NumPy integer array."""
    if isinstance(t, torch.Tensor):
        t = t.detach()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy()
        return np.atleast_1d(t.numpy()).view(f"u{t.element_size()}")
    if t.dtype == tf.bfloat16:
        return tf.bitcast(t, tf.int16).numpy()
    return np.atleast_1d(t.numpy()).view(f"u{t.dtype.size}")


def _assert_same(actual, expected, names=("z", "kl", "log_ratio")):
    for name, a, e in zip(names, actual, expected):
        assert str(a.dtype) == f"torch.{e.dtype.name}", name
        assert list(a.shape) == e.shape.as_list(), name
        np.testing.assert_array_equal(
            _bits(a).reshape(-1), _bits(e).reshape(-1), err_msg=name
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_equals_the_tf_op_bit_for_bit(dtype, shape):
    mean, log_var = _params(shape, dtype)
    for seed in SEEDS:
        expected = ops.reparameterize_kl(
            mean, log_var, 3, tf.constant(seed, tf.int64), implementation="fused"
        )
        actual = backend.reparameterize_kl(_torch(mean), _torch(log_var), 3, seed)
        _assert_same(actual, expected)


def test_seed_forms_agree_and_int32_words_are_sign_extended():
    mean, log_var = (_torch(t) for t in _params([3, 4], "float32"))
    expected = ops.reparameterize_kl(*_params([3, 4], "float32"), 2, [-3, 4],
                                     implementation="fused")
    for seed in ([-3, 4], (-3, 4), torch.tensor([-3, 4], dtype=torch.int32),
                 torch.tensor([-3, 4]), np.array([-3, 4], np.int64)):
        _assert_same(backend.reparameterize_kl(mean, log_var, 2, seed), expected)


@pytest.mark.parametrize("stop", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_equal_the_tf_op_bit_for_bit(dtype, stop):
    shape, num_samples, seed = [3, 2, 5], 4, [-7, 9]
    mean, log_var = _params(shape, dtype, seed=1)
    cotangents = _cotangents(mean, num_samples)
    expected_out, expected = tf_outputs_and_grads(
        mean, log_var, num_samples, seed, stop, cotangents
    )
    mean_t, log_var_t = _torch(mean, True), _torch(log_var, True)
    actual_out = backend.reparameterize_kl(mean_t, log_var_t, num_samples, seed,
                                           stop)
    actual = torch.autograd.grad(actual_out, (mean_t, log_var_t),
                                 [_torch(c) for c in cotangents])
    _assert_same(actual_out, expected_out)
    _assert_same(actual, expected, names=("grad_mean", "grad_log_var"))


def _f64(shape, seed):
    return [_torch(t, True) for t in _params(shape, "float64", seed)]


def test_gradients_match_finite_differences():
    mean, log_var = _f64([3, 4], seed=2)
    assert torch.autograd.gradcheck(
        lambda m, lv: backend.reparameterize_kl(m, lv, 3, [5, -6]),
        (mean, log_var),
    )


@pytest.mark.parametrize("stop", [False, True])
def test_gradients_match_an_independent_formula(stop):
    mean, log_var = _f64([4, 6], seed=2)
    cotangents = [_torch(c) for c in _cotangents(_params([4, 6], "float64")[0], 3)]
    outputs = backend.reparameterize_kl(mean, log_var, 3, [5, -6], stop)
    grads = torch.autograd.grad(outputs, (mean, log_var), cotangents)
    eps = ((outputs[0] - mean) / torch.exp(0.5 * log_var)).detach()
    expected_out = formula(torch, torch.detach, mean, log_var, eps, stop)
    expected = torch.autograd.grad(expected_out, (mean, log_var), cotangents)
    for a, e in zip((*outputs, *grads), (*expected_out, *expected)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    assert_standard_normal_sample(eps.numpy())


def test_opcheck_of_both_ops():
    mean, log_var = _f64([3, 4], seed=4)
    seed = torch.tensor([1, -2])
    for stop in (False, True):
        torch.library.opcheck(
            torch.ops.keras_vae.reparameterize_kl.default,
            (mean, log_var, seed, 2, stop),
        )
    grads = [torch.randn(2, 3, 4, dtype=torch.float64),
             torch.randn(3, dtype=torch.float64),
             torch.randn(2, 3, dtype=torch.float64)]
    torch.library.opcheck(
        torch.ops.keras_vae.reparameterize_kl_grad.default,
        (mean.detach(), log_var.detach(), seed, *grads, True),
    )


def _loss(mean, log_var, seed):
    z, kl, log_ratio = backend.reparameterize_kl(mean, log_var, 4, seed, True)
    return z, kl, log_ratio, (z**2).sum() + kl.sum() + 0.5 * log_ratio.sum()


def _run(fn, shape, seed, device="cpu"):
    mean, log_var = (_torch(t).to(device).requires_grad_()
                     for t in _params(shape, "float32"))
    *outputs, loss = fn(mean, log_var, seed)
    return outputs, torch.autograd.grad(loss, (mean, log_var))


def test_torch_compile_fullgraph_aot_eager_equals_eager():
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    compiled = torch.compile(_loss, fullgraph=True, backend=capture)
    seed = torch.tensor([2, 3])
    eager = _run(_loss, [5, 3], seed)
    actual = _run(compiled, [5, 3], seed)
    for a, e in zip((*actual[0], *actual[1]), (*eager[0], *eager[1])):
        assert torch.equal(a, e)
    # One graph, holding the op as a single node.
    assert len(graphs) == 1
    assert "torch.ops.keras_vae.reparameterize_kl" in graphs[0].code
    # A new seed tensor draws new noise without recompiling.
    other = _run(compiled, [5, 3], torch.tensor([2, 4]))
    assert not torch.equal(other[0][0], actual[0][0])
    assert len(graphs) == 1


@pytest.mark.slow
def test_torch_compile_fullgraph_inductor_equals_eager():
    compiled = torch.compile(_loss, fullgraph=True)
    eager = _run(_loss, [6, 5], [7, -8])
    actual = _run(compiled, [6, 5], [7, -8])
    for a, e in zip(actual[0], eager[0]):
        assert torch.equal(a, e)
    for a, e in zip(actual[1], eager[1]):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)


def test_non_contiguous_inputs_equal_their_contiguous_copies():
    mean, log_var = (_torch(t) for t in _params([5, 3], "float32"))
    strided = backend.reparameterize_kl(mean.t(), log_var.t(), 2, [1, 2])
    dense = backend.reparameterize_kl(mean.t().contiguous(),
                                      log_var.t().contiguous(), 2, [1, 2])
    for a, b in zip(strided, dense):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "shape",
    [
        [0, 4],
        [2, 0, 5],
        [3, 0],
    ],
    ids=str,
)
def test_empty_inputs(shape):
    mean = torch.zeros(shape, requires_grad=True)
    log_var = torch.ones(shape, requires_grad=True)
    z, kl, log_ratio = backend.reparameterize_kl(mean, log_var, 3, [1, 2])
    assert list(z.shape) == [3, *shape]
    assert list(kl.shape) == shape[:-1]
    assert list(log_ratio.shape) == [3, *shape[:-1]]
    # With D = 0 the sums over D are empty: kl and log_ratio are exactly 0.
    assert torch.equal(kl, torch.zeros(shape[:-1]))
    assert torch.equal(log_ratio, torch.zeros([3, *shape[:-1]]))
    grads = torch.autograd.grad(z.sum() + kl.sum() + log_ratio.sum(),
                                (mean, log_var))
    assert all(list(g.shape) == shape for g in grads)


def _call(mean=None, log_var=None, num_samples=2, seed=(1, 2)):
    mean = torch.zeros([3, 4]) if mean is None else mean
    log_var = torch.zeros_like(mean) if log_var is None else log_var
    return backend.reparameterize_kl(mean, log_var, num_samples, seed)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(mean=np.zeros([3, 4], np.float32), log_var=torch.zeros([3, 4])),
         TypeError,
         "mean and log_var must be torch tensors"),
        (dict(mean=torch.zeros([3, 4], dtype=torch.int32)), ValueError,
         "mean must be float"),
        (dict(log_var=torch.zeros([3, 4], dtype=torch.float64)), ValueError,
         "log_var must have the dtype of mean"),
        (dict(mean=torch.zeros([])), ValueError, r"mean must have rank >= 1"),
        (dict(log_var=torch.zeros([4, 4])), ValueError,
         r"mean and log_var must have the same shape.*\[3, 4\].*\[4, 4\]"),
        (dict(log_var=torch.zeros([3, 4], device="meta")), ValueError,
         "log_var must be on the device of mean"),
        (dict(num_samples=0), ValueError, "num_samples must be an int >= 1"),
        (dict(num_samples=2.0), TypeError, "num_samples must be a Python int"),
        (dict(num_samples=True), ValueError, "num_samples must be an int >= 1"),
        (dict(seed=(1, 2, 3)), ValueError, r"seed must have shape \[2\]"),
        (dict(seed=torch.tensor([1.0, 2.0])), ValueError,
         "seed must be int32 or int64"),
        (dict(seed=(2**64, 1)), ValueError, "seed must be a pair of ints"),
        (dict(seed="12"), ValueError, "seed must be a pair of ints"),
    ],
)
def test_bad_input_raises_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        _call(**kwargs)


def test_bad_input_raises_under_torch_compile():
    compiled = torch.compile(
        lambda m: backend.reparameterize_kl(m, m, 0, [1, 2]),
        fullgraph=True, backend="aot_eager",
    )
    with pytest.raises(Exception, match="num_samples must be an int >= 1"):
        compiled(torch.zeros([3, 4]))



def _cuda_build_and_device():
    from keras_vae import _kernels

    if not _kernels.build_info()["cuda"]:
        pytest.skip("keras_vae._kernels was built without CUDA")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.mark.gpu
@pytest.mark.parametrize("stop", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_matches_the_cpu_kernels(dtype, stop):
    _cuda_build_and_device()
    mean, log_var = _params([4, 33], dtype)
    upstream = [_torch(c) for c in _cotangents(mean, 3)]

    def run(device):
        m = _torch(mean).to(device).requires_grad_()
        lv = _torch(log_var).to(device).requires_grad_()
        outputs = backend.reparameterize_kl(m, lv, 3, [5, -6], stop)
        grads = torch.autograd.grad(outputs, (m, lv),
                                    [u.to(device) for u in upstream])
        return [t.cpu() for t in (*outputs, *grads)]

    # Device logf/sincosf may differ from the host's in the last bits (see
    # test_gpu.py); float64 draws its normals without them.
    tol = 1e-4 if dtype == "float32" else 1e-10
    for a, e in zip(run("cuda"), run("cpu")):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)


@pytest.mark.gpu
def test_cuda_under_torch_compile_equals_eager():
    _cuda_build_and_device()
    compiled = torch.compile(_loss, fullgraph=True, backend="aot_eager")
    eager = _run(_loss, [6, 5], [7, -8], "cuda")
    actual = _run(compiled, [6, 5], [7, -8], "cuda")
    for a, e in zip((*actual[0], *actual[1]), (*eager[0], *eager[1])):
        assert a.is_cuda and torch.equal(a, e)
