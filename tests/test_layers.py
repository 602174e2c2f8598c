import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import keras
from keras.ops import convert_to_numpy as to_numpy
from sklearn.datasets import load_digits

import keras_vae
from keras_vae.layers import GaussianEncoderHead, Sampling


def _posterior(batch=4, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(batch, dim)).astype("float32")
    log_var = rng.normal(scale=0.5, size=(batch, dim)).astype("float32")
    return mean, log_var


# GaussianEncoderHead


def test_head_is_two_affine_maps():
    head = GaussianEncoderHead(3)
    x = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    mean, log_var = (to_numpy(t) for t in head(x))
    w_m, b_m = (to_numpy(v) for v in head.mean_dense.weights)
    w_v, b_v = (to_numpy(v) for v in head.log_var_dense.weights)
    np.testing.assert_allclose(mean, x @ w_m + b_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_var, x @ w_v + b_v, rtol=1e-5, atol=1e-6)
    assert len(head.trainable_weights) == 4


@pytest.mark.parametrize("bias, expected", [(1e4, 20.0), (-1e4, -30.0)])
def test_head_clips_log_var_to_default_range(bias, expected):
    head = GaussianEncoderHead(2, bias_initializer=keras.initializers.Constant(bias))
    log_var = to_numpy(head(np.ones((3, 4), "float32"))[1])
    np.testing.assert_array_equal(log_var, np.full((3, 2), expected, "float32"))
    assert np.isfinite(np.exp(log_var)).all()


def test_head_custom_range_and_config_round_trip():
    head = GaussianEncoderHead(
        2,
        log_var_range=(-1.0, 1.0),
        bias_initializer=keras.initializers.Constant(5.0),
        kernel_regularizer=keras.regularizers.L2(0.1),
    )
    x = np.ones((3, 4), "float32")
    log_var = to_numpy(head(x)[1])
    np.testing.assert_array_equal(log_var, np.ones((3, 2), "float32"))
    # The regularizer reaches both kernels.
    assert len(head.losses) == 2
    clone = GaussianEncoderHead.from_config(head.get_config())
    assert clone.latent_dim == 2 and clone.log_var_range == (-1.0, 1.0)
    np.testing.assert_array_equal(to_numpy(clone(x)[1]), log_var)
    assert len(clone.losses) == 2


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": -2}, "latent_dim"),
        ({"latent_dim": 2.5}, "latent_dim"),
        ({"latent_dim": 2, "log_var_range": (3.0, -3.0)}, "log_var_range"),
    ],
)
def test_head_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GaussianEncoderHead(**kwargs)


# Sampling


@pytest.mark.parametrize("num_samples, lead", [(None, ()), (1, (1,)), (3, (3,))])
def test_sampling_matches_stateless_normal(num_samples, lead):
    mean, log_var = _posterior()
    layer = Sampling(num_samples=num_samples, seed=7)
    seed = to_numpy(layer.seed_generator.state).copy()
    z = to_numpy(layer([mean, log_var]))
    assert z.shape == lead + mean.shape
    eps = to_numpy(
        tf.random.stateless_normal((num_samples or 1,) + mean.shape, seed=seed)
    )
    expected = mean + np.exp(0.5 * log_var) * eps
    np.testing.assert_allclose(z, expected.reshape(z.shape), rtol=1e-5, atol=1e-6)
    # The generator advanced: the next call draws new noise.
    assert not np.allclose(to_numpy(layer([mean, log_var])), z)


def test_sampling_same_seed_same_draws():
    mean, log_var = _posterior()
    a = Sampling(num_samples=2, seed=3)([mean, log_var])
    b = Sampling(num_samples=2, seed=3)([mean, log_var])
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.parametrize("num_samples, lead", [(None, ()), (2, (2,))])
def test_sampling_mean_mode_is_deterministic(num_samples, lead):
    mean, log_var = _posterior()
    z = Sampling(num_samples=num_samples, mode="mean")([mean, log_var])
    np.testing.assert_array_equal(
        to_numpy(z), np.broadcast_to(mean, lead + mean.shape)
    )


