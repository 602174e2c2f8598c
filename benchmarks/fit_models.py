"""The models the end-to-end benchmark trains, on whichever Keras backend
the process runs.

The model is the one-stochastic-layer MLP of Burda et al. (2015):
784-200-200-50 with tanh, a Bernoulli decoder on logits. `keras_vae.VAE`
gets it from `keras_vae.presets`. The plain Keras VAE is what a Keras user
writes without keras-vae, the Keras 3 way so that it runs on every backend:
`keras.ops`, a `SeedGenerator`, the loss in `compute_loss`, K samples drawn
at once and the decoder run on all of them.
"""

import keras
import numpy as np
from keras import ops

IMAGE_SHAPE = (28, 28, 1)
LATENT_DIM = 50
HIDDEN = (200, 200)


def _mlp(inputs, units, out_units):
    h = inputs
    for n in units:
        h = keras.layers.Dense(n, activation="tanh")(h)
    return keras.layers.Dense(out_units)(h) if out_units else h


class PlainKerasVAE(keras.Model):
    """A multi-sample VAE in plain Keras 3: `call` encodes, `compute_loss`
    samples, decodes and returns the negative ELBO."""

    def __init__(self, num_samples, **kwargs):
        super().__init__(**kwargs)
        self.num_samples = num_samples
        images = keras.Input(IMAGE_SHAPE)
        h = _mlp(keras.layers.Flatten()(images), HIDDEN, None)
        self.encoder = keras.Model(
            images,
            [keras.layers.Dense(LATENT_DIM)(h), keras.layers.Dense(LATENT_DIM)(h)],
        )
        z = keras.Input((LATENT_DIM,))
        self.decoder = keras.Model(
            z, _mlp(z, HIDDEN, int(np.prod(IMAGE_SHAPE)))
        )
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, images):
        return self.encoder(images)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        z_mean, z_log_var = y_pred
        batch = ops.shape(z_mean)[0]
        eps = keras.random.normal(
            (self.num_samples, batch, LATENT_DIM), seed=self.seed_generator
        )
        z = z_mean + ops.exp(0.5 * z_log_var) * eps
        logits = self.decoder(ops.reshape(z, (-1, LATENT_DIM)))
        targets = ops.tile(ops.reshape(x, (1, batch, -1)),
                           (self.num_samples, 1, 1))
        logits = ops.reshape(logits, ops.shape(targets))
        reconstruction = ops.sum(
            ops.binary_crossentropy(targets, logits, from_logits=True), axis=-1
        )
        kl = -0.5 * ops.sum(
            1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1
        )
        return ops.mean(reconstruction) + ops.mean(kl)


def keras_vae_model(num_samples, implementation="auto", **kwargs):
    import keras_vae
    from keras_vae import presets

    encoder, decoder = presets.build("mlp", IMAGE_SHAPE, latent_dim=LATENT_DIM)
    return keras_vae.VAE(
        encoder, decoder, "bernoulli", num_samples,
        implementation=implementation, **kwargs,
    )


# (model, jit_compile) of every candidate a backend runs; the names appear in
# the tables with the backend after them.
BACKEND_CANDIDATES = {
    "tensorflow": {
        "keras_vae.VAE": ("keras_vae", "auto"),
        "keras_vae.VAE, XLA": ("keras_vae", True),
        "keras_vae.VAE, no XLA": ("keras_vae", False),
        "keras_vae.VAE, no NaN check": ("keras_vae_unchecked", "auto"),
        "plain Keras": ("plain", "auto"),
        "plain Keras, XLA": ("plain", True),
    },
    "jax": {
        "keras_vae.VAE": ("keras_vae", "auto"),
        "keras_vae.VAE, no NaN check": ("keras_vae_unchecked", "auto"),
        "plain Keras": ("plain", "auto"),
    },
    "torch": {
        "keras_vae.VAE": ("keras_vae", "auto"),
        "keras_vae.VAE, no NaN check": ("keras_vae_unchecked", "auto"),
        "plain Keras": ("plain", "auto"),
    },
}


def build(kind, num_samples, jit_compile):
    if kind == "plain":
        model = PlainKerasVAE(num_samples)
    elif kind == "keras_vae":
        model = keras_vae_model(num_samples)
    elif kind == "keras_vae_unchecked":
        model = keras_vae_model(num_samples, stop_on_nonfinite=False)
    else:
        model = keras_vae_model(num_samples, implementation="reference")
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    return model


def images(batch_size, steps):
    """Random binary images: throughput does not depend on the pixels."""
    rng = np.random.default_rng(0)
    return (rng.random((batch_size * steps, *IMAGE_SHAPE)) < 0.3).astype(
        "float32"
    )
