"""The layers under Keras's own layer harness, and `Sampling` in every kind
of Keras model, on the active backend.

`make test` runs this directory under KERAS_BACKEND=tensorflow, jax and
torch. The oracle is Keras: `keras.src.testing.TestCase.run_layer_test`
(building, symbolic and eager calls, serialization, training, mixed
precision), and `fit` on Functional, Sequential and subclassed models, the
keras.io VAE with its loss in `compute_loss` among them, none called
before `fit`.
"""

import keras
import numpy as np
import pytest
from keras import ops
from keras.src import testing

import keras_vae
from keras_vae.layers import GaussianEncoderHead, Sampling

BACKEND = keras.backend.backend()
LATENT = 2


class SamplingWithWeight(Sampling):
    """A subclass that creates a weight in `build`: Keras must call it."""

    def build(self, input_shape):
        self.shift = self.add_weight(shape=(input_shape[0][-1],),
                                     initializer="zeros")

    def call(self, inputs):
        return super().call(inputs) + self.shift


class LayerHarness(testing.TestCase):
    def test_sampling(self):
        self.run_layer_test(
            Sampling,
            init_kwargs={"seed": 3},
            input_shape=((2, 5), (2, 5)),
            expected_output_shape=(2, 5),
            expected_num_trainable_weights=0,
            expected_num_non_trainable_variables=1,  # the seed state
            expected_num_seed_generators=1,
            assert_built_after_instantiation=True,
        )

    def test_sampling_with_sample_axis_and_kl_loss(self):
        self.run_layer_test(
            Sampling,
            init_kwargs={"num_samples": 3, "seed": [1, 2],
                         "add_kl_loss": True},
            input_shape=((2, 5), (2, 5)),
            expected_output_shape=(3, 2, 5),
            expected_num_seed_generators=1,
            expected_num_losses=1,
        )

    def test_sampling_mean_mode(self):
        self.run_layer_test(
            Sampling,
            init_kwargs={"mode": "mean", "num_samples": 2},
            input_shape=((4, 3), (4, 3)),
            expected_output_shape=(2, 4, 3),
        )

    def test_sampling_subclass_builds_its_weights(self):
        self.run_layer_test(
            SamplingWithWeight,
            init_kwargs={"seed": 1},
            input_shape=((2, 5), (2, 5)),
            expected_output_shape=(2, 5),
            expected_num_trainable_weights=1,
            expected_num_seed_generators=1,
            custom_objects={"SamplingWithWeight": SamplingWithWeight},
        )

    def test_gaussian_encoder_head(self):
        self.run_layer_test(
            GaussianEncoderHead,
            init_kwargs={"latent_dim": 3, "log_var_range": (-5.0, 5.0)},
            input_shape=(2, 7),
            expected_output_shape=((2, 3), (2, 3)),
            expected_num_trainable_weights=4,
            expected_num_non_trainable_weights=0,
        )


def test_sampling_subclass_is_not_built_before_build():
    layer = SamplingWithWeight(seed=1)
    assert not layer.built
    layer([np.zeros((2, 5), "float32")] * 2)
    assert layer.built and len(layer.trainable_weights) == 1


def test_sampling_takes_a_seed_generator_and_saves_its_initial_seed(tmp_path):
    """A `keras.random.SeedGenerator` is drawn from as is (the layer and
    the caller share it), and saved as its initial seed, with the state it
    reached among the weights."""
    generator = keras.random.SeedGenerator(1337)
    layer = Sampling(seed=generator)
    assert layer.seed_generator is generator
    assert layer.get_config()["seed"] == 1337
    mean = np.zeros((4, 3), "float32")
    expected = [keras_vae.ops.reparameterize_kl(mean, mean, seed=[1337, i])[0][0]
                for i in range(2)]
    np.testing.assert_array_equal(ops.convert_to_numpy(layer([mean, mean])),
                                  ops.convert_to_numpy(expected[0]))

    inputs = [keras.Input((3,)), keras.Input((3,))]
    model = keras.Model(inputs, layer(inputs))
    path = tmp_path / "sampling.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    # The loaded layer has its own generator, at the state saved: the next
    # draw continues the sequence.
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded([mean, mean])),
        ops.convert_to_numpy(model([mean, mean])),
    )


