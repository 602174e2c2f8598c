"""Images per second of `VAE.log_likelihood` (k=5000, the MLP preset on
28x28 images, the default batch and chunk sizes) against the decoder's
forward pass alone on the same rows, in the same process, on each backend.

The decoder's forward pass is the floor of the cost: every importance
sample decodes one z. The two are timed in alternation and compared as
paired ratios, so that load on the machine falls on both alike.

    python -m benchmarks.evaluation_speed [--repeats 5] [--backends jax torch]

PyTorch is measured twice: by default (eager) and with the model compiled
with `jit_compile=True` (the chunks through `torch.compile`).
"""

import argparse
import json
import os
import subprocess
import sys

NUM_SAMPLES = 5000
CHUNK_SIZE = 500
BACKENDS = ("tensorflow", "jax", "torch")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
import keras_vae
from keras import ops

num_samples, chunk_size, repeats, jit_compile = (int(a) for a in sys.argv[1:5])
backend = keras.backend.backend()
encoder, decoder = keras_vae.presets.build("mlp", (28, 28, 1))
vae = keras_vae.VAE(encoder, decoder, "bernoulli", seed=0)
if jit_compile:
    vae.compile("adam", jit_compile=True)
batch = vae._log_likelihood_batch_size(chunk_size)
x = (np.random.default_rng(0).uniform(size=(batch, 28, 28, 1)) < 0.3)
x = x.astype("float32")
z = np.random.default_rng(1).standard_normal(
    (chunk_size * batch, vae.latent_dim)).astype("float32")
chunks = num_samples // chunk_size

# The decoder alone, compiled as the chunk is.
if backend == "tensorflow":
    import tensorflow as tf
    from keras_vae.training.tensorflow import _xla_runs_the_kernels
    forward = tf.function(decoder, jit_compile=_xla_runs_the_kernels())
elif backend == "jax":
    import jax
    pure = jax.jit(lambda w, z: decoder.stateless_call(w, [], z)[0])
    forward = lambda z: pure([v.value for v in decoder.trainable_variables], z)
else:
    import torch
    def forward(z):
        with torch.no_grad():
            return decoder(z)
z = ops.convert_to_tensor(z)


def sync(t):
    return np.asarray(ops.convert_to_numpy(t))


def decode_all():
    for _ in range(chunks):
        out = forward(z)
    sync(out)


def log_likelihood():
    sync(vae.log_likelihood(x, num_samples, chunk_size=chunk_size,
                            seed=0, verbose=0))


log_likelihood(); decode_all()  # traces, compiles
times = {"log_likelihood": [], "decoder": []}
for r in range(repeats):
    order = (log_likelihood, decode_all) if r % 2 else (decode_all, log_likelihood)
    for fn in order:
        start = time.perf_counter(); fn()
        times["log_likelihood" if fn is log_likelihood else "decoder"].append(
            time.perf_counter() - start)
ratios = [d / l for d, l in zip(times["decoder"], times["log_likelihood"])]
print("RESULT " + json.dumps({
    "backend": backend + (", jit_compile=True" if jit_compile else ""),
    "batch": batch, "num_samples": num_samples,
    "chunk_size": chunk_size,
    "log_likelihood_images_per_s": batch / float(np.median(times["log_likelihood"])),
    "decoder_images_per_s": batch / float(np.median(times["decoder"])),
    "ratio": float(np.median(ratios)),
    "times": times,
}))
"""


def measure(backend, repeats, num_samples=NUM_SAMPLES, chunk_size=CHUNK_SIZE,
            jit_compile=False):
    """One backend's row, measured in a fresh process; `jit_compile`: the
    model compiled with `jit_compile=True` (on PyTorch, the chunks through
    torch.compile; the first, untimed call compiles)."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(
                   p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(num_samples), str(chunk_size),
         str(repeats), str(int(jit_compile))],
        env=env, cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def markdown(rows):
    lines = [
        "| backend | log_likelihood images/s | decoder alone images/s | "
        "ratio (median of pairs) |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['log_likelihood_images_per_s']:.2f} | "
            f"{r['decoder_images_per_s']:.2f} | {r['ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.evaluation_speed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    args = parser.parse_args(argv)
    rows = []
    runs = [(b, False) for b in args.backends]
    if "torch" in args.backends:
        # PyTorch's default is eager; torch.compile is its opt-in.
        runs.append(("torch", True))
    for backend, jit_compile in runs:
        rows.append(measure(backend, args.repeats, jit_compile=jit_compile))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "times"}),
              flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
