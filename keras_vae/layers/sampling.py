"""`Sampling`: reparameterized draws from N(mean, exp(log_var))."""

import keras
from keras import ops

from keras_vae import ops as vae_ops
from keras_vae import seeding
from keras_vae.checks import check_count
from keras_vae.checks import check_implementation

MODES = ("sample", "mean")


@keras.saving.register_keras_serializable(package="keras_vae")
class Sampling(seeding.SavesSeedState, keras.layers.Layer):
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
        seed: the initial seed of the layer's seed generator: an int, a pair
            of ints or `None` for a random one (see `keras_vae.seeding`), or
            a `keras.random.SeedGenerator` to draw from, as `keras.random`
            functions take (its initial seed is what `get_config` saves).
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
        num_samples = check_count(num_samples, allow_none=True)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        check_implementation(implementation)
        self.num_samples = num_samples
        self.seed = seeding.config_seed(seed)
        self.mode = mode
        self.add_kl_loss = bool(add_kl_loss)
        self.implementation = implementation
        self.seed_generator = seeding.seed_generator(seed)
        # Built now, unless a subclass creates weights in its own `build`.
        self._build_at_init()

    def call(self, inputs):
        mean, log_var = inputs
        k = 1 if self.num_samples is None else self.num_samples
        if self.mode == "sample" or self.add_kl_loss:
            z, kl, _ = vae_ops.reparameterize_kl(
                mean,
                log_var,
                num_samples=k,
                seed=seeding.next_seed(self.seed_generator),
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