def keras_io_encoder_decoder():
    """The keras.io VAE's networks (examples/generative/vae.py), small, with
    keras-vae's Sampling in the encoder."""
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    z_mean = keras.layers.Dense(LATENT, name="z_mean")(h)
    z_log_var = keras.layers.Dense(LATENT, name="z_log_var")(h)
    z = Sampling(seed=0)([z_mean, z_log_var])
    encoder = keras.Model(inputs, [z_mean, z_log_var, z], name="encoder")
    latent = keras.Input((LATENT,))
    outputs = keras.layers.Dense(8, activation="sigmoid")(
        keras.layers.Dense(16, activation="relu")(latent))
    decoder = keras.Model(latent, outputs, name="decoder")
    return encoder, decoder


class ComputeLossVAE(keras.Model):
    """The keras.io VAE written for every backend: the loss in
    `compute_loss`, no custom `train_step`."""

    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.decoder = encoder, decoder

    def call(self, x):
        z_mean, z_log_var, z = self.encoder(x)
        self.add_loss(-0.5 * ops.mean(ops.sum(
            1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1)))
        return self.decoder(z)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        reconstruction = ops.mean(ops.sum(
            keras.losses.binary_crossentropy(x[..., None], y_pred[..., None]),
            axis=1))
        return reconstruction + ops.sum(ops.stack(self.losses))


class SamplingBlock(keras.layers.Layer):
    """A custom layer wrapping Sampling, as users write one."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mean = keras.layers.Dense(LATENT)
        self.log_var = keras.layers.Dense(LATENT)
        self.sampling = Sampling(seed=2, add_kl_loss=True)

    def call(self, x):
        return self.sampling([self.mean(x), self.log_var(x)])


def data():
    return (np.random.default_rng(0).random((32, 8)) > 0.5).astype("float32")


def functional_model():
    inputs = keras.Input((8,))
    z = SamplingBlock()(keras.layers.Dense(16, activation="relu")(inputs))
    return keras.Model(inputs, keras.layers.Dense(8)(z))


def functional_model_with_sampling():
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    z = Sampling()([keras.layers.Dense(LATENT)(h),
                    keras.layers.Dense(LATENT)(h)])
    return keras.Model(inputs, keras.layers.Dense(8)(z))


class TwoHeads(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.head = GaussianEncoderHead(LATENT)

    def call(self, x):
        return self.head(x)


def sequential_model():
    return keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu"),
        TwoHeads(),
        Sampling(seed=4, add_kl_loss=True),
        keras.layers.Dense(8),
    ])


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.head = GaussianEncoderHead(LATENT)
        self.sampling = Sampling(seed=5, add_kl_loss=True)
        self.out = keras.layers.Dense(8)

    def call(self, x):
        return self.out(self.sampling(self.head(self.hidden(x))))


@pytest.mark.parametrize("make", [
    functional_model_with_sampling, functional_model, sequential_model,
    Subclassed,
])
def test_fit_with_sampling_in_a_model_never_called_before(make):
    model = make()
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.BinaryCrossentropy(from_logits=True))
    x = data()
    before = [ops.convert_to_numpy(w) for w in model.trainable_weights]
    history = model.fit(x, x, batch_size=8, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    after = [ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert all(np.any(a != b) for a, b in zip(after, before))
    assert ops.convert_to_numpy(model.predict(x, verbose=0)).shape == (32, 8)


def test_keras_io_vae_with_compute_loss_trains():
    encoder, decoder = keras_io_encoder_decoder()
    vae = ComputeLossVAE(encoder, decoder)
    vae.compile(keras.optimizers.Adam(1e-2))
    x = data()
    history = vae.fit(x, batch_size=8, epochs=10, verbose=0)
    losses = history.history["loss"]
    # Binary noise has nothing to learn beyond the pixels' frequencies: the
    # loss falls from its start all the same.
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's meta tensors")
def test_op_and_sampling_trace_on_meta_tensors():
    """Keras infers shapes on PyTorch by calling layers on meta tensors
    (under `keras.device("meta")`): a meta seed stays meta, nothing is
    copied to the host, and the fake kernel gives the shapes."""
    import torch

    with keras.device("meta"):
        mean = torch.empty((4, 3), device="meta")
        seed = torch.empty((2,), dtype=torch.int64, device="meta")
        z, kl, log_ratio = keras_vae.ops.reparameterize_kl(
            mean, mean, num_samples=5, seed=seed)
        assert [t.device.type for t in (z, kl, log_ratio)] == ["meta"] * 3
        assert [tuple(t.shape) for t in (z, kl, log_ratio)] == [
            (5, 4, 3), (4,), (5, 4)]
        z = Sampling(num_samples=2, add_kl_loss=True)([mean, mean])
        assert z.device.type == "meta" and tuple(z.shape) == (2, 4, 3)
