"""The CUDA kernels through keras_vae._kernels, without TensorFlow.

Runs where PyTorch sees a CUDA device (marker ``gpu``); elsewhere only the
host-side checks run (launch geometry, and the NumPy Philox oracle against the
CPU kernel), and KERAS_VAE_REQUIRE_GPU=1 turns the skips into failures.
Nothing here imports TensorFlow, so the file also runs in a CUDA image that
has only PyTorch/CuPy and the module built with ``-DKERAS_VAE_BUILD_TF_OP=OFF``.
"""

import numpy as np
import pytest

from benchmarks.gpu_bench import load_kernels
from helpers.gpu import cuda_torch, signed_seed, unavailable

pytestmark = pytest.mark.backend_independent


_kernels = load_kernels()
if _kernels is None or not _kernels.build_info()["cuda"]:
    unavailable("keras_vae._kernels was built without CUDA", allow_module_level=True)


# --- An independent NumPy oracle of the noise layout (reparam_kl.h) ---------

_MASK32 = np.uint64(0xFFFFFFFF)


def _philox(counter, key):
    """Philox4x32-10 on columns of uint64 words (each < 2**32)."""
    c = [np.asarray(w, dtype=np.uint64) for w in counter]
    k0, k1 = (np.uint64(w) for w in key)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [
            (p1 >> np.uint64(32)) ^ c[1] ^ k0,
            p1 & _MASK32,
            (p0 >> np.uint64(32)) ^ c[3] ^ k1,
            p0 & _MASK32,
        ]
        k0 = (k0 + np.uint64(0x9E3779B9)) & _MASK32
        k1 = (k1 + np.uint64(0xBB67AE85)) & _MASK32
    return c


def oracle_normals_float32(seed0, seed1, flat_index):
    """The float32 normals at the given flat indices of z for a seed."""
    words = [seed0 & 0xFFFFFFFF, seed0 >> 32, seed1 & 0xFFFFFFFF, seed1 >> 32]
    mix = [int(w[0]) for w in _philox([[w] for w in words], (0x3EC8F720, 0x02461E29))]
    flat_index = np.asarray(flat_index, dtype=np.uint64)
    block = flat_index // np.uint64(4)
    zeros = np.zeros_like(block)
    x = _philox(
        [block & _MASK32, block >> np.uint64(32), zeros + mix[2], zeros + mix[3]],
        (mix[0], mix[1]),
    )

    def unit(w):
        bits = (np.uint32(127 << 23) | (w.astype(np.uint32) & np.uint32(0x7FFFFF)))
        return bits.view(np.float32) - np.float32(1)

    lane = (flat_index % np.uint64(4)).astype(np.int64)
    pair = lane // 2
    u1 = np.where(pair == 0, unit(x[0]), unit(x[2]))
    u1 = np.maximum(u1, np.float32(1e-7))
    u2 = np.where(pair == 0, unit(x[1]), unit(x[3]))
    angle = (2 * np.pi * u2.astype(np.float64)).astype(np.float32)
    radius = np.sqrt(np.float32(-2) * np.log(u1))
    return np.where(lane % 2 == 0, np.sin(angle), np.cos(angle)) * radius


SEED = (0x123456789, 2**63 + 5)


def test_oracle_matches_cpu_kernel():
    """The oracle reproduces the CPU kernel's noise (mean 0, log_var 0)."""
    k, shape = 3, (5, 7)
    zeros = np.zeros(shape, np.float32)
    z, _, _ = _kernels.cpu_forward(zeros, zeros, k, *SEED)
    eps = oracle_normals_float32(*SEED, np.arange(z.size))
    np.testing.assert_allclose(z.ravel(), eps, atol=2e-6)


# --- Launch geometry (host only) ---------------------------------------------


