"""Training under XLA (`jit_compile=True`) and Keras's default "auto".

The fused op cannot run inside an XLA cluster, so inside one the op's
pure-TensorFlow reference runs (`implementation="auto"`). On CPU that is
slower than the fused op outside XLA (README, "XLA"), so without a GPU the
`Sampling` layer and the `VAE` declare `supports_jit=False` and Keras trains
them without XLA; the tests force `supports_jit=True` to check that the XLA
path trains too, as it does on a GPU.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vae
from helpers import tiny_vae

EPOCHS = 4


def _force_xla(model):
    """Lets Keras compile `model` with XLA even where it declines it."""
    for layer in model._flatten_layers():
        layer.supports_jit = True
    return model


def _fit(model, **compile_kwargs):
    model.compile(keras.optimizers.Adam(1e-2), **compile_kwargs)
    history = model.fit(
        tiny_vae.data(), batch_size=8, epochs=EPOCHS, shuffle=False, verbose=0
    )
    return history.history["loss"]


def _assert_trains(losses):
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize(
    "objective, estimator",
    [("elbo", "standard"), ("iwae", "stl"), ("iwae", "dreg")],
)
def test_vae_trains_under_xla(objective, estimator):
    model = _force_xla(
        tiny_vae.build(num_samples=3, objective=objective, gradient_estimator=estimator)
    )
    losses = _fit(model, jit_compile=True)
    assert model.jit_compile is True
    _assert_trains(losses)


def test_vae_with_jit_compile_true_trains():
    """Where XLA measured slower (no GPU) the model declines it, with
    Keras's warning, and trains on the fused op; with a GPU it uses it."""
    model = tiny_vae.build(num_samples=3, objective="iwae")
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert model.supports_jit is on_gpu
    if on_gpu:
        losses = _fit(model, jit_compile=True)
    else:
        with pytest.warns(UserWarning, match="doesn't support `jit_compile=True`"):
            losses = _fit(model, jit_compile=True)
    assert model.jit_compile is on_gpu
    _assert_trains(losses)


def test_vae_trains_with_auto_jit_compile():
    model = tiny_vae.build(num_samples=3, objective="iwae")
    losses = _fit(model)  # jit_compile="auto"
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert model.jit_compile is on_gpu
    _assert_trains(losses)


def test_jit_and_no_jit_agree_on_a_deterministic_model():
    """With the noise made negligible (log_var fixed at -30), the XLA step
    (reference implementation) and the plain step (fused op) follow the
    same trajectory: the fallback computes the same loss and gradients."""
    runs = {}
    for jit in (False, True):
        model = _force_xla(tiny_vae.build(num_samples=2, fixed_log_var=-30.0))
        model.compile(keras.optimizers.SGD(0.1), jit_compile=jit)
        history = model.fit(
            tiny_vae.data(), batch_size=8, epochs=2, shuffle=False, verbose=0
        )
        runs[jit] = (history.history["loss"], model.get_weights())
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-5)
    for a, b in zip(runs[True][1], runs[False][1]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_functional_model_with_sampling_trains_under_xla():
    """The layer in a plain Functional VAE (add_kl_loss) under XLA."""
    keras.utils.set_random_seed(0)  # the layers' initial weights
    x = keras.Input((tiny_vae.INPUT_DIM,))
    h = keras.layers.Dense(16, activation="tanh")(x)
    mean, log_var = keras_vae.layers.GaussianEncoderHead(2)(h)
    z = keras_vae.layers.Sampling(seed=1, add_kl_loss=True)([mean, log_var])
    logits = keras.layers.Dense(tiny_vae.INPUT_DIM)(z)
    model = _force_xla(keras.Model(x, logits))
    model.compile(
        keras.optimizers.Adam(1e-2),
        loss=lambda y, logits: tf.reduce_sum(
            tf.nn.sigmoid_cross_entropy_with_logits(y, logits), axis=-1
        ),
        jit_compile=True,
    )
    assert model.jit_compile is True
    data = tiny_vae.data()
    history = model.fit(data, data, batch_size=8, epochs=EPOCHS, verbose=0)
    _assert_trains(history.history["loss"])


def test_sampling_inside_xla_uses_the_reference():
    layer = keras_vae.layers.Sampling(num_samples=4, seed=3)
    mean = tf.fill([5, 7], 2.0)
    log_var = tf.fill([5, 7], -1.0)

    @tf.function(jit_compile=True)
    def sample(mean, log_var):
        assert keras_vae.ops.in_xla_context()
        return layer([mean, log_var])

    z = sample(mean, log_var).numpy()
    assert z.shape == (4, 5, 7)
    eps = (z - 2.0) / np.exp(-0.5)
    # Standard normal noise: loose moments over 140 draws.
    assert abs(eps.mean()) < 0.4 and 0.7 < eps.std() < 1.3
