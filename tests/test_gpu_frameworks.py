"""The fused op on the GPU through JAX and PyTorch, against the same op on
the CPU, without TensorFlow.

JAX: the XLA FFI handlers (``csrc/xla``) under ``jit``, ``vmap``, ``grad`` and
the DReG surrogate's stopped gradient. PyTorch: the ``torch.library`` op,
checked by ``opcheck``, compiled by ``torch.compile`` and captured in a CUDA
graph, with no host synchronization. ``VAE.fit`` on each: the same losses and
weights, step for step, on the GPU as on the CPU (subprocesses, one backend
each).

Skipped without a GPU; KERAS_VAE_REQUIRE_GPU=1 makes every skip a failure.
Nothing here imports TensorFlow or needs it installed.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers.gpu import cuda_jax, cuda_torch, unavailable

pytestmark = [pytest.mark.backend_independent, pytest.mark.gpu]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = (123, -4)
DTYPES = ["float16", "bfloat16", "float32"]
# Relative tolerance of the GPU against the CPU: device logf/sincosf agree
# with the host's to ~1e-6 in float32, then one rounding to the storage type.
RTOL = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-5, "float64": 1e-12}


def _params(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape).astype(np.float32),
            rng.uniform(-1.5, 1.0, size=shape).astype(np.float32))


def _close(got, want, rtol, name, scale=1.0):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale,
                               err_msg=name)


# --- JAX: the FFI handlers on the GPU --------------------------------------


def _jax_op():
    jax, gpu = cuda_jax()
    from keras_vae.backend import jax as jax_backend

    try:
        platforms = jax_backend.register()
    except (ImportError, RuntimeError) as e:
        unavailable(str(e))
    if "cuda" not in platforms:
        unavailable("keras_vae._kernels has no CUDA FFI handlers")
    return jax, gpu, jax_backend.reparameterize_kl


@pytest.mark.parametrize("dtype", DTYPES)
def test_jax_gpu_forward_and_grad_match_cpu(dtype):
    jax, gpu, op = _jax_op()
    import jax.numpy as jnp

    cpu = jax.devices("cpu")[0]
    mean_np, lv_np = _params((6, 20))
    k = 3

    def loss(mean, log_var, seed, stop):
        z, kl, lr = op(mean, log_var, k, seed, stop_log_ratio_param_grad=stop)
        # Every output reaches the loss, so every upstream gradient is used.
        return (jnp.sum(jnp.sin(z.astype(jnp.float32)))
                + jnp.sum(kl.astype(jnp.float32))
                + jnp.sum(jnp.cos(lr.astype(jnp.float32)))), (z, kl, lr)

    results = {}
    for name, device in (("cpu", cpu), ("gpu", gpu)):
        args = [jax.device_put(jnp.asarray(x, dtype), device)
                for x in (mean_np, lv_np)]
        seed = jax.device_put(jnp.asarray(SEED, jnp.int32), device)
        for stop in (False, True):  # True: DReG's and STL's stopped gradient
            grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True),
                           static_argnums=3)
            (g_mean, g_lv), outs = grad(*args, seed, stop)
            assert g_mean.devices() == {device}
            results[name, stop] = [np.asarray(x.astype(jnp.float32))
                                   for x in (*outs, g_mean, g_lv)]
    for stop in (False, True):
        for got, want, what in zip(results["gpu", stop], results["cpu", stop],
                                   ("z", "kl", "log_ratio", "grad_mean",
                                    "grad_log_var")):
            # Sums over D = 20 (kl, log_ratio) and over K = 3 (gradients).
            _close(got, want, RTOL[dtype], f"{what} stop={stop}", scale=20.0)


def test_jax_gpu_vmap_is_per_member_bitwise():
    jax, gpu, op = _jax_op()
    import jax.numpy as jnp

    mean_np, lv_np = _params((4, 5, 12))
    mean, log_var = (jax.device_put(jnp.asarray(x), gpu) for x in (mean_np, lv_np))
    seeds = jax.device_put(jnp.asarray([[1, 2], [3, -4], [5, 6], [7, 8]], jnp.int32), gpu)
    f = jax.jit(lambda m, v, s: op(m, v, 2, s))
    batched = jax.vmap(f)(mean, log_var, seeds)
    for i in range(4):
        single = f(mean[i], log_var[i], seeds[i])
        for b, s in zip(batched, single):
            np.testing.assert_array_equal(np.asarray(b[i]), np.asarray(s))


def test_jax_gpu_seed_is_read_on_the_device():
    """A new seed value under the same compiled function draws new noise
    (the handler reads the seed buffer on the device, each call)."""
    jax, gpu, op = _jax_op()
    import jax.numpy as jnp

    mean = jax.device_put(jnp.zeros((3, 8)), gpu)
    f = jax.jit(lambda s: op(mean, mean, 2, s)[0])
    a = f(jax.device_put(jnp.asarray([1, 2], jnp.int32), gpu))
    b = f(jax.device_put(jnp.asarray([1, 3], jnp.int32), gpu))
    again = f(jax.device_put(jnp.asarray([1, 2], jnp.int32), gpu))
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(again))


# --- PyTorch: the custom op on CUDA tensors --------------------------------


def _torch_op():
    torch = cuda_torch()
    from keras_vae import _kernels
    from keras_vae.backend import torch as torch_backend

    if not _kernels.build_info()["cuda"]:
        unavailable("keras_vae._kernels was built without CUDA")
    return torch, torch_backend


@pytest.mark.parametrize("dtype", DTYPES + ["float64"])
def test_torch_cuda_forward_and_backward_match_cpu(dtype):
    torch, backend = _torch_op()
    mean_np, lv_np = _params((5, 9))
    outs = {}
    for device in ("cpu", "cuda"):
        mean = torch.tensor(mean_np, device=device).to(getattr(torch, dtype))
        log_var = torch.tensor(lv_np, device=device).to(getattr(torch, dtype))
        mean.requires_grad_(True)
        log_var.requires_grad_(True)
        seed = torch.tensor(SEED, device=device)
        z, kl, lr = backend.reparameterize_kl(mean, log_var, 4, seed)
        # In the op's dtype where it has one of compute, so that the upstream
        # gradients do not round the GPU's and CPU's z apart.
        up = (lambda t: t) if dtype == "float64" else (lambda t: t.float())  # noqa: E731
        (up(z).sin().sum() + up(kl).sum() + up(lr).cos().sum()).backward()
        outs[device] = [t.detach().double().cpu().numpy()
                        for t in (z, kl, lr, mean.grad, log_var.grad)]
    for got, want, what in zip(outs["cuda"], outs["cpu"],
                               ("z", "kl", "log_ratio", "grad_mean", "grad_log_var")):
        _close(got, want, RTOL[dtype], what, scale=10.0)


def _cuda_leaves(torch, shape):
    """`_params(shape)` as CUDA tensors that record gradients, and the seed
    on the same device."""
    mean_np, lv_np = _params(shape)
    return (torch.tensor(mean_np, device="cuda", requires_grad=True),
            torch.tensor(lv_np, device="cuda", requires_grad=True),
            torch.tensor(SEED, device="cuda"))


def test_torch_cuda_opcheck():
    torch, backend = _torch_op()
    mean, log_var, seed = _cuda_leaves(torch, (3, 8))
    torch.library.opcheck(torch.ops.keras_vae.reparameterize_kl.default,
                          (mean, log_var, seed, 3, False))
    grads = (torch.randn(3, 3, 8, device="cuda"), torch.randn(3, device="cuda"),
             torch.randn(3, 3, device="cuda"))
    torch.library.opcheck(torch.ops.keras_vae.reparameterize_kl_grad.default,
                          (mean.detach(), log_var.detach(), seed, *grads, True))


def test_torch_cuda_compile_matches_eager():
    torch, backend = _torch_op()
    mean, log_var, seed = _cuda_leaves(torch, (4, 16))

    def step(m, v, s):
        z, kl, lr = backend.reparameterize_kl(m, v, 5, s, True)
        return (z**2).sum() + kl.sum() + lr.sum()

    compiled = torch.compile(step, fullgraph=True)
    eager_loss = step(mean, log_var, seed)
    eager = torch.autograd.grad(eager_loss, (mean, log_var))
    compiled_loss = compiled(mean, log_var, seed)
    got = torch.autograd.grad(compiled_loss, (mean, log_var))
    torch.testing.assert_close(compiled_loss, eager_loss)
    for g, e in zip(got, eager):
        torch.testing.assert_close(g, e)


def test_torch_cuda_call_never_synchronizes_and_captures_in_a_graph():
    """The seed stays on the device: no host synchronization in a call
    (PyTorch's sync debug mode raises on one), and forward plus backward
    replay from a CUDA graph with a seed refilled in place."""
    torch, backend = _torch_op()
    mean, log_var, seed = _cuda_leaves(torch, (8, 32))

    def step():
        z, kl, lr = backend.reparameterize_kl(mean, log_var, 3, seed)
        gm, gv = torch.autograd.grad((z.sum(), kl.sum(), lr.sum()),
                                     (mean, log_var))
        return z, gm, gv

    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up on a side stream, as graph capture requires
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for new_seed in ([5, 6], [-7, 8]):
        seed.copy_(torch.tensor(new_seed))
        graph.replay()
        torch.cuda.synchronize()
        for got, want in zip(captured, step()):
            assert torch.equal(got, want)


# --- VAE.fit, step for step ------------------------------------------------

# Four steps, each one call of fit on the next batch; after each, the logs
# and every weight. SGD, so that the weights are a smooth function of the
# gradients (Adam's first steps are their signs).
_FIT_WORKER = """
import json, sys
import numpy as np
import keras
sys.path.insert(0, {tests!r})
from helpers import tiny_vae
model = tiny_vae.build(seed=0, num_samples={k}, objective="iwae")
model.compile(optimizer=keras.optimizers.SGD(0.05))
x = tiny_vae.data()
steps = []
for batch in np.split(x, 4):
    history = model.fit(batch, batch_size=len(batch), epochs=1, verbose=0)
    steps.append({{"logs": {{n: float(v[-1]) for n, v in history.history.items()}},
                   "weights": [np.asarray(w).ravel().tolist()
                               for w in model.trainable_weights]}})
print(json.dumps(steps))
"""


def _fit_steps(backend, on_gpu, k):
    env = dict(os.environ, KERAS_BACKEND=backend)
    if backend == "jax":
        env["JAX_PLATFORMS"] = "cuda" if on_gpu else "cpu"
        # float32 matmuls in float32 on the GPU too (JAX's default there is
        # TF32, whose 10-bit mantissa is not the CPU's arithmetic).
        env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    elif not on_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    code = _FIT_WORKER.format(tests=os.path.join(ROOT, "tests"), k=k)
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_fit_on_gpu_matches_cpu_step_for_step(backend):
    if backend == "jax":
        cuda_jax()
    else:
        cuda_torch()
    k = 5
    cpu, gpu = _fit_steps(backend, False, k), _fit_steps(backend, True, k)
    assert len(cpu) == len(gpu) == 4
    for step, (c, g) in enumerate(zip(cpu, gpu)):
        assert c["logs"].keys() == g["logs"].keys()
        for name in c["logs"]:
            np.testing.assert_allclose(g["logs"][name], c["logs"][name],
                                       rtol=1e-4, err_msg=f"step {step} {name}")
        # The same noise and gradients: the same weights after each update.
        for wc, wg in zip(c["weights"], g["weights"]):
            np.testing.assert_allclose(wg, wc, rtol=1e-3, atol=1e-5,
                                       err_msg=f"weights after step {step}")
