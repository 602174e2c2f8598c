"""Bad input: a clear error or a documented behaviour, never a crash.

Documented behaviours tested here:
- NaN and Inf propagate to the op's outputs of the affected example only.
  `VAE.fit` refuses data with NaN or Inf at the edge (an array, or a
  dataset's first batch), and stops on a non-finite loss or gradient
  before it reaches the weights; with `stop_on_nonfinite=False` they reach
  the loss, which `keras.callbacks.TerminateOnNaN` then stops on.
- Extreme log-variances: the op computes exp(log_var) as given (+1e4
  overflows to inf; -1e4 gives z = mean); `GaussianEncoderHead` clips
  log_var to its range, so a VAE built on it keeps a finite loss.
- Empty batches give empty outputs (`fit` on no examples raises a
  ValueError); integer data is cast to float by the
  model, while the op itself rejects integer tensors with a ValueError.
- A sample count too large for memory raises the backend's out-of-memory
  error (TensorFlow's ResourceExhaustedError, JAX's RESOURCE_EXHAUSTED, a
  MemoryError on PyTorch's CPU op), and the process carries on; a model
  refuses more samples than it decodes at once with a ValueError.
- A model saved with the compiled op loads and runs where it is missing,
  on the reference implementation, with a RuntimeWarning.
- A truncated .keras file raises Keras's ValueError ("... ensure the file
  is an accessible `.keras` zip file"); a corrupt one zipfile.BadZipFile
  naming the damaged member.
"""

import io
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vae
from helpers import tiny_vae
from helpers.processes import (
    SCRIPTS_DIR,
    copy_package_without_libraries,
    python_env,
    run_python,
)

ops = keras_vae.ops


# ---------------------------------------------------------------------------
# NaN and Inf.


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["mean", "log_var"])
def test_nonfinite_encoder_output_stays_in_its_example(bad, where):
    mean = np.random.default_rng(0).uniform(-1, 1, (4, 5)).astype("float32")
    log_var = np.zeros((4, 5), "float32")
    {"mean": mean, "log_var": log_var}[where][2, 3] = bad
    for implementation in ("fused", "reference"):
        z, kl, log_ratio = (
            keras.ops.convert_to_numpy(t)
            for t in ops.reparameterize_kl(
                mean, log_var, 3, [1, 2], implementation=implementation
            )
        )
        others = [0, 1, 3]
        assert np.all(np.isfinite(z[:, others])), implementation
        assert np.all(np.isfinite(kl[others])), implementation
        assert np.all(np.isfinite(log_ratio[:, others])), implementation
        assert not np.isfinite(kl[2]), implementation
        assert not np.any(np.isfinite(log_ratio[:, 2])), implementation
        if where == "log_var" and bad == -np.inf:
            # A zero variance: z is the mean, log q(z|x) is +inf.
            np.testing.assert_array_equal(z[:, 2, 3], mean[2, 3])
        else:
            assert not np.any(np.isfinite(z[:, 2, 3])), implementation


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_data_is_refused_before_training(bad):
    x = tiny_vae.data()
    x[3, 2] = bad
    model = tiny_vae.build()
    model.compile(keras.optimizers.Adam(1e-2))
    before = model.get_weights()
    with pytest.raises(ValueError, match="non-finite values.*Bernoulli"):
        model.fit(x, batch_size=8, epochs=3, verbose=0)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


class _Batches(keras.utils.PyDataset):
    """`x` in batches of `batch_size`, in order: a dataset the model's
    edge check does not look into."""

    def __init__(self, x, batch_size):
        super().__init__()
        self.x, self.batch_size = x, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        return self.x[index * self.batch_size:(index + 1) * self.batch_size]


def _nonfinite_step_error():
    """The error class with which a step stops on a non-finite loss: a
    TensorFlow op's, a Python one elsewhere."""
    if keras.backend.backend() == "tensorflow":
        return tf.errors.InvalidArgumentError
    return FloatingPointError


