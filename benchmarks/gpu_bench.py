"""GPU benchmark of the fused CUDA kernels, through keras_vae._kernels.

Needs a CUDA GPU, PyTorch with CUDA, and the framework-free module built with
CUDA; TensorFlow is not needed. On a fresh GPU machine, from the repository
root:

    cmake -S . -B build-gpu -DKERAS_VAE_BUILD_TF_OP=OFF \
        -DPython_EXECUTABLE=$(which python)
    cmake --build build-gpu -j
    python -m pytest tests/test_gpu.py -q
    python -m benchmarks.gpu_bench --write BENCHMARKS.md

(``KERAS_VAE_CUDA_ARCHS=90`` before the first command builds for the H100
only, which compiles faster.) For float32 inputs at each (B, D, K) it reports
median times of the forward and of forward+backward; the bandwidth each
achieves against a device-to-device copy of the same bytes (the roofline);
and the speed-up over the unfused PyTorch composition (randn, exp, mul, add
and the reductions, with autograd for the backward). Times are CUDA-event
medians over batches of back-to-back calls, the candidates interleaved.
"""

import argparse
import glob
import importlib.util
import os
import re
import statistics

SHAPES = [(128, 32, 1), (128, 32, 50), (1024, 64, 8), (4096, 256, 16)]
SECTION = "## GPU (CUDA)"


def load_kernels():
    """keras_vae._kernels, from its file when keras_vae (which imports
    TensorFlow) cannot be imported; None when it was not built."""
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


def event_median_s(candidates, calls, repeats):
    """Median seconds per call of each candidate, by CUDA events.

    Each sample times `calls` back-to-back calls (so launch overhead counts,
    as it does in training); every repetition runs all candidates, in a
    rotating order.
    """
    import torch

    names = list(candidates)
    samples = {n: [] for n in names}
    for fn in candidates.values():  # warm-up: allocator, caches, clocks
        for _ in range(calls):
            fn()
    torch.cuda.synchronize()
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                candidates[name]()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) / 1e3 / calls)
    return {n: statistics.median(s) for n, s in samples.items()}


