"""`Sampling`: reparameterized draws from N(mean, exp(log_var))."""

import keras
import tensorflow as tf
from keras import ops

from keras_vae import ops as vae_ops

MODES = ("sample", "mean")


def check_num_samples(num_samples, allow_none=False):
    """Raises ValueError unless `num_samples` is an int >= 1 (or None)."""
    if num_samples is None and allow_none:
        return
    if (
        isinstance(num_samples, bool)
        or not isinstance(num_samples, int)
        or num_samples < 1
    ):
        raise ValueError(
            f"num_samples must be an int >= 1, got {num_samples!r}"
        )


def check_implementation(implementation):
    if implementation not in vae_ops.IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {vae_ops.IMPLEMENTATIONS}, got "
            f"{implementation!r}"
        )


def next_seed(seed_generator):
    """The generator's next `[2]` seed, distinct on each replica.

    Under `tf.distribute` every replica runs the same step with the same
    generator state; the replica id is added to the seed so that the
    replicas' examples do not share their noise.
    """
    seed = seed_generator.next()
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        replica = tf.cast(context.replica_id_in_sync_group, seed.dtype)
        seed = seed + tf.stack([replica, tf.zeros_like(replica)])
    return seed


class SavesSeedState:
    """Mixin: saves `self.seed_generator`'s state with the layer's variables.

    Keras saves a layer's own variables but not the state of its
    `SeedGenerator`s; without it a loaded model would restart its random
    stream from the initial seed instead of continuing it.
    """

    _SEED_STATE_KEY = "seed_generator_state"

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[self._SEED_STATE_KEY] = self.seed_generator.state

    def load_own_variables(self, store):
        own = self._trainable_variables + self._non_trainable_variables
        for i, variable in enumerate(own):
            variable.assign(store[f"{i}"])
        if self._SEED_STATE_KEY in store:
            self.seed_generator.state.assign(store[self._SEED_STATE_KEY])


@keras.saving.register_keras_serializable(package="keras_vae")
class Sampling(SavesSeedState, keras.layers.Layer):
    """Draws z = mean + exp(0.5 * log_var) * eps with the fused op.

    A drop-in replacement for the `Sampling` layer of the Keras VAE example,
    called on `[mean, log_var]`. Seeds come from a
    `keras.random.SeedGenerator` whose state is a variable of the layer, so it
    is saved and restored with the model: a loaded model continues the same
    sequence of draws. Inside an XLA-compiled function (`jit_compile=True`)
    the op lowers to the same compiled kernels, with the same noise.

    Args:
        num_samples: `None` for one sample per input with no sample axis, or
            an int K >= 1 for K samples along a new leading axis (also for
            K=1).
        seed: int initial seed of the layer's seed generator, or `None` for
            a random one.
        mode: `"sample"` draws z; `"mean"` returns `mean` (broadcast to
            `[K, ...]` when `num_samples` is an int), the deterministic
            encoding for inference.
        add_kl_loss: if True, adds the analytic KL(q(z|x) || N(0, I)),
            averaged over the batch, with `add_loss`, so that a Functional
            model compiled with a reconstruction loss trains as a VAE. The
            reconstruction loss must then be summed over the event
            dimensions (not averaged per pixel) for the KL to be weighted
            correctly.
        implementation: `"auto"`, `"fused"` or `"reference"`; see
            `keras_vae.ops.reparameterize_kl`.
        **kwargs: base layer keyword arguments, such as `name`.

    Input shape:
        A list `[mean, log_var]`, each `(batch_size, ..., latent_dim)`.

    Output shape:
        `(batch_size, ..., latent_dim)` when `num_samples` is None, otherwise
        `(num_samples, batch_size, ..., latent_dim)`.

    Example:

    >>> z_mean = keras.layers.Dense(2)(features)
    >>> z_log_var = keras.layers.Dense(2)(features)
    >>> z = keras_vae.layers.Sampling()([z_mean, z_log_var])
    """

    def __init__(
        self,
        num_samples=None,
        seed=None,
        mode="sample",
        add_kl_loss=False,
        implementation="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_num_samples(num_samples, allow_none=True)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        check_implementation(implementation)
        self.num_samples = num_samples
        self.seed = seed
        self.mode = mode
        self.add_kl_loss = bool(add_kl_loss)
        self.implementation = implementation
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def call(self, inputs):
        mean, log_var = inputs
        k = 1 if self.num_samples is None else self.num_samples
        if self.mode == "sample" or self.add_kl_loss:
            z, kl, _ = vae_ops.reparameterize_kl(
                mean,
                log_var,
                num_samples=k,
                seed=next_seed(self.seed_generator),
                implementation=self.implementation,
            )
            if self.add_kl_loss:
                self.add_loss(ops.mean(ops.cast(kl, "float32")))
        if self.mode == "mean":
            if self.num_samples is None:
                return mean
            return ops.broadcast_to(mean, (k,) + tuple(ops.shape(mean)))
        return z[0] if self.num_samples is None else z

    def compute_output_shape(self, input_shape):
        mean_shape = tuple(input_shape[0])
        if self.num_samples is None:
            return mean_shape
        return (self.num_samples,) + mean_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_samples": self.num_samples,
                "seed": self.seed,
                "mode": self.mode,
                "add_kl_loss": self.add_kl_loss,
                "implementation": self.implementation,
            }
        )
        return config
