"""Peak memory and time of `VAE.log_likelihood` against the number of
examples N, with the README's call (k=5000 importance samples, the default
batch and chunk sizes) on the MLP preset for 28x28 images.

Each N runs in a fresh Python process, so that its peak resident memory
(`VmHWM`) is the call's own and not an earlier, larger one's. The row
records the peak resident memory of the whole process (Python, TensorFlow,
the model and the data included) and the memory before the call.

    python -m benchmarks.log_likelihood 100 1000 10000
"""

import json
import os
import subprocess
import sys

NUM_SAMPLES = 5000
IMAGE_SHAPE = (28, 28, 1)

_CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
import keras_vae

n, num_samples, fashion = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
encoder, decoder = keras_vae.presets.build("mlp", (28, 28, 1))
vae = keras_vae.VAE(encoder, decoder, "bernoulli", seed=0)
if fashion == "1":
    x = keras_vae.datasets.load("fashion_mnist", download=False).arrays["test"]
    x = x[:n]
else:
    x = (np.random.default_rng(0).uniform(size=(n, 28, 28, 1)) < 0.3)
    x = x.astype("float32")


def peak_rss():
    # VmHWM starts afresh with this program; ru_maxrss would also count the
    # parent's memory at the fork that started it.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


vae.log_likelihood(x[:2], num_samples=10, verbose=0)  # traces, warms up
before = peak_rss()
start = time.perf_counter()
out = vae.log_likelihood(x, num_samples=num_samples, verbose=0)
seconds = time.perf_counter() - start
peak = peak_rss()
assert out.shape == (len(x),) and np.all(np.isfinite(out))
print("RESULT " + json.dumps({
    "N": len(x), "seconds": seconds, "peak_rss_bytes": peak,
    "rss_before_bytes": before,
    "batch_size": vae._log_likelihood_batch_size(500),
}))
"""


def measure(n, num_samples=NUM_SAMPLES, fashion_mnist=False):
    """One row: {"N", "seconds", "peak_rss_bytes", "rss_before_bytes",
    "batch_size"} from a fresh process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n), str(num_samples),
         "1" if fashion_mnist else "0"],
        capture_output=True, text=True, env=env, check=True)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def run(sizes, num_samples=NUM_SAMPLES, fashion_mnist=False, log=print):
    rows = []
    for n in sizes:
        row = measure(n, num_samples, fashion_mnist)
        row["num_samples"] = num_samples
        rows.append(row)
        log(f"log_likelihood N={n} k={num_samples}: {row['seconds']:.1f} s, "
            f"peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB "
            f"(before the call {row['rss_before_bytes'] / 2**20:.0f} MiB)")
    return rows


if __name__ == "__main__":
    args = sys.argv[1:]
    fashion = "--fashion-mnist" in args
    sizes = [int(a) for a in args if a != "--fashion-mnist"] or [100, 1000]
    print(json.dumps(run(sizes, fashion_mnist=fashion), indent=1))
