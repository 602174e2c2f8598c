"""Training under XLA (`jit_compile=True`) and Keras's default "auto".

Inside XLA the op lowers to a custom call to the same kernels, so a step
compiled with XLA draws the same noise as one without: the oracle for the
XLA step is the plain step.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vae
from helpers import tiny_vae

pytestmark = pytest.mark.tensorflow_only("the TF op and its XLA lowering")

EPOCHS = 4

requires_xla_lowering = pytest.mark.skipif(
    not keras_vae.ops.fused_xla_available(),
    reason="the op's XLA lowerings are not loaded",
)


def _fit(model, epochs=EPOCHS, optimizer=None, **compile_kwargs):
    model.compile(optimizer or keras.optimizers.Adam(1e-2), **compile_kwargs)
    history = model.fit(
        tiny_vae.data(), batch_size=8, epochs=epochs, shuffle=False, verbose=0
    )
    return history.history["loss"]


def _assert_trains(losses):
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize(
    "objective, estimator",
    [("elbo", "standard"), ("iwae", "stl"), ("iwae", "dreg")],
)
def test_vae_trains_under_xla_without_warnings(objective, estimator):
    model = tiny_vae.build(
        num_samples=3, objective=objective, gradient_estimator=estimator
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = _fit(model, jit_compile=True)
    # Neither Keras declining XLA nor keras_vae falling back to the reference.
    assert model.jit_compile is True
    assert not [w for w in caught if "jit_compile" in str(w.message)
                or issubclass(w.category, RuntimeWarning)]
    _assert_trains(losses)


def test_auto_jit_compile_is_xla_where_the_op_lowers():
    """The VAE's "auto" compiles with XLA wherever the op's XLA lowering
    loaded, on a CPU too; Keras's own "auto" does not on a CPU, as the
    plain model beside it shows."""
    model = tiny_vae.build(num_samples=3, objective="iwae")
    losses = _fit(model)  # jit_compile="auto"
    assert model.jit_compile is keras_vae.ops.fused_xla_available()
    _assert_trains(losses)

    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    plain.compile("sgd", "mse")
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert plain.jit_compile is on_gpu


def test_auto_jit_compile_stays_off_under_tf_distribute():
    """Keras leaves XLA off under a tf.distribute strategy; so does the
    VAE's "auto"."""
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        model = tiny_vae.build(num_samples=2)
        model.compile(keras.optimizers.Adam(1e-2))
    assert model.jit_compile is False


@requires_xla_lowering
@pytest.mark.parametrize(
    "objective, estimator", [("elbo", "standard"), ("iwae", "dreg")]
)
def test_xla_and_plain_steps_follow_the_same_trajectory(objective, estimator):
    """The same seeds give the same noise under XLA, so with SGD the two
    steps agree to float rounding (XLA fuses the rest of the step
    differently)."""
    runs = {}
    for jit in (False, True):
        model = tiny_vae.build(
            num_samples=4, objective=objective, gradient_estimator=estimator
        )
        losses = _fit(model, epochs=2, optimizer=keras.optimizers.SGD(0.05),
                      jit_compile=jit)
        runs[jit] = (losses, model.get_weights())
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-4)
    for a, b in zip(runs[True][1], runs[False][1]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


@requires_xla_lowering
def test_xla_step_calls_the_kernels():
    """The compiled train step holds the custom calls, not the reference."""
    model = tiny_vae.build(num_samples=3, objective="iwae",
                           gradient_estimator="dreg")
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=True)
    x = tf.constant(tiny_vae.data()[:8])
    model.fit(x, batch_size=8, epochs=1, verbose=0)  # builds the optimizer
    step = tf.function(model.train_step, jit_compile=True)
    hlo = step.experimental_get_compiler_ir(x)(stage="hlo")
    assert 'custom_call_target="keras_vae_reparameterize_kl"' in hlo
    assert 'custom_call_target="keras_vae_reparameterize_kl_grad"' in hlo
    assert "rng-bit-generator" not in hlo


def test_functional_model_with_sampling_trains_under_xla():
    """The layer in a plain Functional VAE (add_kl_loss) under XLA."""
    keras.utils.set_random_seed(0)  # the layers' initial weights
    x = keras.Input((tiny_vae.INPUT_DIM,))
    h = keras.layers.Dense(16, activation="tanh")(x)
    mean, log_var = keras_vae.layers.GaussianEncoderHead(2)(h)
    z = keras_vae.layers.Sampling(seed=1, add_kl_loss=True)([mean, log_var])
    logits = keras.layers.Dense(tiny_vae.INPUT_DIM)(z)
    model = keras.Model(x, logits)
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


@requires_xla_lowering
def test_sampling_inside_xla_draws_what_it_draws_outside():
    """Two layers with the same seed, one called under XLA: the same z."""
    mean = tf.fill([5, 7], 2.0)
    log_var = tf.fill([5, 7], -1.0)
    plain = keras_vae.layers.Sampling(num_samples=4, seed=3)
    expected = plain([mean, log_var]).numpy()
    compiled = keras_vae.layers.Sampling(num_samples=4, seed=3)

    @tf.function(jit_compile=True)
    def sample(mean, log_var):
        assert keras_vae.ops.in_xla_context()
        return compiled([mean, log_var])

    np.testing.assert_array_equal(sample(mean, log_var).numpy(), expected)