@pytest.mark.parametrize(
    "dim, itemsize, width",
    [(1, 4, 1), (4, 4, 1), (5, 4, 2), (32, 4, 8), (32, 8, 16), (256, 4, 32),
     (1000, 4, 32), (1000, 2, 32)],
)
def test_forward_group_width_covers_a_row(dim, itemsize, width):
    plan = _kernels.cuda_launch_plan(64, dim, 3, itemsize, 1000)["forward"]
    assert plan["group_width"] == width
    # Rows of a warp: 32 / width; threads cover every (k, n) row.
    rows = 64 * 3
    rows_per_warp = 32 // width
    assert plan["threads"] == -(-rows // rows_per_warp) * 32


@pytest.mark.parametrize("resident", [1, 7, 1056])
def test_grid_is_capped_by_residency(resident):
    plan = _kernels.cuda_launch_plan(4096, 256, 16, 4, resident)
    for p in (plan["forward"], plan["backward"]):
        needed = -(-p["threads"] // plan["threads_per_block"])
        assert p["blocks"] == min(needed, resident)


def test_small_problem_launches_what_it_needs():
    plan = _kernels.cuda_launch_plan(2, 3, 1, 4, 1056)
    assert plan["forward"]["blocks"] == 1
    # One 4-element chunk per row, one lane each (K = 1): one warp.
    assert plan["backward"]["group_width"] == 1
    assert plan["backward"]["threads"] == 32
    assert not plan["forward"]["vectorized"]  # D = 3 straddles Philox blocks


@pytest.mark.parametrize(
    "batch, dim, k, width",
    # 128 x 32 x 50: 1,024 chunks; lanes split the 50 samples 32 ways. At
    # 4096 x 256 x 16 the chunks nearly fill the device alone: 2 ways.
    [(128, 32, 50, 32), (128, 32, 1, 1), (128, 32, 3, 2), (4096, 256, 16, 2),
     (65536, 256, 16, 1)],
)
def test_backward_splits_samples_to_fill_the_device(batch, dim, k, width):
    resident = 132 * 8  # an H100's 132 SMs, 8 blocks of 256 each
    plan = _kernels.cuda_launch_plan(batch, dim, k, 4, resident)["backward"]
    assert plan["group_width"] == width
    chunks = batch * -(-dim // 4)
    assert plan["threads"] == -(-chunks // (32 // width)) * 32


def test_more_than_int32_elements_sizes_in_64_bits():
    plan = _kernels.cuda_launch_plan(1, 1000, 2_147_484, 2, 1056)
    assert plan["forward"]["threads"] == 2_147_484 * 32
    assert plan["forward"]["blocks"] == 1056


# --- On the GPU ----------------------------------------------------------------


def _torch():
    return cuda_torch()


DTYPES = ["float16", "bfloat16", "float32", "float64"]
# One unit in the last place of each storage type, at magnitude 1.
ULP = {"float16": 2**-10, "bfloat16": 2**-7, "float32": 2**-23, "float64": 2**-52}


def _cuda_args(torch, *tensors, dtype):
    """bfloat16 has no __cuda_array_interface__ typestr: pass int16 views."""
    if dtype == "bfloat16":
        return [t.view(torch.int16) for t in tensors], {"dtype": "bfloat16"}
    return list(tensors), {}


def _device_seed(torch, seed, device):
    """The seed's words in device memory, where the kernels read them."""
    return torch.tensor(signed_seed(seed), dtype=torch.int64, device=device)


def gpu_forward(torch, mean, log_var, k, seed=SEED, stream=0):
    z = torch.empty((k, *mean.shape), dtype=mean.dtype, device=mean.device)
    kl = torch.empty(mean.shape[:-1], dtype=mean.dtype, device=mean.device)
    lr = torch.empty((k, *mean.shape[:-1]), dtype=mean.dtype, device=mean.device)
    dtype = str(mean.dtype).replace("torch.", "")
    args, kw = _cuda_args(torch, mean, log_var, z, kl, lr, dtype=dtype)
    _kernels.cuda_forward(*args, k, _device_seed(torch, seed, mean.device),
                          stream=stream, **kw)
    torch.cuda.synchronize()
    return z, kl, lr


def gpu_backward(torch, mean, log_var, k, grads, stop=False, seed=SEED):
    g_mean = torch.empty_like(mean)
    g_lv = torch.empty_like(mean)
    dtype = str(mean.dtype).replace("torch.", "")
    args, kw = _cuda_args(torch, mean, log_var, *grads, g_mean, g_lv, dtype=dtype)
    _kernels.cuda_backward(*args, k, _device_seed(torch, seed, mean.device),
                           stop_params=stop, **kw)
    torch.cuda.synchronize()
    return g_mean, g_lv


def _params(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape), rng.uniform(-1.5, 1.5, size=shape)


def _to(torch, x, dtype):
    return torch.as_tensor(x, device="cuda").to(getattr(torch, dtype))


# Unit roundoff of the compute type (float32 for the 16-bit types).
COMPUTE_ULP = {"float16": 2**-24, "bfloat16": 2**-24, "float32": 2**-24,
               "float64": 2**-53}


def _assert_within(actual, expected, tol, name):
    err = np.abs(actual - expected)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), (
        f"{name}: |diff| {err[worst]:.3g} > tol {np.broadcast_to(tol, err.shape)[worst]:.3g} "
        f"at {worst}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 32), (4, 1), (2, 1000), (7,)],
                         ids=str)
def test_forward_matches_cpu_kernel(dtype, shape):
    torch = _torch()
    k = 3
    mean_np, lv_np = _params(shape)
    mean, log_var = _to(torch, mean_np, dtype), _to(torch, lv_np, dtype)
    z, kl, lr = gpu_forward(torch, mean, log_var, k)
    # The CPU kernel computes in float64 for float64 and float32 otherwise, on
    # the inputs as stored.
    compute = np.float64 if dtype == "float64" else np.float32
    m = mean.double().cpu().numpy().astype(compute)
    v = log_var.double().cpu().numpy().astype(compute)
    z_ref, kl_ref, lr_ref = _kernels.cpu_forward(m, v, k, *SEED)
    # Device logf/sincosf may differ from the host's in the last bits: eps
    # within 1e-5; each result is then rounded once to the storage type.
    s = np.exp(0.5 * v)
    eps = (z_ref - m) / s
    _assert_within(z.double().cpu().numpy(), z_ref,
                   1e-5 * s + ULP[dtype] * np.abs(z_ref), "z")
    # log_ratio: each term moves by |d term / d eps| * 1e-5 = |z s - eps| * 1e-5;
    # the two sums round differently (tree vs sequential) within D roundoffs.
    terms = 0.5 * (z_ref**2 - eps**2 - v)
    roundoff = 2 * shape[-1] * COMPUTE_ULP[dtype] * np.abs(terms).sum(-1)
    lr_tol = (1e-5 * np.abs(z_ref * s - eps).sum(-1) + roundoff
              + ULP[dtype] * np.abs(lr_ref))
    _assert_within(lr.double().cpu().numpy(), lr_ref, lr_tol, "log_ratio")
    kl_terms = 0.5 * (s**2 + m**2 - 1 - v)
    kl_tol = (4 * shape[-1] * COMPUTE_ULP[dtype] * np.abs(kl_terms).sum(-1)
              + ULP[dtype] * np.abs(kl_ref))
    _assert_within(kl.double().cpu().numpy(), kl_ref, kl_tol, "kl")


@pytest.mark.gpu
def test_noise_matches_oracle_and_is_standard_normal():
    torch = _torch()
    zeros = torch.zeros((64, 333), device="cuda")  # D = 333: blocks straddle rows
    z, kl, lr = gpu_forward(torch, zeros, zeros, 5)
    eps = z.cpu().numpy().ravel()
    np.testing.assert_allclose(eps, oracle_normals_float32(*SEED, np.arange(eps.size)),
                               atol=1e-5)
    assert abs(eps.mean()) < 0.02 and abs(eps.std() - 1) < 0.02
    assert torch.all(kl == 0) and torch.all(lr == 0)  # z = eps exactly


@pytest.mark.gpu
def test_unaligned_buffers_take_the_scalar_path():
    torch = _torch()
    mean_np, lv_np = _params((6, 8))
    base = torch.zeros(6 * 8 + 1, device="cuda")
    mean = base[1:].view(6, 8)  # 4-byte aligned, not 16
    mean.copy_(torch.as_tensor(mean_np, device="cuda"))
    log_var = _to(torch, lv_np, "float32")
    z_off, kl_off, lr_off = gpu_forward(torch, mean, log_var, 2)
    z, kl, lr = gpu_forward(torch, mean.clone(), log_var, 2)
    torch.testing.assert_close(z_off, z, rtol=0, atol=0)
    torch.testing.assert_close(lr_off, lr, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(kl_off, kl, rtol=1e-6, atol=1e-5)


def _upstream(torch, k, shape, dtype, seed=1):
    rng = np.random.default_rng(seed)
    return [
        _to(torch, rng.normal(size=(k, *shape)), dtype),
        _to(torch, rng.normal(size=shape[:-1]), dtype),
        _to(torch, rng.normal(size=(k, *shape[:-1])), dtype),
    ]


@pytest.mark.gpu
@pytest.mark.parametrize("stop", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5), (4, 64), (2, 1)], ids=str)
def test_backward_matches_cpu_kernel(dtype, shape, stop):
    torch = _torch()
    k = 4
    mean_np, lv_np = _params(shape)
    mean, log_var = _to(torch, mean_np, dtype), _to(torch, lv_np, dtype)
    grads = _upstream(torch, k, shape, dtype)
    g_mean, g_lv = gpu_backward(torch, mean, log_var, k, grads, stop)
    compute = np.float64 if dtype == "float64" else np.float32
    as_np = lambda t: t.double().cpu().numpy().astype(compute)  # noqa: E731
    ref_mean, ref_lv = _kernels.cpu_backward(
        as_np(mean), as_np(log_var), k, *SEED, *[as_np(g) for g in grads], stop)
    # They differ by eps (within 1e-5, times a derivative of at most ~20 for
    # these inputs, per sample), by the order of the sum over k (the GPU's
    # lanes split the samples), and by one rounding to the storage type.
    for got, ref, name in [(g_mean, ref_mean, "grad_mean"), (g_lv, ref_lv, "grad_log_var")]:
        _assert_within(got.double().cpu().numpy(), ref,
                       k * 20 * 1e-5 + 2 * ULP[dtype] * np.abs(ref), name)


@pytest.mark.gpu
@pytest.mark.parametrize("stop", [False, True])
def test_backward_matches_numerical_gradient(stop):
    """float64 central differences of <g, (z, kl, log_ratio)>.

    With stop=True the parameters inside log q are held fixed, so the
    numerical gradient differentiates log_ratio at fixed (mean, log_var) in
    log q and moving z only.
    """
    torch = _torch()
    k, shape = 3, (2, 5)
    mean_np, lv_np = _params(shape)
    grads = _upstream(torch, k, shape, "float64")
    g_z, g_kl, g_lr = (g.cpu().numpy() for g in grads)

    def objective(m, v, m_q, v_q):
        """m, v move z; m_q, v_q are the parameters of log q."""
        z, kl, _ = (t.cpu().numpy() for t in gpu_forward(
            torch, _to(torch, m, "float64"), _to(torch, v, "float64"), k))
        log_q = -0.5 * ((z - m_q) ** 2 / np.exp(v_q) + v_q)
        log_p = -0.5 * z**2
        lr = (log_q - log_p).sum(-1)
        return (g_z * z).sum() + (g_kl * kl).sum() + (g_lr * lr).sum()

    def numeric(which):
        out = np.zeros(shape)
        h = 1e-6
        for idx in np.ndindex(*shape):
            args = [mean_np.copy(), lv_np.copy()]
            up, down = [a.copy() for a in args], [a.copy() for a in args]
            up[which][idx] += h
            down[which][idx] -= h
            q_up = args if stop else up
            q_down = args if stop else down
            out[idx] = (objective(*up, *q_up) - objective(*down, *q_down)) / (2 * h)
        return out

    g_mean, g_lv = gpu_backward(torch, _to(torch, mean_np, "float64"),
                                _to(torch, lv_np, "float64"), k, grads, stop)
    np.testing.assert_allclose(g_mean.cpu().numpy(), numeric(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_lv.cpu().numpy(), numeric(1), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_results_are_bitwise_deterministic():
    torch = _torch()
    mean_np, lv_np = _params((257, 130))
    mean, log_var = _to(torch, mean_np, "float32"), _to(torch, lv_np, "float32")
    grads = _upstream(torch, 7, (257, 130), "float32")
    first = gpu_forward(torch, mean, log_var, 7) + gpu_backward(torch, mean, log_var, 7, grads)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        z, kl, lr = gpu_forward(torch, mean, log_var, 7, stream=side.cuda_stream)
    again = (z, kl, lr) + gpu_backward(torch, mean, log_var, 7, grads)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    other = gpu_forward(torch, mean, log_var, 7, seed=(SEED[0] + 1, SEED[1]))[0]
    assert not torch.equal(other, first[0])


@pytest.mark.gpu
def test_nan_propagates_to_its_row_only():
    torch = _torch()
    mean_np, lv_np = _params((3, 9))
    mean_np[1, 4] = np.nan
    z, kl, lr = gpu_forward(torch, _to(torch, mean_np, "float32"),
                            _to(torch, lv_np, "float32"), 2)
    assert torch.isnan(kl[1]) and torch.isnan(lr[:, 1]).all()
    assert torch.isnan(z[:, 1, 4]).all()
    assert torch.isfinite(kl[[0, 2]]).all() and torch.isfinite(z[:, [0, 2]]).all()


@pytest.mark.gpu
def test_bad_arguments_are_named():
    torch = _torch()
    mean = torch.zeros((3, 4), device="cuda")
    z, kl, lr = (torch.empty(s, device="cuda") for s in [(2, 3, 4), (3,), (2, 3)])
    seed = _device_seed(torch, (1, 2), "cuda")
    with pytest.raises(ValueError, match="z must have shape \\(2, 3, 4\\)"):
        _kernels.cuda_forward(mean, mean, z[:1], kl, lr, 2, seed)
    with pytest.raises(TypeError, match="log_var has dtype float64"):
        _kernels.cuda_forward(mean, mean.double(), z, kl, lr, 2, seed)
    with pytest.raises(TypeError, match="mean must be a CUDA array"):
        _kernels.cuda_forward(np.zeros((3, 4), np.float32), mean, z, kl, lr, 2, seed)
    with pytest.raises(ValueError, match="z must be C-contiguous"):
        _kernels.cuda_forward(mean, mean, z.transpose(1, 2).contiguous().transpose(1, 2),
                              kl, lr, 2, seed)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        _kernels.cuda_forward(mean, mean, z, kl, lr, 0, seed)
    with pytest.raises(TypeError, match="seed must be a CUDA array"):
        _kernels.cuda_forward(mean, mean, z, kl, lr, 2, np.array([1, 2]))
    with pytest.raises(ValueError, match="seed must have shape \\(2,\\) and dtype"):
        _kernels.cuda_forward(mean, mean, z, kl, lr, 2, seed.float())
    with pytest.raises(ValueError, match="seed is not in CUDA device memory"):
        _kernels.cuda_forward(mean, mean, z, kl, lr, 2, seed.cpu().pin_memory())


@pytest.mark.gpu
def test_int32_seed_is_sign_extended():
    torch = _torch()
    mean_np, lv_np = _params((3, 8))
    mean, log_var = _to(torch, mean_np, "float32"), _to(torch, lv_np, "float32")
    z64 = gpu_forward(torch, mean, log_var, 2, seed=(-5 % 2**64, 7))[0]
    z32 = torch.empty_like(z64)
    kl, lr = torch.empty(3, device="cuda"), torch.empty((2, 3), device="cuda")
    seed32 = torch.tensor([-5, 7], dtype=torch.int32, device="cuda")
    _kernels.cuda_forward(mean, log_var, z32, kl, lr, 2, seed32)
    torch.cuda.synchronize()
    assert torch.equal(z32, z64)


@pytest.mark.gpu
def test_cupy_arrays_are_accepted():
    _torch()
    cp = pytest.importorskip("cupy")
    mean_np, lv_np = _params((4, 12))
    mean, log_var = cp.asarray(mean_np), cp.asarray(lv_np)
    z = cp.empty((2, 4, 12))
    kl, lr = cp.empty((4,)), cp.empty((2, 4))
    seed = cp.asarray(signed_seed(SEED), dtype=cp.int64)
    _kernels.cuda_forward(mean, log_var, z, kl, lr, 2, seed,
                          stream=cp.cuda.get_current_stream().ptr)
    z_ref, kl_ref, lr_ref = _kernels.cpu_forward(mean_np, lv_np, 2, *SEED)
    # float64: device and host log/sincos agree to a few ulps.
    np.testing.assert_allclose(cp.asnumpy(z), z_ref, atol=1e-12)
    np.testing.assert_allclose(cp.asnumpy(kl), kl_ref, rtol=1e-12)
    np.testing.assert_allclose(cp.asnumpy(lr), lr_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.slow
def test_more_than_2_to_31_elements():
    """K*N*D > 2**31: the tail of z is still the right noise (64-bit flat
    indices), and the backward's sum over K reaches every sample."""
    torch = _torch()
    d, k = 1000, 2_147_484  # K*D = 2**31 + 352
    free, _ = torch.cuda.mem_get_info()
    if free < 2 * k * d * 4 + (1 << 30):
        pytest.skip("needs about 18 GB of free device memory")
    zeros = torch.zeros((1, d), dtype=torch.float16, device="cuda")
    z, kl, lr = gpu_forward(torch, zeros, zeros, k)
    tail = np.arange(k * d - 3 * d, k * d)
    expected = oracle_normals_float32(*SEED, tail).astype(np.float16)
    np.testing.assert_allclose(z.view(-1)[-3 * d:].float().cpu().numpy(),
                               expected.astype(np.float32), rtol=ULP["float16"], atol=1e-4)
    assert torch.all(lr == 0) and torch.all(kl == 0)
    del z, lr
    zeros32 = torch.zeros((1, d), device="cuda")
    grad_z = torch.ones((k, 1, d), device="cuda")
    g_mean, g_lv = gpu_backward(torch, zeros32, zeros32, k, [
        grad_z, torch.zeros(1, device="cuda"), torch.zeros((k, 1), device="cuda")])
    # d mean = sum_k g_z = K exactly in float32 (K < 2**24).
    assert torch.all(g_mean == k)
    # d log_var = sum_k 0.5 * eps at s = 1, for the last column.
    eps_last = oracle_normals_float32(*SEED, np.arange(k) * d + d - 1).astype(np.float64)
    np.testing.assert_allclose(g_lv[0, -1].item(), 0.5 * eps_last.sum(), atol=0.5)
