"""What the VAE's training steps share on every backend.

`Trainer` is the part of `keras_vae.VAE` that Keras's backend trainers
leave to the model: which loss trains which variable (DReG), the metrics,
and the non-finite guard. Each backend's module beside this one
(`tensorflow.py`, `jax.py`, `torch.py`) adds the gradient and the update
with its own autodiff, as `keras/src/backend/*/trainer.py` do for Keras.
"""

import keras
from keras import ops

# The non-finite guard's message, around the failing step's number.
NONFINITE_HEAD = (
    "keras_vae: the loss or a gradient is NaN or Inf at training step "
    "(counted from 1)"
)
NONFINITE_TAIL = (
    "; the weights were not updated. Look for NaN/Inf in the data or a "
    "diverging learning rate (stop_on_nonfinite=False turns this check off)."
)
# The log entry that carries the first non-finite step (0: none) out of a
# compiled train function, read and dropped before Keras sees the logs.
NONFINITE_LOG = "_keras_vae_nonfinite_step"


def nonfinite_message(step):
    return f"{NONFINITE_HEAD} {step}{NONFINITE_TAIL}"


def all_finite(tensors):
    """Whether every value of `tensors` is finite, as one scalar: one sum
    of `t * 0` per tensor (0 where finite, NaN where not), all added, so
    compilers fuse it into the pass that produced each tensor. A sum of
    the values themselves could overflow; zeros cannot."""
    total = ops.zeros((), "float32")
    for t in tensors:
        total = total + ops.cast(ops.sum(t * 0), "float32")
    return ops.isfinite(total)


def split_gradients(mask, variables, encoder_gradients, gradients):
    """The gradients of `variables`, in order: `encoder_gradients(vs)` for
    those `mask` marks, `gradients(vs)` for the others."""
    encoder = [i for i, m in enumerate(mask) if m]
    others = [i for i, m in enumerate(mask) if not m]
    by_index = {}
    for indices, take in ((encoder, encoder_gradients), (others, gradients)):
        if indices:
            by_index.update(zip(indices, take([variables[i] for i in indices])))
    return [by_index[i] for i in range(len(mask))]


class NonfiniteGuardState:
    """The first non-finite training step (0 while there is none), in a
    variable that compiled steps carry: once it is set, later steps of the
    same compiled call change nothing, and the step is raised where the
    train function returns. A plain object, so that saving skips it."""

    def __init__(self):
        self.variable = keras.Variable(
            0, dtype="int32", trainable=False, name="nonfinite_step"
        )
        # Values of the variable returned by compiled calls, not read yet.
        self.pending = []

    def reset(self):
        self.variable.assign(0)
        self.pending.clear()


def next_nonfinite_step(first_step, finite, step):
    """The guard's carried value after a step: unchanged once set, else
    `step` when this step is not finite. Returns `(first_step, apply)`,
    `apply` whether the step may update anything."""
    step = ops.cast(step, "int32")
    clean = ops.equal(first_step, 0)
    apply = ops.logical_and(clean, finite)
    first_step = ops.where(
        ops.logical_or(apply, ops.logical_not(clean)), first_step, step
    )
    return first_step, apply


class Trainer:
    """The shared half of the VAE's training: mixed into `keras_vae.VAE`
    before `keras.Model`, under one backend class per Keras backend.

    The model supplies `_objective(inputs, sample_weight, seed)` (encode,
    sample, decode, bound), `_unpack_data`, `inference_networks`, the
    metric trackers and `stop_on_nonfinite`.
    """

    def _encoder_mask(self):
        """Per trainable variable, whether the encoder loss trains it: with
        DReG the encoder's variables, otherwise none."""
        variables = self.trainable_variables
        if self.gradient_estimator != "dreg":
            return [False] * len(variables)
        encoder_ids = {
            id(v)
            for network in self.inference_networks
            for v in network.trainable_variables
        }
        return [id(v) in encoder_ids for v in variables]

    def _scaled(self, loss):
        """The loss the gradient is taken of: scaled by a
        LossScaleOptimizer. Before compile there is no optimizer, hence no
        loss scaling."""
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None:
            return loss
        return optimizer.scale_loss(loss)

    def _checked_tensors(self, loss, gradients):
        """What the non-finite guard looks at: the loss, and the gradients
        unless a LossScaleOptimizer skips overflowing steps itself."""
        checked = [loss]
        if not isinstance(
            self.optimizer, keras.optimizers.LossScaleOptimizer
        ):
            checked += [g for g in gradients if g is not None]
        return checked

    def _update_metrics(self, loss, report, sample_weight):
        """The trackers updated from the step's terms, computed once by
        the bound; returns the logs."""
        batch_size = ops.shape(report["bound"])[0]
        self.loss_tracker.update_state(loss, sample_weight=batch_size)
        for tracker, values in (
            (self.bound_tracker, report["bound"]),
            (self.reconstruction_tracker, report["reconstruction"]),
            (self.kl_tracker, report["kl"]),
        ):
            tracker.update_state(values, sample_weight=sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def _compiled_chunk_logsumexp(self):
        """`_chunk_logsumexp(x, num_samples, seed)` as `log_likelihood`
        runs it: eagerly here (PyTorch, whose inference methods run under
        `torch.no_grad()`); compiled by the backends that compile."""
        return self._chunk_logsumexp

    def _step_terms(self, data, seed=None):
        """One step's gradients and terms: `(gradients, variables, loss,
        report, sample_weight)`."""
        inputs, sample_weight = self._unpack_data(data)
        gradients, variables, losses, report = self.compute_gradients(
            inputs, sample_weight, seed
        )
        return gradients, variables, losses["loss"], report, sample_weight
