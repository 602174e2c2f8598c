"""A small VAE and data set shared by the reliability tests and their
subprocess workers, so that every process builds the same model."""

import keras
import numpy as np

import keras_vae

INPUT_DIM = 12
LATENT_DIM = 3
NUM_EXAMPLES = 32
NUM_CLASSES = 3


def data(seed=0, num_examples=NUM_EXAMPLES):
    """Binary data, float32 `[num_examples, INPUT_DIM]`."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=(num_examples, INPUT_DIM)) < 0.3).astype("float32")


def build(
    seed=0,
    num_samples=2,
    objective="elbo",
    fixed_log_var=None,
    **vae_kwargs,
):
    """A VAE with an MLP encoder and decoder, weights drawn from `seed`.

    With `fixed_log_var` the encoder's log-variance is that constant (not
    trained): at -30 the noise moves z by ~1e-7 of its scale, so training
    is deterministic whatever noise each device draws.
    """
    init = lambda i: keras.initializers.GlorotUniform(seed=seed * 10 + i)  # noqa: E731
    x = keras.Input((INPUT_DIM,))
    h = keras.layers.Dense(16, activation="tanh", kernel_initializer=init(0))(x)
    if fixed_log_var is None:
        mean, log_var = keras_vae.layers.GaussianEncoderHead(
            LATENT_DIM, kernel_initializer=init(1)
        )(h)
    else:
        mean = keras.layers.Dense(LATENT_DIM, kernel_initializer=init(1))(h)
        log_var = keras.layers.Dense(
            LATENT_DIM,
            kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant(fixed_log_var),
            trainable=False,
        )(h)
    encoder = keras.Model(x, [mean, log_var], name="encoder")
    z = keras.Input((LATENT_DIM,))
    g = keras.layers.Dense(16, activation="tanh", kernel_initializer=init(2))(z)
    logits = keras.layers.Dense(INPUT_DIM, kernel_initializer=init(3))(g)
    decoder = keras.Model(z, logits, name="decoder")
    return keras_vae.VAE(
        encoder,
        decoder,
        "bernoulli",
        num_samples=num_samples,
        objective=objective,
        seed=seed,
        **vae_kwargs,
    )


class BatchLosses(keras.callbacks.Callback):
    """Records `logs["loss"]` after every training batch."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def labels(num_examples=NUM_EXAMPLES):
    """Class labels for `data`'s examples, `[num_examples]` in
    `[0, NUM_CLASSES)`."""
    return np.arange(num_examples) % NUM_CLASSES


def build_conditional(**kwargs):
    """A ConditionalVAE of `build`'s sizes, given one-hot labels, with a
    learned prior; weights drawn from fixed initializer seeds."""
    init = lambda i: keras.initializers.GlorotUniform(seed=20 + i)  # noqa: E731
    n, d = INPUT_DIM, LATENT_DIM

    def with_labels(size):
        inputs = [keras.Input((size,)), keras.Input((NUM_CLASSES,))]
        return inputs, keras.layers.Concatenate()(inputs)

    inputs, h = with_labels(n)
    h = keras.layers.Dense(16, activation="tanh", kernel_initializer=init(0))(h)
    encoder = keras.Model(inputs, keras_vae.layers.GaussianEncoderHead(
        d, kernel_initializer=init(1))(h))
    inputs, h = with_labels(d)
    h = keras.layers.Dense(16, activation="tanh", kernel_initializer=init(2))(h)
    decoder = keras.Model(
        inputs, keras.layers.Dense(n, kernel_initializer=init(3))(h))
    one_hot = keras.Input((NUM_CLASSES,))
    prior = keras.Model(one_hot, keras_vae.layers.GaussianEncoderHead(
        d, kernel_initializer=init(4),
        bias_initializer=keras.initializers.RandomNormal(seed=30),
    )(one_hot))
    return keras_vae.ConditionalVAE(
        encoder, decoder, prior=prior, num_classes=NUM_CLASSES, seed=0,
        **kwargs,
    )
