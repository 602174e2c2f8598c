"""The VAE's training step on JAX: stateless, one forward pass under
`jax.vjp` and a pullback per loss (DReG's two), and a non-finite guard
carried in the state, so that no step waits for the host.
"""

import functools

import jax
import keras
from keras import ops

from keras_vae.seeding import next_seed
from keras_vae.training import trainer


class JAXTrainer(trainer.Trainer):
    @property
    def metrics_variables(self):
        # The guard rides in the metrics' state, which Keras threads
        # through every compiled step and gives back to the model.
        return super().metrics_variables + [self._nonfinite_guard.variable]

    def _stateless_scope(self, *pairs):
        mapping = []
        for variables, values in pairs:
            mapping.extend(zip(variables, values))
        return keras.StatelessScope(state_mapping=mapping, collect_losses=True)

    def compute_gradients(self, x, sample_weight=None, seed=None):
        """See `keras_vae.VAE.compute_gradients`: on JAX, taken statelessly
        at the variables' current values."""
        values = lambda vs: [v.value for v in vs]  # noqa: E731
        optimizer = getattr(self, "optimizer", None)
        gradients, losses, report, non_trainable = self._stateless_gradients(
            values(self.trainable_variables),
            values(self.non_trainable_variables),
            values(optimizer.variables) if optimizer else [],
            x,
            sample_weight,
            seed,
        )
        for variable, value in zip(self.non_trainable_variables, non_trainable):
            variable.assign(value)
        return gradients, self.trainable_variables, losses, report

    def _stateless_gradients(
        self,
        trainable,
        non_trainable,
        optimizer_variables,
        x,
        sample_weight,
        seed=None,
    ):
        """Gradients as pure functions of the variables' values.

        One forward pass, two pullbacks for DReG: the encoder's variables
        take the encoder loss's cotangent, the others the loss's.

        Returns:
            `(gradients, losses, report, non_trainable)`, the last the
            non-trainable values after the step (the seed advanced).
        """
        optimizer = getattr(self, "optimizer", None)

        def forward(trainable):
            with self._stateless_scope(
                (self.trainable_variables, trainable),
                (self.non_trainable_variables, non_trainable),
                (optimizer.variables if optimizer else [], optimizer_variables),
            ) as scope:
                step_seed = (
                    next_seed(self.seed_generator) if seed is None else seed
                )
                losses, report = self._objective(x, sample_weight, step_seed)
                scaled = {k: self._scaled(v) for k, v in losses.items()}
            new_non_trainable = [
                scope.get_current_value(v) for v in self.non_trainable_variables
            ]
            return scaled, (losses, report, new_non_trainable)

        scaled, pullback, (losses, report, new_non_trainable) = jax.vjp(
            forward, trainable, has_aux=True
        )

        def gradient(name):
            (gradients,) = pullback(
                {
                    k: ops.ones_like(v) if k == name else ops.zeros_like(v)
                    for k, v in scaled.items()
                }
            )
            return gradients

        gradients = gradient("loss")
        mask = self._encoder_mask()
        if any(mask):
            # Unused entries of each pullback are pruned under jit.
            encoder_gradients = gradient("encoder_loss")
            gradients = [
                e if m else g
                for m, e, g in zip(mask, encoder_gradients, gradients)
            ]
        return gradients, losses, report, new_non_trainable

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_variables, metrics_variables = (
            state
        )
        *metrics_variables, first_step = metrics_variables
        inputs, sample_weight = self._unpack_data(data)
        gradients, losses, report, new_non_trainable = (
            self._stateless_gradients(
                trainable, non_trainable, optimizer_variables, inputs,
                sample_weight,
            )
        )
        new_trainable, new_optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, gradients, trainable
        )
        logs, new_metrics_variables = self._stateless_metrics(
            metrics_variables, losses["loss"], report, sample_weight
        )
        if self.stop_on_nonfinite:
            # Nothing can raise inside jit: the first bad step is carried,
            # it and every later step keep the state they were given, and
            # the train function raises once the value reaches the host.
            finite = trainer.all_finite(
                self._checked_tensors(losses["loss"], gradients)
            )
            step = _iterations(self.optimizer, optimizer_variables) + 1
            first_step, apply = trainer.next_nonfinite_step(
                first_step, finite, step
            )
            keep = lambda new, old: [  # noqa: E731
                ops.where(apply, n, o) for n, o in zip(new, old)
            ]
            new_trainable = keep(new_trainable, trainable)
            new_non_trainable = keep(new_non_trainable, non_trainable)
            new_optimizer_variables = keep(
                new_optimizer_variables, optimizer_variables
            )
            new_metrics_variables = keep(
                new_metrics_variables, metrics_variables
            )
            logs[trainer.NONFINITE_LOG] = first_step
        state = (
            new_trainable,
            new_non_trainable,
            new_optimizer_variables,
            [*new_metrics_variables, first_step],
        )
        return logs, state

    def _stateless_metrics(self, metrics_variables, loss, report, sample_weight):
        metrics = self.metrics_variables[:-1]
        with self._stateless_scope((metrics, metrics_variables)) as scope:
            logs = self._update_metrics(loss, report, sample_weight)
        return logs, [scope.get_current_value(v) for v in metrics]

    def make_train_function(self, force=False):
        previous = self.train_function
        super().make_train_function(force=force)
        if self.train_function is previous:
            return
        step_function = self.train_function
        # A guard's value is read once its step has finished, so the host
        # never waits for the device here.
        pending = self._nonfinite_guard.pending

        def train_function(state, iterator):
            logs, state = step_function(state, iterator)
            first_step = logs.pop(trainer.NONFINITE_LOG, None)
            if first_step is None:
                return logs, state
            pending.append(first_step)
            ready = [i for i, v in enumerate(pending) if v.is_ready()]
            if ready:
                value = int(pending[ready[-1]])
                del pending[: ready[-1] + 1]
                if value:
                    pending.clear()
                    # Every step since the bad one kept the state: give it
                    # back to the model, as fit does when it ends, with the
                    # guard cleared, as this error reports it.
                    trainable, non_trainable, optimizer_variables, metrics = (
                        state
                    )
                    self._jax_state = {
                        "trainable_variables": trainable,
                        "non_trainable_variables": non_trainable,
                        "optimizer_variables": optimizer_variables,
                        "metrics_variables": [
                            *metrics[:-1], ops.zeros_like(metrics[-1])
                        ],
                    }
                    self._jax_state_synced = False
                    raise FloatingPointError(trainer.nonfinite_message(value))
            return logs, state

        self.train_function = train_function

    def jax_state_sync(self):
        # Keras syncs the state at the end of each epoch: the guard's last
        # value is read there.
        super().jax_state_sync()
        if not self.stop_on_nonfinite:
            return
        first_step = int(self._nonfinite_guard.variable.value)
        if first_step:
            self._nonfinite_guard.reset()
            raise FloatingPointError(trainer.nonfinite_message(first_step))

    def _compiled_chunk_logsumexp(self):
        """The chunk jitted as a pure function of the variables' values,
        which it takes as arguments (a jitted method would hold those of
        its first call as constants); one compilation per sample count."""
        compiled = getattr(self, "_chunk_functions", None)
        if compiled is None:
            compiled = self._chunk_functions = {}

        def stateless(trainable, non_trainable, x, seed, num_samples):
            with self._stateless_scope(
                (self.trainable_variables, trainable),
                (self.non_trainable_variables, non_trainable),
            ):
                return self._chunk_logsumexp(x, num_samples, seed)

        def chunk(x, num_samples, seed):
            if num_samples not in compiled:
                compiled[num_samples] = jax.jit(
                    functools.partial(stateless, num_samples=num_samples)
                )
            return compiled[num_samples](
                [v.value for v in self.trainable_variables],
                [v.value for v in self.non_trainable_variables],
                x,
                seed,
            )

        return chunk

    def test_step(self, state, data):
        trainable, non_trainable, metrics_variables = state
        *metrics_variables, first_step = metrics_variables
        inputs, sample_weight = self._unpack_data(data)
        with self._stateless_scope(
            (self.trainable_variables, trainable),
            (self.non_trainable_variables, non_trainable),
        ) as scope:
            losses, report = self._objective(
                inputs, sample_weight, next_seed(self.seed_generator)
            )
        non_trainable = [
            scope.get_current_value(v) for v in self.non_trainable_variables
        ]
        logs, metrics_variables = self._stateless_metrics(
            metrics_variables, losses["loss"], report, sample_weight
        )
        return logs, (
            trainable, non_trainable, [*metrics_variables, first_step]
        )


def _iterations(optimizer, optimizer_variables):
    """The optimizer's step counter among its stateless values."""
    for variable, value in zip(optimizer.variables, optimizer_variables):
        if variable is optimizer.iterations:
            return value
    return optimizer.iterations.value
