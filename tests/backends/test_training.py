"""The VAE trains, evaluates, saves and loads on the active Keras backend.

`make test` runs this directory under KERAS_BACKEND=tensorflow, jax and
torch. The oracles are NumPy closed forms, finite differences, and the
eager gradient path checked against the compiled train step; the
cross-backend equalities are in tests/test_backends_agree.py.
"""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_vae
from helpers import tiny_vae
from helpers.processes import python_env, run_python

BACKEND = keras.backend.backend()
ESTIMATORS = [
    ("elbo", "standard"), ("elbo", "stl"),
    ("iwae", "standard"), ("iwae", "stl"), ("iwae", "dreg"),
]


def numpy(t):
    return ops.convert_to_numpy(t)


def nonfinite_error():
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.errors.InvalidArgumentError
    return FloatingPointError


def test_sampling_layer_draws_the_ops_noise_from_its_seed_generator():
    """The layer's generator state (uint32 on JAX, int32 on PyTorch, int64
    on TensorFlow) reaches the op as the seed [5, 0], then [5, 1]."""
    rng = np.random.default_rng(0)
    mean, log_var = rng.standard_normal((2, 3, 4)).astype("float32")
    layer = keras_vae.layers.Sampling(seed=5)
    for counter in range(2):
        z, _, _ = keras_vae.ops.reparameterize_kl(
            mean, log_var, seed=[5, counter]
        )
        np.testing.assert_array_equal(numpy(layer([mean, log_var])), numpy(z[0]))


def flat(model):
    return np.concatenate([numpy(v).ravel() for v in model.trainable_variables])


def set_flat(model, values):
    start = 0
    for v in model.trainable_variables:
        size = int(np.prod(v.shape))
        v.assign(values[start : start + size].reshape(v.shape))
        start += size


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_standard_gradients_equal_finite_differences(objective):
    x = tiny_vae.data()
    model = tiny_vae.build(num_samples=3, objective=objective)
    seed = (2, 9)
    gradients, variables, _, _ = model.compute_gradients(x, seed=seed)
    gradient = np.concatenate([numpy(g).ravel() for g in gradients])
    w = flat(model)
    direction = np.random.default_rng(1).standard_normal(w.shape)
    direction /= np.linalg.norm(direction)
    h = 1e-2
    values = []
    for sign in (1, -1):
        set_flat(model, (w + sign * h * direction).astype("float32"))
        _, _, losses, _ = model.compute_gradients(x, seed=seed)
        values.append(float(numpy(losses["loss"])))
    numerical = (values[0] - values[1]) / (2 * h)
    np.testing.assert_allclose(gradient @ direction, numerical, rtol=2e-2)


@pytest.mark.parametrize("objective, estimator", ESTIMATORS)
def test_a_fit_step_applies_the_gradients_of_its_seed(objective, estimator):
    """One full-batch SGD step of fit moves the weights by -lr times what
    compute_gradients gives for the generator's first seed, [0, 0]."""
    x = tiny_vae.data()
    model = tiny_vae.build(
        num_samples=3, objective=objective, gradient_estimator=estimator
    )
    gradients, _, losses, _ = model.compute_gradients(x, seed=[0, 0])
    before = [numpy(v) for v in model.trainable_variables]
    lr = 0.1
    model.compile(keras.optimizers.SGD(lr))
    history = model.fit(x, batch_size=len(x), shuffle=False, verbose=0)
    np.testing.assert_allclose(
        history.history["loss"][0], numpy(losses["loss"]), rtol=1e-5
    )
    for b, g, v in zip(before, gradients, model.trainable_variables):
        np.testing.assert_allclose(
            numpy(v), b - lr * numpy(g), rtol=1e-5, atol=1e-6
        )


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, batch_size):
        super().__init__()
        self.x, self.batch_size = x, batch_size

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, i):
        return self.x[i * self.batch_size : (i + 1) * self.batch_size]


class _WeightsAfterEachStep(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.last = [numpy(w) for w in self.model.get_weights()]


def test_nonfinite_batch_stops_fit_before_the_weights_change():
    x = tiny_vae.data()
    x[20, 2] = np.nan  # the third batch of 8
    model = tiny_vae.build()
    model.compile(keras.optimizers.Adam(1e-2))
    weights = _WeightsAfterEachStep()
    with pytest.raises(nonfinite_error(), match=r"NaN or Inf at training step"):
        model.fit(_Batches(x, 8), epochs=2, shuffle=False, verbose=0,
                  callbacks=[weights])
    assert int(numpy(model.optimizer.iterations)) == 2
    for a, b in zip(model.get_weights(), weights.last):
        np.testing.assert_array_equal(numpy(a), b)
        assert np.all(np.isfinite(numpy(a)))


class _Logs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(v) for k, v in logs.items()})


