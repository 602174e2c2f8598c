"""Memory of one training step of the latent layer, fused and unfused.

Measured with TensorFlow's CPU allocator statistics
(`tf.config.experimental.get_memory_info`): bytes of tensors that TensorFlow
allocates, not memory that oneDNN or Python allocate on their own (and, in
TensorFlow 2.21, not the smallest tensors either, so tiny sizes read 0).
Figures per candidate, relative to the memory in use before the step:

- "kept for backward" (eager only): what is still allocated once the loss is
  computed and before the gradient runs: the outputs plus everything the
  tape holds on to for the backward pass. "Kept by the latent step" takes
  off what the loss alone keeps (its `z * weight`), measured the same way on
  a `z` that already exists, so it counts `z` and what the latent
  computation's own gradient needs;
- "peak": the high-water mark over the whole forward+backward step, eager
  and in `tf.function` (a graph runs the step as a whole, so only its peak
  is observable).

The allocator (TensorFlow's BFC allocator) counts whole chunks and hands
out a free chunk unsplit when it is less than twice the request, so one
tensor can count for up to twice its size, depending on what ran before: a
single 2 MiB tensor has been seen to count 3.3 MiB. A [K, B, D] tensor can
therefore read 1.4 tensors in one run and 1.0 in the next.
"""

import tensorflow as tf

from benchmarks.latent import (
    COMPUTATIONS,
    forward_backward_step,
    in_mode,
    make_inputs,
    step_loss,
)

DEVICE = "CPU:0"
# Unfused: the computation as written in TensorFlow.
CANDIDATES = ("fused", "tf")


def _in_use():
    return tf.config.experimental.get_memory_info(DEVICE)["current"]


def _peak():
    return tf.config.experimental.get_memory_info(DEVICE)["peak"]


def _eager_memory(compute, mean, log_var, num_samples, seed, weight):
    """(kept for backward, peak) of one eager step, in bytes."""
    tf.config.experimental.reset_memory_stats(DEVICE)
    before = _in_use()
    with tf.GradientTape() as tape:
        tape.watch([mean, log_var])
        loss = step_loss(*compute(mean, log_var, num_samples, seed), weight)
    kept = _in_use() - before
    tape.gradient(loss, [mean, log_var])
    return kept, _peak() - before


def _loss_kept(mean, log_var, num_samples, weight):
    """Bytes the loss alone keeps for its backward pass (eager)."""
    z = tf.zeros([num_samples, *mean.shape])
    kl, log_ratio = tf.zeros(mean.shape[:1]), tf.zeros(z.shape[:2])
    before = _in_use()
    with tf.GradientTape() as tape:
        tape.watch(z)
        # The tape drops what it recorded for a loss that no longer exists.
        loss = step_loss(z, kl, log_ratio, weight)
        kept = _in_use() - before
    del tape, loss
    return kept


def _graph_peak(step):
    tf.config.experimental.reset_memory_stats(DEVICE)
    before = _in_use()
    step()
    return _peak() - before


def run(sizes, log=print):
    """Memory of the fused and unfused step at each size.

    Returns:
        list of {"B", "D", "K", "kbd_bytes", "loss_kept_bytes",
        "candidates": {name: {...}}}, in bytes; `kbd_bytes` is one float32
        tensor of shape [K, B, D].
    """
    rows = []
    for batch, dim, num_samples in sizes:
        mean, log_var, seed, weight = make_inputs(batch, dim, num_samples)
        args = (mean, log_var, num_samples, seed, weight)
        kbd_bytes = 4 * num_samples * batch * dim
        loss_kept = _loss_kept(mean, log_var, num_samples, weight)
        row = {
            "B": batch,
            "D": dim,
            "K": num_samples,
            "kbd_bytes": kbd_bytes,
            "loss_kept_bytes": loss_kept,
            "candidates": {},
        }
        for name in CANDIDATES:
            compute = COMPUTATIONS[name][0]
            _eager_memory(compute, *args)  # loads kernels, fills caches
            kept, eager_peak = _eager_memory(compute, *args)
            step = in_mode(forward_backward_step(compute, *args), "function")
            step()
            row["candidates"][name] = {
                "eager_kept_bytes": kept,
                "latent_kept_bytes": kept - loss_kept,
                "eager_peak_bytes": eager_peak,
                "function_peak_bytes": _graph_peak(step),
            }
        rows.append(row)
        log(
            f"{batch}x{dim}x{num_samples} memory, in [K, B, D] tensors: "
            + "; ".join(
                f"{n}: latent step keeps "
                f"{c['latent_kept_bytes'] / kbd_bytes:.2f}, peak eager "
                f"{c['eager_peak_bytes'] / kbd_bytes:.2f}, tf.function "
                f"{c['function_peak_bytes'] / kbd_bytes:.2f}"
                for n, c in row["candidates"].items()
            )
        )
    return rows
