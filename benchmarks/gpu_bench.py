"""GPU benchmark of the fused op: the CUDA kernels through PyTorch and JAX.

Needs a CUDA GPU, PyTorch and JAX with CUDA, and the framework-free module
built with CUDA; TensorFlow is not needed. `make gpu-check` runs it (see
benchmarks/gpu_check.py); by hand, from the repository root after a build:

    python -m benchmarks.gpu_bench --out runs/gpu --write BENCHMARKS.md

For float32 inputs at each (B, D, K) of BENCHMARKS.md it reports median
times of the forward and of forward+backward: the fused op on PyTorch (the
``torch.library`` op, and the raw kernels through ``keras_vae._kernels``)
and on JAX (the XLA FFI handlers under ``jit``); the bandwidth each achieves
against a device-to-device copy of the same bytes (the roofline); and the
speed-up over the unfused composition (randn, exp, mul, add and the
reductions, with autograd) in PyTorch and in JAX. Then ``VAE.fit`` on JAX
with the fused op against the plain Keras VAE on JAX (benchmarks/fit_models)
at K = 1, 5, 50. Times are medians over samples of back-to-back calls, the
candidates interleaved; on the GPU a sample ends when the device is done.

``--device cpu --tiny`` runs the same harness on the CPU at tiny sizes: the
dry run of `make gpu-check-dry`, which proves the harness, not the speed.
"""

import argparse
import glob
import importlib.util
import json
import os
import re
import statistics
import time

SHAPES = [(128, 32, 1), (128, 32, 50), (1024, 64, 8), (4096, 256, 16)]
TINY_SHAPES = [(8, 4, 1), (8, 4, 3)]
FIT_KS = (1, 5, 50)
SECTION = "## GPU (CUDA)"