def test_sampling_adds_analytic_kl_averaged_over_batch():
    mean, log_var = _posterior()
    layer = Sampling(add_kl_loss=True)
    layer([mean, log_var])
    kl = 0.5 * np.sum(np.exp(log_var) + mean**2 - 1.0 - log_var, axis=-1)
    assert len(layer.losses) == 1
    np.testing.assert_allclose(to_numpy(layer.losses[0]), kl.mean(), rtol=1e-5)


@pytest.mark.tensorflow_only(
    "the TF op lowered by tf.function(jit_compile=True) to its XLA custom call"
)
def test_sampling_under_xla_draws_stateless_normal_noise():
    """Inside XLA the layer runs the same kernels: its noise is
    `stateless_normal`'s as computed outside XLA (not XLA's generator)."""
    mean, log_var = _posterior(batch=8, dim=5)
    layer = Sampling(num_samples=2, seed=11)

    @tf.function(jit_compile=True)
    def sample_and_seed():
        seed = tf.identity(layer.seed_generator.state)
        return layer([mean, log_var]), seed

    z, seed = sample_and_seed()
    eps = tf.random.stateless_normal([2, 8, 5], seed=seed)
    np.testing.assert_allclose(
        z, mean + np.exp(0.5 * log_var) * eps.numpy(), rtol=1e-5, atol=1e-5
    )


def test_sampling_under_mixed_precision():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        layer = Sampling(num_samples=2, add_kl_loss=True)
        mean, log_var = _posterior()
        z = layer([mean, log_var])
        assert keras.backend.standardize_dtype(z.dtype) == "float16"
        assert np.isfinite(to_numpy(z)).all()
        kl_dtype = keras.backend.standardize_dtype(layer.losses[0].dtype)
        assert kl_dtype == "float32"
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 2.0}, "num_samples"),
        ({"mode": "median"}, "mode"),
        ({"implementation": "cuda"}, "implementation"),
    ],
)
def test_sampling_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Sampling(**kwargs)


def test_sampling_config_round_trip():
    layer = Sampling(num_samples=4, seed=5, mode="mean", add_kl_loss=True)
    clone = Sampling.from_config(layer.get_config())
    assert (clone.num_samples, clone.seed, clone.mode, clone.add_kl_loss) == (
        4,
        5,
        "mean",
        True,
    )


def test_functional_model_with_kl_loss_trains_as_vae():
    x = load_digits().data.astype("float32")[:256] / 16.0
    inputs = keras.Input((64,))
    mean, log_var = GaussianEncoderHead(4)(keras.layers.Dense(32, "relu")(inputs))
    z = Sampling(seed=1, add_kl_loss=True)([mean, log_var])
    logits = keras.layers.Dense(64)(keras.layers.Dense(32, "relu")(z))
    model = keras.Model(inputs, logits)

    def reconstruction_loss(y_true, y_pred):
        # Summed over pixels, so the KL keeps its weight against it.
        return keras.ops.sum(
            keras.ops.binary_crossentropy(y_true, y_pred, from_logits=True),
            axis=-1,
        )

    model.compile("adam", loss=reconstruction_loss)
    history = model.fit(x, x, batch_size=64, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    # The reported loss is reconstruction + KL: it exceeds the reconstruction.
    recon = float(
        keras.ops.mean(reconstruction_loss(x, model.predict(x, verbose=0)))
    )
    assert model.evaluate(x, x, verbose=0) > recon - 1.0


# The official Keras VAE example, small: Sampling swapped in.


@keras.saving.register_keras_serializable(package="keras_vae_tests")
class ExampleVAE(keras.Model):
    """The example's subclassed VAE, with a config so it can be saved.

    Its loss moves from a TensorFlow `train_step` to `call` (the KL, from
    the encoder's outputs) and `compute_loss` (the reconstruction), the
    form `fit` takes on every backend.
    """

    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
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

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        reconstruction_loss = keras.ops.mean(
            keras.ops.sum(
                keras.losses.binary_crossentropy(x, y_pred), axis=(1, 2)
            )
        )
        kl_loss = keras.ops.sum(keras.ops.stack(self.losses))
        total_loss = reconstruction_loss + kl_loss
        self.total_loss_tracker.update_state(total_loss)
        self.reconstruction_loss_tracker.update_state(reconstruction_loss)
        self.kl_loss_tracker.update_state(kl_loss)
        return total_loss

    def call(self, data):
        z_mean, z_log_var, z = self.encoder(data)
        kl_loss = -0.5 * (
            1 + z_log_var - keras.ops.square(z_mean) - keras.ops.exp(z_log_var)
        )
        self.add_loss(keras.ops.mean(keras.ops.sum(kl_loss, axis=1)))
        return self.decoder(z)

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
        }

    @classmethod
    def from_config(cls, config):
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return cls(**config)