def test_beta_schedule_weighs_the_kl_by_the_step():
    """beta goes 0 -> 1 over two steps: the first batch's loss is minus its
    reconstruction, the third's (a new epoch) is minus its ELBO."""
    x = tiny_vae.data()
    model = tiny_vae.build(
        beta=keras.optimizers.schedules.PolynomialDecay(0.0, 2, 1.0)
    )
    model.compile(keras.optimizers.SGD(1e-3))
    logs = _Logs()
    model.fit(x, batch_size=16, epochs=2, shuffle=False, verbose=0,
              callbacks=[logs])
    first, third = logs.logs[0], logs.logs[2]
    np.testing.assert_allclose(first["loss"], -first["reconstruction"], rtol=1e-5)
    assert first["kl"] > 0.01
    np.testing.assert_allclose(third["loss"], -third["elbo"], rtol=1e-5)


def test_evaluate_and_log_likelihood_equal_the_bounds_of_their_seeds():
    x = tiny_vae.data()
    model = tiny_vae.build(num_samples=4, objective="iwae")
    model.compile(keras.optimizers.SGD(0.0))
    state = tuple(int(s) for s in numpy(model.seed_generator.state))
    result = model.evaluate(x, batch_size=len(x), verbose=0, return_dict=True)
    expected = numpy(model.iwae_bound(x, 4, seed=state)).mean()
    np.testing.assert_allclose(result["iwae"], expected, rtol=1e-5)
    # One chunk of S samples is the S-sample IWAE bound of the same seed.
    np.testing.assert_allclose(
        numpy(model.log_likelihood(x, 6, chunk_size=6, seed=3, verbose=0)),
        numpy(model.iwae_bound(x, 6, seed=3)),
        rtol=1e-5,
    )


def test_log_likelihood_compiled_equals_the_default():
    """With `compile(jit_compile=True)` the chunks run compiled (on PyTorch
    through torch.compile, elsewhere as by default): the same estimates as
    the default, batch after batch, the last one partial, and after the
    weights change (the compiled chunk reads them, not a copy)."""
    x = tiny_vae.data(num_examples=11)
    default = tiny_vae.build(num_samples=4)
    compiled = tiny_vae.build(num_samples=4)
    default.compile(keras.optimizers.Adam(1e-2))
    compiled.compile(keras.optimizers.Adam(1e-2), jit_compile=True)

    def estimates():
        kwargs = dict(num_samples=12, chunk_size=4, batch_size=4, seed=5,
                      verbose=0)
        return (numpy(default.log_likelihood(x, **kwargs)),
                numpy(compiled.log_likelihood(x, **kwargs)))

    before, after_compiling = estimates()
    np.testing.assert_allclose(after_compiling, before, rtol=1e-5)
    if BACKEND == "torch":
        # The chunk run was torch.compile's, not the eager method.
        assert compiled._compiled_chunk_logsumexp() is not (
            compiled._chunk_logsumexp
        )
        assert default._compiled_chunk_logsumexp() == default._chunk_logsumexp
    for model in (default, compiled):
        model.set_weights([w * 1.5 for w in model.get_weights()])
    changed, changed_compiled = estimates()
    assert np.all(np.abs(changed - before) > 1e-3)
    np.testing.assert_allclose(changed_compiled, changed, rtol=1e-5)


def test_saved_model_continues_its_seed_stream(tmp_path):
    x = tiny_vae.data()
    model = tiny_vae.build(objective="iwae", gradient_estimator="dreg")
    model.compile(keras.optimizers.Adam(1e-2))
    model.fit(x, batch_size=8, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(numpy(loaded.sample(3)), numpy(model.sample(3)))
    np.testing.assert_array_equal(
        numpy(loaded.reconstruct(x[:2], 2, seed=1)),
        numpy(model.reconstruct(x[:2], 2, seed=1)),
    )
    assert loaded.gradient_estimator == "dreg"


@pytest.mark.skipif(BACKEND == "tensorflow", reason="TensorFlow's own backend")
def test_training_imports_no_tensorflow():
    script = (
        "import sys, keras\n"
        "from helpers import tiny_vae\n"
        "x = tiny_vae.data()\n"
        "m = tiny_vae.build(objective='iwae', gradient_estimator='dreg')\n"
        "m.compile('adam')\n"
        "m.fit(x, batch_size=8, verbose=0)\n"
        "m.evaluate(x, verbose=0)\n"
        "m.log_likelihood(x[:2], 4, verbose=0)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    run_python(["-c", script], env=python_env(KERAS_BACKEND=BACKEND))


@pytest.mark.skipif(BACKEND == "tensorflow", reason="TensorFlow's own backend")
def test_missing_kernels_fall_back_to_the_reference_with_one_warning(
    monkeypatch,
):
    import importlib

    backend = importlib.import_module(f"keras_vae.backend.{BACKEND}")
    monkeypatch.setattr(backend, "available", lambda: (False, "not built"))
    monkeypatch.setattr(keras_vae.ops, "_warned_fallback", set())
    mean = np.zeros((2, 3), "float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = keras_vae.ops.reparameterize_kl(mean, mean, 2, seed=[1, 2])
        keras_vae.ops.reparameterize_kl(mean, mean, 2, seed=[1, 2])
    messages = [str(w.message) for w in caught
                if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "not built" in messages[0]
    expected = keras_vae.ops.reparameterize_kl_reference(mean, mean, 2, [1, 2])
    for a, b in zip(first, expected):
        np.testing.assert_array_equal(numpy(a), numpy(b))
