"""The VAE's training step on PyTorch: `torch.autograd.grad` per loss
(DReG's two share one graph), the non-finite guard as one fused check,
and the metrics outside autograd.
"""

import torch

from keras_vae.seeding import next_seed
from keras_vae.training import trainer


class TorchTrainer(trainer.Trainer):
    def compute_gradients(self, x, sample_weight=None, seed=None):
        """See `keras_vae.VAE.compute_gradients`."""
        if seed is None:
            seed = next_seed(self.seed_generator)
        losses, report = self._objective(x, sample_weight, seed)
        scaled = {k: self._scaled(v) for k, v in losses.items()}
        mask = self._encoder_mask()

        def gradient(loss, retain):
            def of(variables):
                if not variables:
                    return []
                grads = torch.autograd.grad(
                    loss,
                    [v.value for v in variables],
                    retain_graph=retain,
                    allow_unused=True,
                )
                return [
                    torch.zeros_like(v.value) if g is None else g
                    for v, g in zip(variables, grads)
                ]

            return of

        gradients = trainer.split_gradients(
            mask,
            self.trainable_variables,
            gradient(scaled.get("encoder_loss"), retain=True),
            gradient(scaled["loss"], retain=False),
        )
        return gradients, self.trainable_variables, losses, report

    def train_step(self, data):
        gradients, variables, loss, report, sample_weight = self._step_terms(
            data
        )
        loss = loss.detach()
        if self.stop_on_nonfinite and not _all_finite(
            self._checked_tensors(loss, gradients)
        ):
            # Keras's PyTorch trainer runs one step per call, eagerly: the
            # step raises before its update.
            step = int(self.optimizer.iterations) + 1
            raise FloatingPointError(trainer.nonfinite_message(step))
        with torch.no_grad():
            self.optimizer.apply(gradients, variables)
            return self._update_metrics(
                loss,
                {k: v.detach() for k, v in report.items()},
                sample_weight,
            )

    def _compiled_chunk_logsumexp(self):
        """Eager, as Keras runs PyTorch by default; with
        `compile(jit_compile=True)`, as for Keras's PyTorch trainer, through
        `torch.compile`, which fuses the decoder's last layer with the
        likelihood's terms: a chunk of the MLP preset at k=5000 took
        85 ms against 140 ms eager, after a compilation of about 25 s
        (BENCHMARKS.md), so it pays off for large evaluations."""
        if not self.jit_compile:
            return self._chunk_logsumexp
        chunk = getattr(self, "_chunk_function", None)
        if chunk is None:
            chunk = self._chunk_function = torch.compile(
                self._chunk_logsumexp, dynamic=True
            )
        return chunk

    def test_step(self, data):
        inputs, sample_weight = self._unpack_data(data)
        with torch.no_grad():
            losses, report = self._objective(
                inputs, sample_weight, next_seed(self.seed_generator)
            )
            return self._update_metrics(losses["loss"], report, sample_weight)


def _all_finite(tensors):
    """Whether every value of `tensors` is finite: PyTorch's fused check of
    mixed precision (one kernel over all the tensors, scaling by 1), then
    one read of its flag."""
    found = torch.zeros(1, device=tensors[0].device)
    scale = torch.ones(1, device=tensors[0].device)
    # It scales in place, by 1: a copy of the loss, the gradients as they
    # are (a broadcast view, which cannot be written, as a copy).
    tensors = [
        tensors[0].reshape(1).clone(),
        *(t.contiguous() for t in tensors[1:]),
    ]
    by_dtype = {}
    for t in tensors:
        by_dtype.setdefault((t.device, t.dtype), []).append(t)
    for group in by_dtype.values():
        torch._amp_foreach_non_finite_check_and_unscale_(group, found, scale)
    return not bool(found)
