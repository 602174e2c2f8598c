"""End to end: examples per second of `fit`, `keras_vae.VAE` against a
plain Keras VAE.

The model is the one-stochastic-layer MLP of Burda et al. (2015):
784-200-200-50 with tanh, a Bernoulli decoder on logits. `keras_vae.VAE`
gets it from `keras_vae.presets`. The plain Keras model is written the way
the official Keras VAE example writes its VAE (a `Sampling` layer with
`keras.random.normal`, the KL and the loss in `keras.ops`, `train_step` with
a `tf.GradientTape`), with K samples drawn at once and the decoder run on
all of them; its decoder takes logits (`from_logits=True`), the same model
and the cheaper loss. The data are random binary 28x28 images: throughput
does not depend on what the pixels are.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import keras_vae
from keras_vae import presets
from benchmarks.timing import interleaved_medians, paired_ratio

IMAGE_SHAPE = (28, 28, 1)
LATENT_DIM = 50
HIDDEN = (200, 200)


class Sampling(keras.layers.Layer):
    """z = mean + exp(log_var / 2) * eps for K samples, as in the example."""

    def __init__(self, num_samples, **kwargs):
        super().__init__(**kwargs)
        self.num_samples = num_samples
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        batch, dim = ops.shape(z_mean)[0], ops.shape(z_mean)[1]
        epsilon = keras.random.normal(
            shape=(self.num_samples, batch, dim), seed=self.seed_generator
        )
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon


class PlainKerasVAE(keras.Model):
    """The Keras example's VAE, K samples per example."""

    def __init__(self, num_samples, **kwargs):
        super().__init__(**kwargs)
        self.num_samples = num_samples
        images = keras.Input(IMAGE_SHAPE)
        h = keras.layers.Flatten()(images)
        for units in HIDDEN:
            h = keras.layers.Dense(units, activation="tanh")(h)
        z_mean = keras.layers.Dense(LATENT_DIM, name="z_mean")(h)
        z_log_var = keras.layers.Dense(LATENT_DIM, name="z_log_var")(h)
        self.encoder = keras.Model(images, [z_mean, z_log_var])
        z = keras.Input((LATENT_DIM,))
        h = z
        for units in HIDDEN:
            h = keras.layers.Dense(units, activation="tanh")(h)
        logits = keras.layers.Dense(int(np.prod(IMAGE_SHAPE)))(h)
        logits = keras.layers.Reshape(IMAGE_SHAPE)(logits)
        self.decoder = keras.Model(z, logits)
        self.sampling = Sampling(num_samples)
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        self.reconstruction_loss_tracker = keras.metrics.Mean(
            name="reconstruction_loss"
        )
        self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

    @property
    def metrics(self):
        return [
            self.total_loss_tracker,
            self.reconstruction_loss_tracker,
            self.kl_loss_tracker,
        ]

    def train_step(self, data):
        data, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            z_mean, z_log_var = self.encoder(data)
            z = self.sampling([z_mean, z_log_var])
            logits = self.decoder(ops.reshape(z, (-1, LATENT_DIM)))
            targets = ops.reshape(
                ops.tile(data[None], (self.num_samples, 1, 1, 1, 1)),
                (-1, *IMAGE_SHAPE),
            )
            reconstruction_loss = self.num_samples ** -1 * ops.sum(
                keras.losses.binary_crossentropy(
                    targets, logits, from_logits=True
                )
            ) / ops.cast(ops.shape(data)[0], "float32")
            kl_loss = -0.5 * (
                1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var)
            )
            kl_loss = ops.mean(ops.sum(kl_loss, axis=1))
            total_loss = reconstruction_loss + kl_loss
        grads = tape.gradient(total_loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.total_loss_tracker.update_state(total_loss)
        self.reconstruction_loss_tracker.update_state(reconstruction_loss)
        self.kl_loss_tracker.update_state(kl_loss)
        return {m.name: m.result() for m in self.metrics}


def keras_vae_model(num_samples, implementation="auto", **kwargs):
    encoder, decoder = presets.build(
        "mlp", IMAGE_SHAPE, latent_dim=LATENT_DIM
    )
    return keras_vae.VAE(
        encoder,
        decoder,
        "bernoulli",
        num_samples,
        implementation=implementation,
        **kwargs,
    )


def _compiled(model, jit_compile):
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    return model


def candidates(num_samples):
    """name -> (model builder); the names appear in the tables.

    The VAE also runs on the op's pure-TensorFlow reference, which isolates
    what the fused op itself contributes to the step, and without its check
    for a non-finite loss or gradient, which measures what the check costs.
    """
    return {
        "keras_vae.VAE": lambda: _compiled(keras_vae_model(num_samples), "auto"),
        "keras_vae.VAE, no NaN check": lambda: _compiled(
            keras_vae_model(num_samples, stop_on_nonfinite=False), "auto"
        ),
        "keras_vae.VAE, reference op": lambda: _compiled(
            keras_vae_model(num_samples, implementation="reference"), "auto"
        ),
        "plain Keras": lambda: _compiled(PlainKerasVAE(num_samples), "auto"),
        "plain Keras, XLA": lambda: _compiled(
            PlainKerasVAE(num_samples), True
        ),
    }


def _dataset(batch_size, steps):
    rng = np.random.default_rng(0)
    images = (rng.random((batch_size * steps, *IMAGE_SHAPE)) < 0.3).astype(
        "float32"
    )
    return (
        tf.data.Dataset.from_tensor_slices(images)
        .batch(batch_size, drop_remainder=True)
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )


def _train_step_peak_bytes(model, batch):
    """Peak allocator bytes of one `train_on_batch`, past what was in use."""
    model.train_on_batch(batch)
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    model.train_on_batch(batch)
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def run(steps_per_k, batch_size, repeats, log=print):
    """`fit` throughput of each candidate for each K.

    Args:
        steps_per_k: dict K -> training steps per timed `fit` call; fewer
            for larger K keep calls short, so that outside load, which comes
            and goes, is spread over many interleaved samples.
        batch_size: examples per step.
        repeats: timed `fit` calls per candidate.

    Returns:
        list of {"K", "batch_size", "steps", "candidates": {name: {...}},
        "summary"}.
    """
    dataset = _dataset(batch_size, max(steps_per_k.values()))
    batch = next(iter(dataset))
    rows = []
    for num_samples, steps in steps_per_k.items():
        models = {n: build() for n, build in candidates(num_samples).items()}

        def fit_once(model):
            return lambda: model.fit(
                dataset,
                epochs=1,
                steps_per_epoch=steps,
                shuffle=False,
                verbose=0,
            )

        # One fit call per sample; the first (tracing, compiling) is warm-up.
        timings = interleaved_medians(
            {n: fit_once(m) for n, m in models.items()},
            repeats,
            min_sample_s=0.0,
        )
        row = {
            "K": num_samples,
            "batch_size": batch_size,
            "steps": steps,
            "candidates": {},
        }
        for name, model in models.items():
            row["candidates"][name] = {
                "median_s": timings[name]["median_s"],
                "examples_per_s": batch_size * steps / timings[name]["median_s"],
                "samples_s": timings[name]["samples_s"],
                "jit_compile": bool(model.jit_compile),
                "train_step_peak_bytes": _train_step_peak_bytes(model, batch),
            }
        best_plain = min(
            (n for n in timings if n.startswith("plain")),
            key=lambda n: timings[n]["median_s"],
        )
        ratio = paired_ratio(timings[best_plain], timings["keras_vae.VAE"])
        # Time with the check over time without it, less one.
        check_cost = paired_ratio(
            timings["keras_vae.VAE"], timings["keras_vae.VAE, no NaN check"]
        ) - 1.0
        row["summary"] = {"best_plain": best_plain, "ratio_vs_best_plain": ratio,
                          "nonfinite_check_cost": check_cost}
        rows.append(row)
        log(
            f"K={num_samples} fit examples/s: "
            + ", ".join(
                f"{n} {c['examples_per_s']:,.0f}"
                for n, c in row["candidates"].items()
            )
            + f"; VAE / best plain {ratio:.2f}x; NaN check costs "
            f"{100 * check_cost:+.1f}% of a step"
        )
    return rows
