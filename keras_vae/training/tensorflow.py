"""The VAE's training step on TensorFlow: a `tf.GradientTape`, DReG's two
gradients from one persistent tape, and the non-finite guard in the graph.
"""

import tensorflow as tf
from keras import ops
from keras.src.trainers import trainer as keras_trainer

from keras_vae.seeding import next_seed
from keras_vae.training import trainer


class TensorFlowTrainer(trainer.Trainer):
    def _resolve_auto_jit_compile(self):
        """`jit_compile="auto"`: XLA wherever the op's XLA lowering loaded.

        Keras's own "auto" leaves a CPU without XLA. The VAE's step is
        faster with it on a CPU at every K measured (BENCHMARKS.md), since
        the op is one custom call inside the compiled step. Keras's other
        exclusions stay: tf.distribute, and layers that do not support XLA.
        """
        if (
            not self._distribute_strategy
            and _xla_runs_the_kernels()
            and keras_trainer.model_supports_jit(self)
        ):
            return True
        return super()._resolve_auto_jit_compile()

    def _scaled(self, loss):
        # Keras's convention under tf.distribute: each replica's loss is
        # divided by the replica count, and the gradients are summed.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = loss / replicas
        return super()._scaled(loss)

    def compute_gradients(self, x, sample_weight=None, seed=None):
        """See `keras_vae.VAE.compute_gradients`."""
        if seed is None:
            seed = next_seed(self.seed_generator)
        mask = self._encoder_mask()
        with tf.GradientTape(persistent=any(mask)) as tape:
            losses, report = self._objective(x, sample_weight, seed)
            scaled = {k: self._scaled(v) for k, v in losses.items()}
        gradients = trainer.split_gradients(
            mask,
            self.trainable_variables,
            lambda vs: tape.gradient(scaled["encoder_loss"], vs),
            lambda vs: tape.gradient(scaled["loss"], vs),
        )
        del tape
        return gradients, self.trainable_variables, losses, report

    def train_step(self, data):
        gradients, variables, loss, report, sample_weight = self._step_terms(
            data
        )
        if not self.stop_on_nonfinite:
            self.optimizer.apply_gradients(zip(gradients, variables))
        else:
            self._guarded_apply(gradients, variables, loss)
        logs = self._update_metrics(loss, report, sample_weight)
        if self.stop_on_nonfinite and self.jit_compile:
            logs[trainer.NONFINITE_LOG] = self._nonfinite_guard.variable
        return logs

    def _guarded_apply(self, gradients, variables, loss):
        """The update, unless the loss or a gradient is not finite.

        The optimizer's variables are created first, outside the guard's
        control context, from which XLA cannot lift them. In a graph the
        update waits on an assertion, which fails at the step. XLA drops
        assertions, so there the first bad step is carried in a variable,
        that and every later step of the call skip the update, and the
        train function raises after the call.
        """
        if not self.optimizer.built:
            self.optimizer.build(variables)
        finite = trainer.all_finite(self._checked_tensors(loss, gradients))
        step = self.optimizer.iterations + 1
        if not self.jit_compile:
            check = tf.debugging.Assert(
                finite, [trainer.NONFINITE_HEAD, step, trainer.NONFINITE_TAIL]
            )
            with tf.control_dependencies([check]):
                self.optimizer.apply_gradients(zip(gradients, variables))
            return
        guard = self._nonfinite_guard.variable
        first_step, apply = trainer.next_nonfinite_step(
            guard.value, finite, step
        )
        guard.assign(first_step)
        tf.cond(
            apply,
            lambda: self.optimizer.apply_gradients(zip(gradients, variables)),
            lambda: self.optimizer.iterations,
        )

    def _update_metrics(self, loss, report, sample_weight):
        return _replica_logs(super()._update_metrics(loss, report, sample_weight))

    def make_train_function(self, force=False):
        previous = self.train_function
        super().make_train_function(force=force)
        if self.train_function is previous or not self.jit_compile:
            return self.train_function
        step_function = self.train_function

        def train_function(iterator):
            logs = step_function(iterator)
            first_step = logs.pop(trainer.NONFINITE_LOG, None)
            if first_step is not None and int(first_step):
                raise tf.errors.InvalidArgumentError(
                    None, None, trainer.nonfinite_message(int(first_step))
                )
            return logs

        self.train_function = train_function
        return train_function

    def _compiled_chunk_logsumexp(self):
        # XLA fuses the decoder's last layer, the likelihood's terms and
        # the logsumexp, where the op lowers to its compiled kernels.
        chunk = getattr(self, "_chunk_function", None)
        if chunk is None:
            chunk = tf.function(
                self._chunk_logsumexp,
                reduce_retracing=True,
                jit_compile=_xla_runs_the_kernels(),
            )
            self._chunk_function = chunk
        return chunk

    def test_step(self, data):
        inputs, sample_weight = self._unpack_data(data)
        losses, report = self._objective(
            inputs, sample_weight, next_seed(self.seed_generator)
        )
        return self._update_metrics(losses["loss"], report, sample_weight)


def _xla_runs_the_kernels():
    """Whether XLA-compiled functions run the op's compiled kernels here
    (its XLA library loaded, and kernels for the device)."""
    from keras_vae.backend import tensorflow as backend

    return (
        backend.fused_available()
        and backend._xla_unavailable_reason() is None
    )


def _replica_logs(logs):
    """The step's logs in the shape Keras can reduce across replicas.

    Under a MultiWorkerMirroredStrategy with several workers, Keras reduces
    every log with `strategy.reduce("MEAN", value, axis=0)`, which fails on
    scalars (tensorflow/tensorflow#72388). A `[1]` tensor reduces to the
    same mean over the replicas, as a scalar.
    """
    strategy = tf.distribute.get_strategy()
    if (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    ):
        return {name: ops.reshape(value, [1]) for name, value in logs.items()}
    return logs