def bench_shape(kernels, batch, dim, k, calls, repeats):
    import torch

    dev = "cuda"
    stream = torch.cuda.current_stream().cuda_stream
    mean = torch.randn(batch, dim, device=dev)
    log_var = torch.randn(batch, dim, device=dev) * 0.5
    z = torch.empty(k, batch, dim, device=dev)
    kl = torch.empty(batch, device=dev)
    lr = torch.empty(k, batch, device=dev)
    g_z, g_kl, g_lr = torch.randn_like(z), torch.randn_like(kl), torch.randn_like(lr)
    g_mean, g_lv = torch.empty_like(mean), torch.empty_like(mean)
    seed = (1, 2)

    def fused_forward():
        kernels.cuda_forward(mean, log_var, z, kl, lr, k, *seed, stream=stream)

    def fused_backward():
        kernels.cuda_backward(mean, log_var, g_z, g_kl, g_lr, g_mean, g_lv, k,
                              *seed, stream=stream)

    def fused_both():
        fused_forward()
        fused_backward()

    mean_p = mean.clone().requires_grad_(True)
    lv_p = log_var.clone().requires_grad_(True)

    def unfused(m, v):
        eps = torch.randn(k, batch, dim, device=dev)
        zz = m + torch.exp(0.5 * v) * eps
        kl_ = 0.5 * (torch.exp(v) + m * m - 1 - v).sum(-1)
        lr_ = 0.5 * (zz * zz - eps * eps - v).sum(-1)
        return zz, kl_, lr_

    def unfused_forward():
        unfused(mean, log_var)

    def unfused_both():
        outs = unfused(mean_p, lv_p)
        torch.autograd.backward(outs, (g_z, g_kl, g_lr))

    item = 4
    fwd_bytes = item * (2 * batch * dim + k * batch * dim + batch + k * batch)
    bwd_bytes = item * (4 * batch * dim + k * batch * dim + batch + k * batch)
    # A copy of S bytes reads S and writes S: copy half the bytes moved.
    copy_src = {b: torch.empty(b // 2, dtype=torch.uint8, device=dev)
                for b in (fwd_bytes, fwd_bytes + bwd_bytes)}
    copy_dst = {b: torch.empty_like(t) for b, t in copy_src.items()}
    t = event_median_s({
        "fused_fwd": fused_forward,
        "fused_both": fused_both,
        "unfused_fwd": unfused_forward,
        "unfused_both": unfused_both,
        "copy_fwd": lambda: copy_dst[fwd_bytes].copy_(copy_src[fwd_bytes]),
        "copy_both": lambda: copy_dst[fwd_bytes + bwd_bytes].copy_(
            copy_src[fwd_bytes + bwd_bytes]),
    }, calls, repeats)
    return {
        "shape": (batch, dim, k),
        "fwd_us": t["fused_fwd"] * 1e6,
        "fwd_gbs": fwd_bytes / t["fused_fwd"] / 1e9,
        "fwd_roofline": t["copy_fwd"] / t["fused_fwd"],
        "fwd_speedup": t["unfused_fwd"] / t["fused_fwd"],
        "both_us": t["fused_both"] * 1e6,
        "both_gbs": (fwd_bytes + bwd_bytes) / t["fused_both"] / 1e9,
        "both_roofline": t["copy_both"] / t["fused_both"],
        "both_speedup": t["unfused_both"] / t["fused_both"],
    }


def report(rows, device):
    lines = [
        SECTION,
        "",
        f"Device: {device}. float32, CUDA-event medians; roofline = time of a "
        "device-to-device copy of the same bytes / kernel time; speed-up = "
        "unfused PyTorch (randn, exp, mul, add, reductions; autograd for the "
        "backward) / fused. Produced by `python -m benchmarks.gpu_bench`.",
        "",
        "| (B, D, K) | fwd µs | fwd GB/s | fwd % of copy | fwd speed-up "
        "| fwd+bwd µs | fwd+bwd GB/s | fwd+bwd % of copy | fwd+bwd speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['fwd_us']:.1f} | {r['fwd_gbs']:.0f} "
            f"| {100 * r['fwd_roofline']:.0f}% | {r['fwd_speedup']:.1f}× "
            f"| {r['both_us']:.1f} | {r['both_gbs']:.0f} "
            f"| {100 * r['both_roofline']:.0f}% | {r['both_speedup']:.1f}× |")
    by_shape = {r["shape"]: r for r in rows}
    big, small = by_shape.get((4096, 256, 16)), by_shape.get((128, 32, 1))
    if big and small:
        lines += [
            "",
            "Targets (H100): forward at (4096, 256, 16) ≥ 70% of copy: "
            f"{100 * big['fwd_roofline']:.0f}%; forward+backward ≥ 4× unfused "
            f"there: {big['both_speedup']:.1f}×, ≥ 3× at (128, 32, 1): "
            f"{small['both_speedup']:.1f}×.",
        ]
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
    parser.add_argument("--calls", type=int, default=50,
                        help="back-to-back calls per timed sample")
    parser.add_argument("--repeats", type=int, default=21,
                        help="timed samples per candidate")
    parser.add_argument("--write", metavar="PATH",
                        help="put the table under '## GPU (CUDA)' in PATH")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        parser.error("no CUDA device is visible to PyTorch")
    kernels = load_kernels()
    if kernels is None or not kernels.build_info()["cuda"]:
        parser.error("keras_vae._kernels was built without CUDA")
    rows = [bench_shape(kernels, b, d, k, args.calls, args.repeats)
            for b, d, k in SHAPES]
    text = report(rows, torch.cuda.get_device_name())
    print(text)
    if args.write:
        write_section(args.write, text)


if __name__ == "__main__":
    main()