class _WeightsAfterEachStep(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.last = self.model.get_weights()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_batch_stops_fit_before_the_weights_change(bad):
    """A bad pixel in the third batch, past the first-batch check."""
    x = tiny_vae.data()
    x[20, 2] = bad
    dataset = _Batches(x, 8)
    model = tiny_vae.build()
    model.compile(keras.optimizers.Adam(1e-2))
    weights = _WeightsAfterEachStep()
    with pytest.raises(_nonfinite_step_error(),
                       match=r"NaN or Inf at training step.*\n?.*3"):
        model.fit(dataset, epochs=2, shuffle=False, verbose=0,
                  callbacks=[weights])
    iterations = model.optimizer.iterations
    assert int(keras.ops.convert_to_numpy(iterations)) == 2
    for a, b in zip(model.get_weights(), weights.last):
        np.testing.assert_array_equal(a, b)
        assert np.all(np.isfinite(a))


def test_nonfinite_check_can_be_turned_off_and_terminate_on_nan_stops():
    x = tiny_vae.data()
    x[20, 2] = np.nan
    dataset = _Batches(x, 8)
    model = tiny_vae.build(stop_on_nonfinite=False)
    model.compile(keras.optimizers.Adam(1e-2))
    history = model.fit(dataset, epochs=3, shuffle=False, verbose=0,
                        callbacks=[keras.callbacks.TerminateOnNaN()])
    assert model.stop_training
    assert len(history.history["loss"]) == 1
    assert not np.isfinite(history.history["loss"][0])
    assert not all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_nonfinite_encoder_output_gives_a_nonfinite_loss():
    x = keras.Input((tiny_vae.INPUT_DIM,))
    mean = keras.layers.Dense(tiny_vae.LATENT_DIM)(x)
    # NaN for every input: an encoder gone wrong.
    log_var = keras.layers.Dense(tiny_vae.LATENT_DIM)(x) * np.float32(np.nan)
    encoder = keras.Model(x, [mean, log_var])
    vae = tiny_vae.build()
    vae = keras_vae.VAE(encoder, vae.decoder, "bernoulli")
    assert np.all(np.isnan(np.asarray(vae.elbo(tiny_vae.data()[:4]))))


# ---------------------------------------------------------------------------
# Extreme log-variances.


def test_extreme_log_var_in_the_op():
    mean = np.array([[0.5, -0.5]], "float32")
    for implementation in ("fused", "reference"):
        z, kl, log_ratio = (
            keras.ops.convert_to_numpy(t)
            for t in ops.reparameterize_kl(
                mean, np.full((1, 2), -1e4, "float32"), 2, [1, 2],
                implementation=implementation,
            )
        )
        # std underflows to 0: z is the mean; KL is finite (0.5 * (mu^2 +
        # 1e4 - 1) per dimension) and so is log_ratio (+5e3 per dimension).
        np.testing.assert_array_equal(z, np.broadcast_to(mean, (2, 1, 2)))
        np.testing.assert_allclose(kl, [0.5 * (0.5 + 2 * (1e4 - 1))])
        assert np.all(np.isfinite(log_ratio))
        z, kl, log_ratio = (
            keras.ops.convert_to_numpy(t)
            for t in ops.reparameterize_kl(
                mean, np.full((1, 2), 1e4, "float32"), 2, [1, 2],
                implementation=implementation,
            )
        )
        # exp(1e4) overflows: the KL is +inf, as the math says.
        assert np.all(np.isposinf(kl))
        assert not np.any(np.isfinite(z))


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_encoder_head_keeps_the_loss_finite_for_extreme_features(scale):
    """Pre-activations of +-1e4 reach the head; its clipped log_var keeps
    the VAE's loss and gradients finite."""
    model = tiny_vae.build()
    head = model.encoder.layers[-1]
    assert isinstance(head, keras_vae.layers.GaussianEncoderHead)
    low, high = head.log_var_range
    features = np.full((4, 16), scale, "float32")
    log_var = keras.ops.convert_to_numpy(head(features)[1])
    assert np.all(log_var >= low) and np.all(log_var <= high)
    # The whole model on inputs that saturate the encoder.
    x = tiny_vae.data()[:8] * np.float32(scale)
    model.compile(keras.optimizers.Adam(1e-2))
    gradients, _, losses, _ = model.compute_gradients(x, seed=[1, 2])
    assert np.isfinite(keras.ops.convert_to_numpy(losses["loss"]))
    for g in gradients:
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(g)))


# ---------------------------------------------------------------------------
# Empty batches and integer inputs.


def test_empty_batch():
    model = tiny_vae.build()
    empty = np.zeros((0, tiny_vae.INPUT_DIM), "float32")
    assert model.elbo(empty, num_samples=2).shape == (0,)
    assert model.iwae_bound(empty, num_samples=2).shape == (0,)
    assert model.reconstruct(empty, num_samples=3).shape == (3, 0, tiny_vae.INPUT_DIM)
    mean, log_var = model.encode(empty)
    z, kl, log_ratio = ops.reparameterize_kl(mean, log_var, 2, [1, 2])
    assert (z.shape, kl.shape, log_ratio.shape) == ((2, 0, 3), (0,), (2, 0))
    # fit on no data says so, the same on every backend, and leaves the
    # weights alone.
    before = model.get_weights()
    model.compile(keras.optimizers.Adam(1e-2))
    with pytest.raises(ValueError, match=r"x has no examples \(shape \(0, 12\)\)"):
        model.fit(empty, batch_size=8, verbose=0)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["int32", "uint8", "int64"])
