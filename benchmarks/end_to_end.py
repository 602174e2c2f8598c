"""End to end: examples per second of `fit`, `keras_vae.VAE` against a
plain Keras VAE, on every Keras backend in one interleaved run.

The models are in `benchmarks.fit_models`. Each backend's candidates live
in a worker process of their own (`benchmarks.fit_worker`); this process
times one `fit` call at a time across all of them, in a shuffled order
with a pause before each call (`interleaved_medians`), so load on the
machine spreads over every backend alike and no call starts while another
process's threads still spin.
"""

import json
import os
import subprocess
import sys

from benchmarks.timing import interleaved_medians, paired_ratio

BACKENDS = ("tensorflow", "jax", "torch")
# The pause before each timed fit call: longer than the thread pools of
# TensorFlow, JAX and PyTorch spin after their last work.
SETTLE_S = 0.25
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BackendWorker:
    """A `benchmarks.fit_worker` process for one backend."""

    def __init__(self, backend):
        self.backend = backend
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=os.pathsep.join(
                       p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fit_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO,
        )

    def request(self, cmd, **kwargs):
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the {self.backend} benchmark worker exited with "
                f"{self.proc.wait()}"
            )
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _label(name, backend):
    return f"{name} ({backend})"


def _best(timings, prefix, backend=None):
    names = [
        n for n in timings
        # Options that isolate a cost are controls, not configurations.
        if n.startswith(prefix) and "reference" not in n
        and "no NaN check" not in n
        and (backend is None or n.endswith(f"({backend})"))
    ]
    return min(names, key=lambda n: timings[n]["median_s"]) if names else None


# Comparisons the targets name: (key, keras-vae's backend, the plain
# model's backend); None is the fastest on any backend.
COMPARISONS = (
    ("tf", "tensorflow", "tensorflow"),
    ("jax", "jax", "jax"),
    ("torch", "torch", "torch"),
    ("tf_vs_plain_jax", "tensorflow", "jax"),
    ("any", None, None),
)


def summarize(timings):
    """keras-vae's fastest configuration against the plain VAE's, for each
    comparison in COMPARISONS, as paired ratios (plain time / keras-vae
    time); and what the VAE's check for non-finite steps costs."""
    summary = {}
    for key, vae_backend, plain_backend in COMPARISONS:
        vae = _best(timings, "keras_vae.VAE", vae_backend)
        plain = _best(timings, "plain", plain_backend)
        if vae and plain:
            summary[f"ratio_{key}"] = paired_ratio(timings[plain], timings[vae])
            summary[f"pair_{key}"] = [vae, plain]
    for backend in BACKENDS:
        checked = f"keras_vae.VAE ({backend})"
        unchecked = f"keras_vae.VAE, no NaN check ({backend})"
        if checked in timings and unchecked in timings:
            # Time with the check over time without it, less one.
            key = "nonfinite_check_cost" + (
                "" if backend == "tensorflow" else f"_{backend}"
            )
            summary[key] = (
                paired_ratio(timings[checked], timings[unchecked]) - 1.0
            )
    return summary


def run(steps_per_k, batch_size, repeats, log=print, backends=BACKENDS):
    """`fit` throughput of each candidate for each K.

    Args:
        steps_per_k: dict K -> training steps per timed `fit` call; fewer
            for larger K keep calls short, so that outside load, which comes
            and goes, is spread over many interleaved samples.
        batch_size: examples per step.
        repeats: timed `fit` calls per candidate.

    Returns:
        list of {"K", "batch_size", "steps", "candidates": {name: {...}},
        "summary"}.
    """
    workers = [BackendWorker(b) for b in backends]
    rows = []
    try:
        for num_samples, steps in steps_per_k.items():
            calls, jit = {}, {}
            for w in workers:
                built = w.request("build", K=num_samples, steps=steps,
                                  batch_size=batch_size)
                for name in built["names"]:
                    label = _label(name, w.backend)
                    calls[label] = (
                        lambda w=w, name=name: w.request("fit", name=name)
                    )
                    jit[label] = (w, name, built["jit_compile"][name])
            # One fit call per sample; the first (tracing, compiling) is
            # warm-up.
            timings = interleaved_medians(
                calls, repeats, min_sample_s=0.0, shuffle_seed=num_samples,
                settle_s=SETTLE_S,
            )
            row = {"K": num_samples, "batch_size": batch_size, "steps": steps,
                   "candidates": {}}
            for label, (w, name, jit_compile) in jit.items():
                t = timings[label]
                row["candidates"][label] = {
                    "median_s": t["median_s"],
                    "examples_per_s": batch_size * steps / t["median_s"],
                    "samples_s": t["samples_s"],
                    "jit_compile": jit_compile,
                    "train_step_peak_bytes": w.request(
                        "memory", name=name)["peak_bytes"],
                }
            row["summary"] = summarize(timings)
            rows.append(row)
            log(
                f"K={num_samples} fit examples/s: "
                + ", ".join(
                    f"{n} {c['examples_per_s']:,.0f}"
                    for n, c in row["candidates"].items()
                )
                + f"; fastest VAE / fastest plain "
                f"{row['summary'].get('ratio_any', float('nan')):.2f}x"
            )
    finally:
        for w in workers:
            w.close()
    return rows