def _example_encoder_decoder(latent_dim=2):
    encoder_inputs = keras.Input(shape=(8, 8, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu", strides=2, padding="same")(
        encoder_inputs
    )
    x = keras.layers.Conv2D(16, 3, activation="relu", strides=2, padding="same")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    z_mean = keras.layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = keras.layers.Dense(latent_dim, name="z_log_var")(x)
    z = keras_vae.layers.Sampling(seed=4)([z_mean, z_log_var])
    encoder = keras.Model(encoder_inputs, [z_mean, z_log_var, z], name="encoder")

    latent_inputs = keras.Input(shape=(latent_dim,))
    x = keras.layers.Dense(2 * 2 * 16, activation="relu")(latent_inputs)
    x = keras.layers.Reshape((2, 2, 16))(x)
    x = keras.layers.Conv2DTranspose(16, 3, activation="relu", strides=2, padding="same")(x)
    x = keras.layers.Conv2DTranspose(8, 3, activation="relu", strides=2, padding="same")(x)
    decoder_outputs = keras.layers.Conv2DTranspose(1, 3, activation="sigmoid", padding="same")(x)
    decoder = keras.Model(latent_inputs, decoder_outputs, name="decoder")
    return encoder, decoder


def test_keras_example_trains_saves_and_loads(tmp_path):
    digits = load_digits().data.astype("float32")[:512] / 16.0
    digits = digits.reshape(-1, 8, 8, 1)
    vae = ExampleVAE(*_example_encoder_decoder())
    vae.compile(optimizer=keras.optimizers.Adam())
    history = vae.fit(digits, epochs=5, batch_size=64, verbose=0)
    losses = history.history["total_loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]

    path = str(tmp_path / "example.keras")
    vae.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    sampling = [l for l in loaded.encoder.layers if isinstance(l, Sampling)]
    assert len(sampling) == 1
    # Same weights and the same seed state: the same draws.
    np.testing.assert_array_equal(
        to_numpy(vae(digits[:16])), to_numpy(loaded(digits[:16]))
    )


@pytest.mark.tensorflow_only(
    "SavedModel export, served by tf.saved_model.load in TensorFlow"
)
def test_exported_sampling_serves_after_importing_keras_vae(tmp_path):
    encoder, _ = _example_encoder_decoder()
    encoder(np.zeros((2, 8, 8, 1), "float32"))
    path = str(tmp_path / "encoder")
    encoder.export(path, verbose=False)
    # A fresh process: the graph holds the fused op, which `import
    # keras_vae` registers.
    script = (
        "import sys, numpy as np, tensorflow as tf, keras_vae\n"
        "model = tf.saved_model.load(sys.argv[1])\n"
        "z = model.serve(tf.zeros((3, 8, 8, 1)))[2]\n"
        "assert z.shape == (3, 2) and np.isfinite(z.numpy()).all()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, path], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