def test_integer_data_is_cast_by_the_model(dtype):
    x = tiny_vae.data()
    model = tiny_vae.build()
    np.testing.assert_allclose(
        np.asarray(model.elbo(x.astype(dtype), seed=3)),
        np.asarray(model.elbo(x, seed=3)),
        rtol=1e-6,
    )
    model.compile(keras.optimizers.Adam(1e-2))
    history = model.fit(x.astype(dtype), batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8"])
def test_integer_tensors_in_the_op_raise_a_value_error(dtype):
    x = keras.ops.zeros((2, 3), dtype)
    with pytest.raises(ValueError, match=r"mean must be float16, bfloat16, float32 or float64"):
        ops.reparameterize_kl(x, x, 1, [1, 2])
    with pytest.raises(ValueError, match="log_var must have the dtype of mean"):
        ops.reparameterize_kl(keras.ops.zeros((2, 3)), x, 1, [1, 2])


# ---------------------------------------------------------------------------
# Out of memory.


def _out_of_memory_error():
    """The error class and message with which the op's allocation fails:
    each framework's allocator has its own."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return tf.errors.ResourceExhaustedError, "OOM"
    if backend == "jax":
        import jax

        return jax.errors.JaxRuntimeError, "RESOURCE_EXHAUSTED"
    # The PyTorch CPU op allocates its outputs as NumPy arrays.
    return MemoryError, "Unable to allocate"


# Each failed allocation costs ~10 s: TensorFlow's CPU allocator waits for
# memory to be freed before it gives up.
@pytest.mark.slow
def test_too_many_samples_raise_resource_exhausted():
    """K * N * D * 4 bytes ~ 8.6e15: allocation fails with a clear error and
    the process carries on."""
    mean = np.zeros((1000, 1000), "float32")
    error, match = _out_of_memory_error()
    with pytest.raises(error, match=match):
        ops.reparameterize_kl(mean, mean, 2**31 - 1, [1, 2])
    z, _, _ = ops.reparameterize_kl(mean, mean, 2, [1, 2])
    assert z.shape == (2, 1000, 1000)


def test_too_many_samples_in_the_model_are_refused():
    """A model decodes all samples of an example at once: past
    MAX_SAMPLES_AT_ONCE it says so before allocating, and carries on."""
    model = tiny_vae.build()
    x = tiny_vae.data()
    match = r"num_samples must be <= 65536 .*log_likelihood.*2147483647"
    for method in (model.elbo, model.iwae_bound, model.reconstruct):
        with pytest.raises(ValueError, match=match):
            method(x, num_samples=2**31 - 1)
    assert np.all(np.isfinite(np.asarray(model.elbo(x, num_samples=2))))


# ---------------------------------------------------------------------------
# Model files.


def _sampling_model():
    x = keras.Input((tiny_vae.INPUT_DIM,))
    mean, log_var = keras_vae.layers.GaussianEncoderHead(4)(x)
    z = keras_vae.layers.Sampling(num_samples=2, seed=7)([mean, log_var])
    return keras.Model(x, z)


@pytest.mark.slow
def test_model_saved_with_the_op_runs_where_it_is_missing(tmp_path):
    if not ops.fused_available():
        pytest.skip("the op library is not built")
    x = tiny_vae.data()[:6]
    np.save(tmp_path / "x.npy", x)
    sampling_model = _sampling_model()
    sampling_model(x)  # advance the seed state, so the file carries it
    sampling_model.save(tmp_path / "sampling.keras")
    vae = tiny_vae.build()
    vae.save(tmp_path / "vae.keras")
    # What the loaded models give here, with the op. Its noise is the
    # reference's on TensorFlow only; elsewhere the reference draws its
    # backend's own (see keras_vae.ops), so it is run here as the oracle.
    with_op = keras.models.load_model(tmp_path / "sampling.keras")
    if keras.backend.backend() != "tensorflow":
        for layer in with_op.layers + [vae]:
            if hasattr(layer, "implementation"):
                layer.implementation = "reference"
    want_z = keras.ops.convert_to_numpy(with_op(x))
    want_elbo = np.asarray(vae.elbo(x, num_samples=3, seed=5))

    site = copy_package_without_libraries(tmp_path / "site")
    env = python_env(PYTHONPATH=f"{site}:{python_env()['PYTHONPATH']}")
    proc = run_python(
        [str(SCRIPTS_DIR / "load_without_library.py"), str(tmp_path)],
        cwd=tmp_path,
        env=env,
    )
    warnings = [line for line in proc.stdout.splitlines() if "RuntimeWarning" in line]
    assert len(warnings) == 1, proc.stdout
    assert "reference implementation" in warnings[0]
    with np.load(tmp_path / "without_library.npz") as got:
        np.testing.assert_allclose(got["z"], want_z, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got["elbo"], want_elbo, rtol=1e-5)


@pytest.fixture
def saved_model_bytes(tmp_path):
    path = tmp_path / "vae.keras"
    tiny_vae.build().save(path)
    return path.read_bytes()


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.0])
def test_truncated_model_file_raises(tmp_path, saved_model_bytes, keep):
    path = tmp_path / "truncated.keras"
    path.write_bytes(saved_model_bytes[: int(len(saved_model_bytes) * keep)])
    # Keras's message starts "File not found" but names the problem: the
    # file is not a readable .keras zip archive.
    with pytest.raises(ValueError, match=r"accessible `\.keras` zip file"):
        keras.models.load_model(path, safe_mode=True)


def test_corrupt_model_file_raises(tmp_path, saved_model_bytes):
    """Bytes flipped inside the stored weights: the archive's checksum fails."""
    data = bytearray(saved_model_bytes)
    with zipfile.ZipFile(io.BytesIO(saved_model_bytes)) as archive:
        info = archive.getinfo("model.weights.h5")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    middle = start + info.compress_size // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path = tmp_path / "corrupt.keras"
    path.write_bytes(bytes(data))
    with pytest.raises(zipfile.BadZipFile, match="Bad CRC-32 for file 'model.weights.h5'"):
        keras.models.load_model(path, safe_mode=True)


def test_keras_vae_load_model_says_truncated_or_corrupt(tmp_path,
                                                        saved_model_bytes):
    path = tmp_path / "truncated.keras"
    path.write_bytes(saved_model_bytes[: len(saved_model_bytes) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        keras_vae.load_model(path)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        keras_vae.load_model(tmp_path / "missing.keras")
    intact = tmp_path / "intact.keras"
    intact.write_bytes(saved_model_bytes)
    assert isinstance(keras_vae.load_model(intact), keras_vae.VAE)


# ---------------------------------------------------------------------------
# Data the model cannot use: an error at the edge, naming what is wrong.


def test_eight_bit_images_with_a_bernoulli_likelihood_are_refused():
    x = np.round(tiny_vae.data() * 255).astype("uint8")
    model = tiny_vae.build()
    model.compile(keras.optimizers.Adam(1e-2))
    match = r"x spans \[0, 255\].*Bernoulli.*x / 255"
    with pytest.raises(ValueError, match=match):
        model.fit(x, batch_size=8, epochs=1, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(8)
    with pytest.raises(ValueError, match=match):
        model.fit(dataset, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=match):
        model.log_likelihood(x, num_samples=2)


def _example_decoder(final_activation):
    z = keras.Input((tiny_vae.LATENT_DIM,))
    h = keras.layers.Dense(tiny_vae.INPUT_DIM,
                           activation=final_activation)(z)
    return keras.Model(z, keras.layers.Reshape((tiny_vae.INPUT_DIM,))(h))


def test_a_final_sigmoid_with_logits_is_detected():
    encoder = tiny_vae.build().encoder
    with pytest.raises(ValueError, match="sigmoid.*from_logits=False"):
        keras_vae.VAE(encoder, _example_decoder("sigmoid"), "bernoulli")
    # Probabilities declared as such, or logits: accepted.
    probs = keras_vae.VAE(
        encoder, _example_decoder("sigmoid"),
        keras_vae.likelihoods.Bernoulli(from_logits=False))
    x = tiny_vae.data()
    assert np.all(np.isfinite(np.asarray(probs.elbo(x))))
    keras_vae.VAE(encoder, _example_decoder(None), "bernoulli")


def test_data_without_its_channel_axis_names_both_shapes():
    image = keras.Input((4, 3, 1))
    mean, log_var = keras_vae.layers.GaussianEncoderHead(2)(
        keras.layers.Flatten()(image))
    encoder = keras.Model(image, [mean, log_var])
    z = keras.Input((2,))
    decoder = keras.Model(
        z, keras.layers.Reshape((4, 3, 1))(keras.layers.Dense(12)(z)))
    model = keras_vae.VAE(encoder, decoder)
    model.compile(keras.optimizers.Adam(1e-2))
    x = (np.random.default_rng(0).uniform(size=(16, 4, 3)) < 0.5)
    match = r"\(4, 3\).*\(4, 3, 1\).*x\[\.\.\., None\]"
    with pytest.raises(ValueError, match=match):
        model.fit(x.astype("float32"), batch_size=8, verbose=0)
    with pytest.raises(ValueError, match=match):
        model.elbo(x.astype("float32"))
    model.fit(x[..., None].astype("float32"), batch_size=8, verbose=0)


def test_tf_keras_is_refused_at_import():
    proc = run_python(["-c", "import keras_vae"], check=False,
                      env=python_env(TF_USE_LEGACY_KERAS="1"))
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr
    assert "TF_USE_LEGACY_KERAS" in proc.stderr and "Keras 3" in proc.stderr