def load_kernels():
    """keras_vae._kernels, from its file when keras_vae cannot be imported;
    None when it was not built."""
    try:
        from keras_vae import _kernels

        return _kernels
    except ImportError:
        root = os.path.join(os.path.dirname(__file__), "..", "keras_vae")
        paths = glob.glob(os.path.join(root, "_kernels*.so"))
        if not paths:
            return None
        spec = importlib.util.spec_from_file_location("_kernels", paths[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def medians_s(candidates, calls, repeats, synchronize):
    """Median seconds per call of each candidate.

    Each sample times `calls` back-to-back calls (so launch overhead counts,
    as it does in training) and ends once `synchronize()` returns; every
    repetition runs all candidates, in a rotating order.
    """
    names = list(candidates)
    samples = {n: [] for n in names}
    for fn in candidates.values():  # warm-up: compiling, allocator, clocks
        for _ in range(max(2, calls // 5)):
            fn()
    synchronize()
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            synchronize()
            start = time.perf_counter()
            for _ in range(calls):
                candidates[name]()
            synchronize()
            samples[name].append((time.perf_counter() - start) / calls)
    return {n: statistics.median(s) for n, s in samples.items()}


def _torch_candidates(batch, dim, k, device):
    import torch

    from keras_vae.backend import torch as fused_torch

    mean = torch.randn(batch, dim, device=device)
    log_var = torch.randn(batch, dim, device=device) * 0.5
    seed = torch.tensor([1, 2], device=device)
    g_z = torch.randn(k, batch, dim, device=device)
    g_kl, g_lr = torch.randn(batch, device=device), torch.randn(k, batch, device=device)
    mean_p = mean.clone().requires_grad_(True)
    lv_p = log_var.clone().requires_grad_(True)

    def fused_forward():
        with torch.no_grad():
            fused_torch.reparameterize_kl(mean, log_var, k, seed)

    def fused_both():
        outs = fused_torch.reparameterize_kl(mean_p, lv_p, k, seed)
        torch.autograd.backward(outs, (g_z, g_kl, g_lr))

    def unfused(m, v):
        eps = torch.randn(k, batch, dim, device=device)
        z = m + torch.exp(0.5 * v) * eps
        kl = 0.5 * (torch.exp(v) + m * m - 1 - v).sum(-1)
        lr = 0.5 * (z * z - eps * eps - v).sum(-1)
        return z, kl, lr

    def unfused_forward():
        with torch.no_grad():
            unfused(mean, log_var)

    def unfused_both():
        torch.autograd.backward(unfused(mean_p, lv_p), (g_z, g_kl, g_lr))

    candidates = {
        "torch fused fwd": fused_forward, "torch fused fwd+bwd": fused_both,
        "torch unfused fwd": unfused_forward,
        "torch unfused fwd+bwd": unfused_both,
    }
    if device == "cuda":
        # The raw kernels, with no framework between: the op's floor.
        kernels = load_kernels()
        stream = torch.cuda.current_stream().cuda_stream
        z = torch.empty(k, batch, dim, device=device)
        kl, lr = torch.empty(batch, device=device), torch.empty(k, batch, device=device)
        g_mean, g_lv = torch.empty_like(mean), torch.empty_like(mean)

        def raw_forward():
            kernels.cuda_forward(mean, log_var, z, kl, lr, k, seed,
                                 stream=stream, device=0)

        def raw_both():
            raw_forward()
            kernels.cuda_backward(mean, log_var, g_z, g_kl, g_lr, g_mean, g_lv,
                                  k, seed, stream=stream, device=0)

        candidates["raw kernels fwd"] = raw_forward
        candidates["raw kernels fwd+bwd"] = raw_both
    return candidates


def _copy_candidates(fwd_bytes, bwd_bytes, device):
    import torch

    # A copy of S bytes reads S and writes S: copy half the bytes moved.
    candidates = {}
    for name, moved in (("copy fwd", fwd_bytes), ("copy fwd+bwd", fwd_bytes + bwd_bytes)):
        src = torch.empty(moved // 2, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        candidates[name] = lambda dst=dst, src=src: dst.copy_(src)
    return candidates


def _jax_candidates(batch, dim, k):
    import jax
    import jax.numpy as jnp

    from keras_vae.backend import jax as fused_jax

    rng = jax.random.key(0)
    mean = jax.random.normal(rng, (batch, dim))
    log_var = 0.5 * jax.random.normal(jax.random.fold_in(rng, 1), (batch, dim))
    seed = jnp.asarray([1, 2], jnp.int32)
    cot = (jnp.ones((k, batch, dim)), jnp.ones((batch,)), jnp.ones((k, batch)))

    def fused(m, v, s):
        return fused_jax.reparameterize_kl(m, v, k, s)

    def unfused(m, v, s):
        eps = jax.random.normal(jax.random.key(s[0]), (k, batch, dim))
        z = m + jnp.exp(0.5 * v) * eps
        kl = 0.5 * jnp.sum(jnp.exp(v) + m * m - 1 - v, -1)
        lr = 0.5 * jnp.sum(z * z - eps * eps - v, -1)
        return z, kl, lr

    def both(f):
        def run(m, v, s):
            out, pullback = jax.vjp(lambda m, v: f(m, v, s), m, v)
            return out, pullback(cot)
        return jax.jit(run)

    candidates = {}
    for name, f in (("fused", fused), ("unfused", unfused)):
        fwd, fwd_bwd = jax.jit(f), both(f)
        candidates[f"jax {name} fwd"] = (
            lambda fwd=fwd: jax.block_until_ready(fwd(mean, log_var, seed)))
        candidates[f"jax {name} fwd+bwd"] = (
            lambda g=fwd_bwd: jax.block_until_ready(g(mean, log_var, seed)))
    return candidates


def bench_shape(batch, dim, k, calls, repeats, device="cuda", with_jax=True):
    """Median seconds per call of every candidate at one (B, D, K)."""
    import torch

    item = 4
    fwd_bytes = item * (2 * batch * dim + k * batch * dim + batch + k * batch)
    bwd_bytes = item * (4 * batch * dim + k * batch * dim + batch + k * batch)
    candidates = _torch_candidates(batch, dim, k, device)
    candidates.update(_copy_candidates(fwd_bytes, bwd_bytes, device))
    if with_jax:
        candidates.update(_jax_candidates(batch, dim, k))

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    t = medians_s(candidates, calls, repeats, synchronize)
    row = {"shape": [batch, dim, k], "fwd_bytes": fwd_bytes,
           "bwd_bytes": bwd_bytes, "median_us": {n: s * 1e6 for n, s in t.items()}}
    for frame in ("torch", "jax") if with_jax else ("torch",):
        for part in ("fwd", "fwd+bwd"):
            fused = t[f"{frame} fused {part}"]
            row[f"{frame} {part} % of copy"] = 100 * t[f"copy {part}"] / fused
            row[f"{frame} {part} speed-up"] = t[f"{frame} unfused {part}"] / fused
    return row


def fit_rows(ks, steps, batch_size, repeats, log=print):
    """`VAE.fit` on JAX with the fused op against the plain Keras VAE on
    JAX (benchmarks.end_to_end's workers), at each K."""
    from benchmarks import end_to_end

    rows = end_to_end.run({k: steps for k in ks}, batch_size, repeats, log=log,
                          backends=("jax",))
    return [{"K": r["K"], "batch_size": r["batch_size"], "steps": r["steps"],
             "examples_per_s": {n: c["examples_per_s"]
                                for n, c in r["candidates"].items()},
             "fused_over_plain": r["summary"].get("ratio_jax")} for r in rows]


def report(rows, fits, device):
    lines = [
        SECTION,
        "",
        f"Device: {device}. float32, medians of back-to-back calls; % of copy "
        "= time of a device-to-device copy of the same bytes / fused time; "
        "speed-up = unfused composition (randn, exp, mul, add, reductions; "
        "autograd for the backward) / fused, in the same framework. Produced "
        "by `make gpu-check` (`python -m benchmarks.gpu_bench`).",
        "",
        "| (B, D, K) | framework | fwd µs | fwd % of copy | fwd speed-up "
        "| fwd+bwd µs | fwd+bwd % of copy | fwd+bwd speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        us = r["median_us"]
        for frame in ("torch", "jax"):
            if f"{frame} fused fwd" not in us:
                continue
            lines.append(
                f"| {tuple(r['shape'])} | {frame} | {us[f'{frame} fused fwd']:.1f} "
                f"| {r[f'{frame} fwd % of copy']:.0f}% "
                f"| {r[f'{frame} fwd speed-up']:.1f}× "
                f"| {us[f'{frame} fused fwd+bwd']:.1f} "
                f"| {r[f'{frame} fwd+bwd % of copy']:.0f}% "
                f"| {r[f'{frame} fwd+bwd speed-up']:.1f}× |")
    by_shape = {tuple(r["shape"]): r for r in rows}
    big, small = by_shape.get((4096, 256, 16)), by_shape.get((128, 32, 1))
    if big and small:
        lines += [
            "",
            "Targets (H100), PyTorch: forward at (4096, 256, 16) ≥ 80% of copy: "
            f"{big['torch fwd % of copy']:.0f}%; forward+backward ≥ 4× unfused "
            f"there: {big['torch fwd+bwd speed-up']:.1f}×, ≥ 3× at (128, 32, 1): "
            f"{small['torch fwd+bwd speed-up']:.1f}×.",
        ]
    if fits:
        lines += ["", "`VAE.fit` on JAX, examples/s (fused keras_vae.VAE / "
                  "plain Keras VAE, paired ratio):", "",
                  "| K | keras_vae.VAE | plain Keras | ratio |", "|---|---|---|---|"]
        for f in fits:
            eps = f["examples_per_s"]
            vae = next((v for n, v in eps.items() if n.startswith("keras_vae")), float("nan"))
            plain = next((v for n, v in eps.items() if n.startswith("plain")), float("nan"))
            ratio = f["fused_over_plain"]
            lines.append(f"| {f['K']} | {vae:,.0f} | {plain:,.0f} | "
                         f"{ratio if ratio is None else f'{ratio:.2f}×'} |")
    return "\n".join(lines) + "\n"


def write_section(path, text):
    """Replaces this section of `path` (up to the next ## heading), or
    appends it."""
    old = open(path).read() if os.path.exists(path) else ""
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: text + "\n", old, count=1)
    else:
        new = old + ("\n" if old and not old.endswith("\n\n") else "") + text
    with open(path, "w") as f:
        f.write(new)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes and few samples (the dry run)")
    parser.add_argument("--calls", type=int, default=50,
                        help="back-to-back calls per timed sample")
    parser.add_argument("--repeats", type=int, default=15,
                        help="timed samples per candidate")
    parser.add_argument("--fit-steps", type=int, default=20,
                        help="training steps per timed fit call")
    parser.add_argument("--fit-repeats", type=int, default=5)
    parser.add_argument("--no-fit", action="store_true")
    parser.add_argument("--out", metavar="DIR",
                        help="write gpu_bench.json and gpu_bench.md here")
    parser.add_argument("--write", metavar="PATH",
                        help="put the table under '## GPU (CUDA)' in PATH")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("no CUDA device is visible to PyTorch")
        kernels = load_kernels()
        if kernels is None or not kernels.build_info()["cuda"]:
            parser.error("keras_vae._kernels was built without CUDA")
        device_name = torch.cuda.get_device_name()
    else:
        device_name = "CPU (harness check, not a benchmark)"
    shapes = TINY_SHAPES if args.tiny else SHAPES
    calls, repeats = (2, 2) if args.tiny else (args.calls, args.repeats)
    rows = []
    for b, d, k in shapes:
        rows.append(bench_shape(b, d, k, calls, repeats, args.device))
        print(f"{(b, d, k)}: " + ", ".join(
            f"{n} {us:.1f} µs" for n, us in rows[-1]["median_us"].items()), flush=True)
    fits = []
    if not args.no_fit:
        steps, fit_repeats = (1, 1) if args.tiny else (args.fit_steps, args.fit_repeats)
        ks = (1,) if args.tiny else FIT_KS
        fits = fit_rows(ks, steps, 8 if args.tiny else 128, fit_repeats)
    text = report(rows, fits, device_name)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
            json.dump({"device": device_name, "ops": rows, "fit": fits}, f, indent=1)
        with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
            f.write(text)
    if args.write:
        write_section(args.write, text)


if __name__ == "__main__":
    main()
