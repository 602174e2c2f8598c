"""The non-finite guard: a NaN made inside the network at a chosen
training step stops `fit` naming that step, with the weights and the
optimizer's state of the step before, whatever `steps_per_execution`
(PyTorch's trainer takes 1 only); `stop_on_nonfinite=False` trains on.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_vae
from helpers import tiny_vae

BACKEND = keras.backend.backend()
BATCH = 4
BAD_STEP = 6  # counted from 1: the second epoch's second batch
STEPS_PER_EXECUTION = [1] if BACKEND == "torch" else [1, 5]
JIT = {"tensorflow": [False, True], "jax": [True], "torch": [False]}[BACKEND]


def numpy(t):
    return ops.convert_to_numpy(t)


class _PoisonedOnMarker(keras.layers.Layer):
    """Passes h through, NaN for the examples whose first input is 1.5:
    `h + 0 * log(1.5 - x_0)` is `h` for binary x and NaN at the marker."""

    def call(self, inputs):
        h, x = inputs
        return h + 0.0 * ops.log(1.5 - x[:, :1])


def build(**kwargs):
    """tiny_vae's model with the poison between the encoder's layers."""
    init = lambda i: keras.initializers.GlorotUniform(seed=i)  # noqa: E731
    x = keras.Input((tiny_vae.INPUT_DIM,))
    h = keras.layers.Dense(16, activation="tanh", kernel_initializer=init(0))(x)
    h = _PoisonedOnMarker()([h, x])
    mean, log_var = keras_vae.layers.GaussianEncoderHead(
        tiny_vae.LATENT_DIM, kernel_initializer=init(1)
    )(h)
    encoder = keras.Model(x, [mean, log_var])
    z = keras.Input((tiny_vae.LATENT_DIM,))
    g = keras.layers.Dense(16, activation="tanh", kernel_initializer=init(2))(z)
    decoder = keras.Model(
        z, keras.layers.Dense(tiny_vae.INPUT_DIM, kernel_initializer=init(3))(g)
    )
    return keras_vae.VAE(encoder, decoder, num_samples=2, seed=0, **kwargs)


class _Batches(keras.utils.PyDataset):
    """Batches of `BATCH` examples; a dataset's first batch only is
    checked, so the marker reaches the network."""

    def __init__(self, x):
        super().__init__()
        self.x = x

    def __len__(self):
        return len(self.x) // BATCH

    def __getitem__(self, i):
        return self.x[i * BATCH : (i + 1) * BATCH]


def data(poisoned=True):
    """Eight batches: with `poisoned`, the marker in batch BAD_STEP, which
    is not the last step of a call of 5."""
    x = tiny_vae.data(num_examples=8 * BATCH)
    if poisoned:
        x[(BAD_STEP - 1) * BATCH + 1, 0] = 1.5
    return x


class _StateAfterEachStep(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.states = []

    def on_train_batch_end(self, batch, logs=None):
        self.states.append(
            [numpy(v) for v in self.model.trainable_variables]
            + [numpy(v) for v in self.model.optimizer.variables]
        )


def nonfinite_error():
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.errors.InvalidArgumentError
    return FloatingPointError


def state_before_the_bad_step(jit_compile):
    """The variables after step BAD_STEP - 1 of the clean data."""
    model = build(stop_on_nonfinite=False)
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
    states = _StateAfterEachStep()
    model.fit(_Batches(data(poisoned=False)), epochs=1, shuffle=False,
              verbose=0, callbacks=[states])
    return states.states[BAD_STEP - 2]


@pytest.mark.parametrize("jit_compile", JIT)
@pytest.mark.parametrize("steps_per_execution", STEPS_PER_EXECUTION)
def test_a_nan_inside_the_network_stops_fit_at_its_step(
    steps_per_execution, jit_compile
):
    expected = state_before_the_bad_step(jit_compile)
    model = build()
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)
    with pytest.raises(
        nonfinite_error(), match=rf"NaN or Inf at training step \(counted from 1\)\W*{BAD_STEP}\b",
    ):
        model.fit(_Batches(data()), epochs=2, shuffle=False, verbose=0)
    assert int(numpy(model.optimizer.iterations)) == BAD_STEP - 1
    after = [numpy(v) for v in model.trainable_variables] + [
        numpy(v) for v in model.optimizer.variables
    ]
    assert len(after) == len(expected)
    for a, b in zip(after, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("steps_per_execution", STEPS_PER_EXECUTION)
def test_without_the_guard_fit_trains_through_the_nan(steps_per_execution):
    model = build(stop_on_nonfinite=False)
    model.compile(keras.optimizers.Adam(1e-2),
                  steps_per_execution=steps_per_execution)
    history = model.fit(_Batches(data()), epochs=2, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2
    assert int(numpy(model.optimizer.iterations)) == 16
    assert not all(
        np.all(np.isfinite(numpy(v))) for v in model.trainable_variables
    )


def test_a_new_fit_after_the_error_trains_again():
    """The guard's carried step is cleared: once the data is clean, fit
    trains on from the kept weights."""
    model = build()
    model.compile(keras.optimizers.Adam(1e-2))
    with pytest.raises(nonfinite_error()):
        model.fit(_Batches(data()), epochs=1, shuffle=False, verbose=0)
    model.fit(_Batches(data(poisoned=False)), epochs=1, shuffle=False,
              verbose=0)
    assert int(numpy(model.optimizer.iterations)) == BAD_STEP - 1 + 8
    assert all(np.all(np.isfinite(numpy(v))) for v in model.trainable_variables)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_array_input_is_refused_before_training(bad):
    """Checked on the host with NumPy, whose min and max carry the NaN."""
    x = tiny_vae.data()
    x[-1, -1] = bad
    model = tiny_vae.build()
    model.compile(keras.optimizers.Adam(1e-2))
    with pytest.raises(ValueError, match="non-finite"):
        model.fit(x, batch_size=8, verbose=0)
    with pytest.raises(ValueError, match="non-finite"):
        model.check_data(ops.convert_to_tensor(x))
    assert int(numpy(model.optimizer.iterations)) == 0
