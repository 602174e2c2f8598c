"""Bad input gets the same clear error on the active backend as on the
others: the error class and the words naming the argument.

`make test` runs this directory under KERAS_BACKEND=tensorflow, jax and
torch, so each case here is answered alike by all three. Before, each of
these differed: NaN data trained on JAX, empty data returned `{}` on
TensorFlow and raised UnboundLocalError on JAX, `num_samples=True` passed
on TensorFlow only, `10**12` wrapped to a negative int32 there.
"""

import re

import keras
import numpy as np
import pytest

import keras_vae
from helpers import tiny_vae
from helpers.processes import python_env, run_python
from keras_vae.layers import GaussianEncoderHead, Sampling

BACKEND = keras.backend.backend()


def compiled(**kwargs):
    vae = tiny_vae.build(**kwargs)
    vae.compile(keras.optimizers.Adam(1e-3))
    return vae


def test_nan_data_is_refused_before_training():
    x = tiny_vae.data()
    x[3, 5] = np.nan
    vae = compiled()
    before = [keras.ops.convert_to_numpy(w) for w in vae.trainable_weights]
    with pytest.raises(ValueError, match="non-finite"):
        vae.fit(x, epochs=1, batch_size=8, verbose=0)
    with pytest.raises(ValueError, match="non-finite"):
        vae.evaluate(x, verbose=0)
    after = [keras.ops.convert_to_numpy(w) for w in vae.trainable_weights]
    assert all(np.array_equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize("method", ["fit", "evaluate"])
def test_empty_data_is_refused(method):
    vae = compiled()
    x = np.zeros((0, tiny_vae.INPUT_DIM), "float32")
    with pytest.raises(ValueError, match=r"x has no examples \(shape \(0, 12\)\)"):
        getattr(vae, method)(x, verbose=0)


def test_empty_npz_on_the_command_line_is_one_error_line(tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path, x_train=np.zeros((0, 4, 4)), x_test=np.zeros((3, 4, 4)))
    result = run_python(
        ["-m", "keras_vae", "train", "--dataset", "npz", "--npz", str(path),
         "--epochs", "1", "--output", str(tmp_path / "run")],
        env=python_env(), check=False,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        f"keras-vae train: error: {path}: the train split has no examples; "
        "every split needs at least one"
    ), result.stderr[-3000:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("num_samples, error, words", [
    (10**12, ValueError,
     "num_samples must be <= 2**31 - 1 = 2147483647 (the kernels' int32 "
     "sample axis), got 1000000000000"),
    (True, ValueError, "num_samples must be an int >= 1, got True"),
    (0, ValueError, "num_samples must be an int >= 1, got 0"),
    (2.0, TypeError, "num_samples must be a Python int"),
    (np.array([1, 2]), ValueError,
     "num_samples must be a scalar int, got shape [2]"),
])
@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_op_num_samples(num_samples, error, words, implementation):
    mean = np.zeros((2, 3), "float32")
    with pytest.raises(error, match=re.escape(words)):
        keras_vae.ops.reparameterize_kl(
            mean, mean, num_samples=num_samples, seed=[1, 2],
            implementation=implementation)


def test_sampling_num_samples_bool_is_refused():
    with pytest.raises(ValueError, match="num_samples must be an int >= 1, "
                       "got True"):
        Sampling(num_samples=True)


@pytest.mark.parametrize("num_samples", [10**9, 2**16 + 1])
def test_vae_num_samples_limit_at_construction(num_samples):
    with pytest.raises(ValueError, match=(
            rf"num_samples must be <= 65536 \(the samples of every example "
            rf"are decoded at once; log_likelihood draws more, in chunks\), "
            rf"got {num_samples}")):
        tiny_vae.build(num_samples=num_samples)
    vae = tiny_vae.build()
    x = tiny_vae.data()[:2]
    for method in (vae.elbo, vae.iwae_bound, vae.reconstruct):
        with pytest.raises(ValueError, match="num_samples must be <= 65536"):
            method(x, num_samples=num_samples)


def test_vae_takes_the_largest_num_samples():
    vae = tiny_vae.build(num_samples=2**16)
    assert vae.num_samples == 2**16


def test_decoder_input_size_differs_from_the_latent_size():
    x = keras.Input((6,))
    encoder = keras.Model(x, GaussianEncoderHead(3)(x))
    z = keras.Input((4,))
    decoder = keras.Model(z, keras.layers.Dense(6)(z))
    with pytest.raises(ValueError, match=(
            r"The encoder outputs latent codes of size 3 \(its mean and "
            r"log_var have shape \(None, 3\)\), but the decoder takes "
            r"inputs of size 4; the decoder's input size must be the "
            r"encoder's latent size")):
        keras_vae.VAE(encoder, decoder)


def test_sampling_takes_a_seed_generator_as_keras_random_does():
    generator = keras.random.SeedGenerator(1337)
    mean = np.zeros((2, 3), "float32")
    z = Sampling(seed=generator)([mean, mean])
    expected = keras_vae.ops.reparameterize_kl(mean, mean, seed=[1337, 0])[0][0]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(z),
                                  keras.ops.convert_to_numpy(expected))
    with pytest.raises(ValueError, match="seed must be an int, a pair of "
                       "ints or None"):
        Sampling(seed="1337")
