"""HierarchicalVAE on TensorFlow: construction errors, seeds, saving, the
mlp2 preset and the command line. The closed-form checks of its bounds and
gradients run on every backend, in tests/backends/test_hierarchical.py."""

import json

import keras
import numpy as np
import pytest

import keras_vae
from helpers import linear_gaussian as lg
from keras_vae import presets
from keras_vae import seeding
from keras_vae.cli import main


def gaussian_network(input_dim, output_dim, name):
    inputs = keras.Input((input_dim,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    outputs = keras_vae.layers.GaussianEncoderHead(output_dim)(h)
    return keras.Model(inputs, outputs, name=name)


def decoder(input_dim, event=6):
    inputs = keras.Input((input_dim,))
    return keras.Model(inputs, keras.layers.Dense(event)(inputs),
                       name="decoder")


def networks(d1=4, d2=3, event=6):
    return ([gaussian_network(event, d1, "x_to_z1"),
             gaussian_network(d1, d2, "z1_to_z2")],
            decoder(d1, event), [gaussian_network(d2, d1, "z2_to_z1")])


def test_three_layers_chain_and_sample():
    encoders = [gaussian_network(6, 5, "e0"), gaussian_network(5, 4, "e1"),
                gaussian_network(4, 3, "e2")]
    priors = [gaussian_network(4, 5, "p0"), gaussian_network(3, 4, "p1")]
    model = keras_vae.HierarchicalVAE(encoders, decoder(5), priors, seed=1)
    assert model.latent_dims == (5, 4, 3)
    x = (np.random.default_rng(0).random((7, 6)) > 0.5).astype("float32")
    means = np.asarray(model.sample(4, seed=2))
    assert means.shape == (4, 6) and np.all((means >= 0) & (means <= 1))
    bound = np.asarray(model.iwae_bound(x, num_samples=3, seed=3))
    assert bound.shape == (7,) and np.all(np.isfinite(bound))
    # One estimate may exceed 0 (p(z)/q(z|x) is a ratio of densities), so
    # the checks are that every layer's draw follows the seed: the same seed
    # gives the same bound, another seed another bound for every example.
    np.testing.assert_array_equal(
        np.asarray(model.iwae_bound(x, num_samples=3, seed=3)), bound
    )
    assert np.all(np.asarray(model.iwae_bound(x, num_samples=3, seed=4)) != bound)


@pytest.mark.parametrize("swap,named", [
    ("decoder", "decoder"),
    ("encoder", "encoders[1] ('bad')"),
    ("prior_in", "priors[0] ('bad')"),
    ("prior_out", "priors[0] ('bad')"),
])
def test_layer_sizes_that_do_not_chain_name_the_network(swap, named):
    encoders, dec, priors = networks()
    if swap == "decoder":
        dec = decoder(5)
    elif swap == "encoder":
        encoders[1] = gaussian_network(5, 3, "bad")
    elif swap == "prior_in":
        priors[0] = gaussian_network(2, 4, "bad")
    else:
        priors[0] = gaussian_network(3, 5, "bad")
    with pytest.raises(ValueError, match="do not chain") as info:
        keras_vae.HierarchicalVAE(encoders, dec, priors)
    assert named in str(info.value)


def test_wrong_counts_and_free_bits_are_refused():
    encoders, dec, priors = networks()
    with pytest.raises(ValueError, match="at least 2, got 1"):
        keras_vae.HierarchicalVAE(encoders[:1], dec, [])
    with pytest.raises(ValueError, match="priors must hold .* 1 for 2"):
        keras_vae.HierarchicalVAE(encoders, dec, priors * 2)
    with pytest.raises(ValueError, match="free_bits"):
        keras_vae.HierarchicalVAE(encoders, dec, priors, free_bits=0.5)


def test_layer_seeds():
    assert seeding.layer_seed([3, 4], 0) == [3, 4]
    assert seeding.layer_seed([3, 4], 1) == (3 + 0x2545F491, 4)
    for dtype in ("int32", "int64", "uint32"):
        seed = keras.ops.convert_to_tensor([3, 4], dtype=dtype)
        second = np.asarray(seeding.layer_seed(seed, 2)).astype(np.int64)
        assert second[1] == 4
        assert second[0] % 2**32 == (3 + 2 * 0x2545F491) % 2**32


def test_first_layer_draws_as_the_one_layer_vae():
    """z_1 comes from the step's seed itself: the reconstructions equal
    those of a VAE made of the first encoder and the decoder."""
    encoders, dec, priors = networks()
    model = keras_vae.HierarchicalVAE(encoders, dec, priors)
    flat = keras_vae.VAE(encoders[0], dec)
    x = np.random.default_rng(1).random((5, 6)).astype("float32")
    np.testing.assert_array_equal(
        np.asarray(model.reconstruct(x, num_samples=3, seed=[7, 8])),
        np.asarray(flat.reconstruct(x, num_samples=3, seed=[7, 8])))


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    p = lg.generative(rng, 3)
    model = lg.model(p, lg.perturbed(lg.exact_posterior(p), rng),
                     objective="iwae", num_samples=4,
                     gradient_estimator="dreg", seed=5,
                     beta=keras.optimizers.schedules.PolynomialDecay(
                         0.0, 100, 1.0))
    x = lg.data(p, rng, 32)
    model.compile(keras.optimizers.Adam(1e-2))
    model.fit(x, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / "hierarchical.keras"
    model.save(path)
    loaded = keras_vae.load_model(path)
    assert type(loaded) is keras_vae.HierarchicalVAE
    assert loaded.gradient_estimator == "dreg" and loaded.num_samples == 4
    assert loaded.beta.get_config() == model.beta.get_config()
    for method in ("iwae_bound", "elbo"):
        np.testing.assert_array_equal(
            np.asarray(getattr(loaded, method)(x, 4, seed=3)),
            np.asarray(getattr(model, method)(x, 4, seed=3)))
    np.testing.assert_array_equal(np.asarray(loaded.sample(3, seed=1)),
                                  np.asarray(model.sample(3, seed=1)))


def test_mlp2_preset_is_the_papers_two_layer_model():
    encoders, dec, priors = presets.build_hierarchical((28, 28, 1))
    model = keras_vae.HierarchicalVAE(encoders, dec, priors)
    assert model.latent_dims == (100, 50)
    dense = [[layer.units for layer in n.layers
              if isinstance(layer, keras.layers.Dense)] for n in
             (encoders[0], encoders[1], priors[0], dec)]
    assert dense == [[200, 200], [100, 100], [100, 100], [200, 200, 784]]
    with pytest.raises(ValueError, match="build_hierarchical"):
        presets.build("mlp2", (28, 28, 1))


def test_cli_trains_and_evaluates_the_two_layer_preset(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--preset", "mlp2",
                 "--latent-dim", "4", "--objective", "iwae", "-k", "3",
                 "--epochs", "1", "--limit", "300", "--verbose", "0",
                 "--output", str(run)]) == 0
    assert main(["evaluate", str(run), "--ll-samples", "50",
                 "--limit", "40", "--verbose", "0"]) == 0
    evaluation = json.loads((run / "metrics.json").read_text())["evaluation"]
    assert evaluation["latent_dim"] == 8
    assert [layer["latent_dim"] for layer in evaluation["layers"]] == [8, 4]
    assert all(0 <= layer["active_units"] <= layer["latent_dim"]
               for layer in evaluation["layers"])
    ll = evaluation["log_likelihood"]["mean"]
    assert evaluation["iwae"]["1"]["mean"] <= ll + 0.5
    assert evaluation["kl"]["mean"] > 0
    model = keras_vae.load_model(run / "model.keras")
    assert type(model) is keras_vae.HierarchicalVAE


def test_xla_step_trains_as_the_plain_step():
    """Both layers' op calls, and the frozen-weight evaluation of DReG's
    upper log q, compile under jit_compile=True to the same trajectory."""
    rng = np.random.default_rng(3)
    x = (rng.random((64, 6)) > 0.5).astype("float32")
    losses = {}
    for jit in (False, True):
        model = keras_vae.HierarchicalVAE(*networks(), num_samples=3,
                                          objective="iwae",
                                          gradient_estimator="dreg", seed=1)
        model.set_weights([
            np.random.default_rng(i).normal(0, 0.5, w.shape).astype("float32")
            for i, w in enumerate(model.get_weights())])
        model.compile(keras.optimizers.Adam(1e-2), jit_compile=jit)
        history = model.fit(x, epochs=3, batch_size=16, verbose=0,
                            shuffle=False)
        losses[jit] = history.history["loss"]
    assert losses[False][-1] < losses[False][0]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
