import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import keras
from scipy.stats import multivariate_normal
from sklearn.datasets import load_digits

import keras_vae
from helpers import tiny_vae
from keras_vae.layers import GaussianEncoderHead

tfd = tfp.distributions


# A linear-Gaussian model: z ~ N(0, I_d), x|z ~ N(Wz + b, sigma^2 I_n), so
# x ~ N(b, W W^T + sigma^2 I). W has orthogonal columns, so the exact
# posterior N(A (x - b), diag(c)) is diagonal: c = 1 / (1 + s^2 / sigma^2)
# with s the column norms, A = diag(c) W^T / sigma^2.

N_OBS, LATENT, SIGMA = 6, 2, 0.5


class LinearGaussian:
    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.normal(size=(N_OBS, LATENT)))
        self.w = q * np.array([2.0, 1.0])
        self.b = rng.normal(size=N_OBS)
        self.posterior_var = 1.0 / (1.0 + np.sum(self.w**2, 0) / SIGMA**2)
        self.a = (self.posterior_var[:, None] * self.w.T) / SIGMA**2
        self.rng = rng

    def data(self, n):
        z = self.rng.normal(size=(n, LATENT))
        x = z @ self.w.T + self.b + SIGMA * self.rng.normal(size=(n, N_OBS))
        return x.astype("float32")

    def log_px(self, x):
        cov = self.w @ self.w.T + SIGMA**2 * np.eye(N_OBS)
        return multivariate_normal(self.b, cov).logpdf(x)

    def vae(self, mean_scale=1.0, log_var_shift=0.0, **kwargs):
        """The VAE of this model; the exact posterior when unperturbed."""
        inputs = keras.Input((N_OBS,))
        head = GaussianEncoderHead(LATENT)
        encoder = keras.Model(inputs, head(inputs))
        head.mean_dense.set_weights(
            [mean_scale * self.a.T, -mean_scale * self.a @ self.b]
        )
        head.log_var_dense.set_weights(
            [
                np.zeros((N_OBS, LATENT)),
                np.log(self.posterior_var) + log_var_shift,
            ]
        )
        decoder = linear_decoder()
        decoder.set_weights([self.w.T, self.b])
        kwargs.setdefault("likelihood", keras_vae.likelihoods.Gaussian(SIGMA))
        return keras_vae.VAE(encoder, decoder, **kwargs)


def linear_decoder():
    z = keras.Input((LATENT,))
    return keras.Model(z, keras.layers.Dense(N_OBS)(z))


def dense_encoder(n_in, latent, hidden=32):
    inputs = keras.Input((n_in,))
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    return keras.Model(inputs, GaussianEncoderHead(latent)(h))


def dense_decoder(latent, n_out, hidden=32):
    z = keras.Input((latent,))
    h = keras.layers.Dense(hidden, activation="relu")(z)
    return keras.Model(z, keras.layers.Dense(n_out)(h))


def digits(n=None):
    x = load_digits().data.astype("float32") / 16.0
    return x if n is None else x[:n]


# Closed-form checks.


def test_exact_posterior_makes_the_elbo_equal_log_px():
    model = LinearGaussian()
    x = model.data(32)
    log_px = model.log_px(x)
    # With q(z|x) = p(z|x), every log w_k = log p(x, z_k) - log q(z_k|x) is
    # log p(x): the Monte Carlo ELBO and the IWAE bound have no noise.
    vae = model.vae(kl="mc", seed=0)
    for value in (
        vae.elbo(x, num_samples=3),
        vae.iwae_bound(x, num_samples=3),
        vae.log_likelihood(x, num_samples=10, chunk_size=4),
    ):
        np.testing.assert_allclose(value, log_px, rtol=1e-5, atol=1e-4)
    # With the analytic KL only the reconstruction term is sampled.
    analytic = model.vae(seed=0).elbo(x, num_samples=4000)
    np.testing.assert_allclose(analytic, log_px, atol=0.05)


def test_elbo_below_iwae_below_log_px_and_iwae_rises_with_k():
    model = LinearGaussian()
    x = model.data(512)
    log_px = model.log_px(x).mean()
    vae = model.vae(mean_scale=0.6, log_var_shift=0.7, seed=1)
    elbo = float(np.mean(vae.elbo(x, num_samples=10)))
    iwae = [
        float(np.mean(vae.iwae_bound(x, num_samples=k))) for k in (1, 10, 100)
    ]
    # The gaps are nats; the Monte Carlo error of these means is ~0.05.
    assert elbo < iwae[1] - 0.2
    assert iwae[0] < iwae[1] - 0.2 < iwae[2] - 0.4
    assert iwae[2] < log_px
    assert log_px - iwae[2] < log_px - elbo


def test_log_likelihood_converges_to_log_px():
    model = LinearGaussian()
    x = model.data(64)
    log_px = model.log_px(x)
    vae = model.vae(mean_scale=0.8, log_var_shift=0.3, seed=2)
    gap = log_px - np.asarray(vae.elbo(x, num_samples=100))
    assert gap.mean() > 0.3

    def error(num_samples):
        # 700 does not divide 5000: the last chunk is smaller.
        estimate = np.asarray(vae.log_likelihood(
            x, num_samples, batch_size=24, chunk_size=700, seed=3, verbose=0
        ))
        assert estimate.shape == (64,)
        return np.abs(estimate - log_px)

    few, many = error(50), error(5000)
    assert many.mean() < few.mean() / 3
    assert many.mean() < 0.01 and many.max() < 0.1


def test_iwae_trained_with_fit_has_log_likelihood_confirmed_in_closed_form():
    truth = LinearGaussian(seed=4)
    x_train, x_test = truth.data(1024), truth.data(64)
    vae = keras_vae.VAE(
        dense_encoder(N_OBS, LATENT, hidden=16),
        linear_decoder(),
        likelihood=keras_vae.likelihoods.Gaussian("learned"),
        num_samples=8,
        objective="iwae",
        gradient_estimator="dreg",
        seed=5,
    )
    vae.compile(keras.optimizers.Adam(0.02))
    history = vae.fit(x_train, batch_size=128, epochs=25, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0] - 2.0

    # The trained model is linear-Gaussian too: x ~ N(b, W W^T + diag(s^2)).
    kernel, bias = (keras.ops.convert_to_numpy(v) for v in vae.decoder.weights)
    scale = np.exp(keras.ops.convert_to_numpy(vae.likelihood.log_scale))
    cov = kernel.T @ kernel + np.diag(scale**2)
    exact = multivariate_normal(bias, cov).logpdf(x_test)
    estimate = vae.log_likelihood(x_test, num_samples=5000, seed=6, verbose=0)
    error = np.abs(estimate - exact)
    assert error.mean() < 0.02 and error.max() < 0.2
    # And it learned the data: close to the true model's log-likelihood.
    assert abs(exact.mean() - truth.log_px(x_test).mean()) < 0.3


# Gradient estimators against gradients computed independently, by
# TensorFlow on copies of the weights, with TFP densities and the op's
# documented noise (tf.random.stateless_normal's on every backend).


def _tiny_vae(objective, gradient_estimator, kl="analytic"):
    rng = np.random.default_rng(7)
    vae = keras_vae.VAE(
        dense_encoder(3, 2, hidden=4),
        dense_decoder(2, 3, hidden=4),
        likelihood=keras_vae.likelihoods.Gaussian(0.7),
        num_samples=4,
        objective=objective,
        gradient_estimator=gradient_estimator,
        kl=kl,
    )
    for v in vae.trainable_variables:
        v.assign(rng.normal(scale=0.5, size=v.shape))
    vae.compile(keras.optimizers.SGD())
    x = rng.normal(size=(2, 3)).astype("float32")
    return vae, x


def _tf_networks(vae):
    """`_tiny_vae`'s encoder and decoder as TensorFlow functions of
    `tf.Variable` copies of their weights.

    Returns:
        `(encoder, decoder, copies)`: `copies` maps `id` of each Keras
        variable to its copy.
    """
    hidden, head = vae.encoder.layers[1:]
    dec_hidden, dec_out = vae.decoder.layers[1:]
    dense_layers = [
        hidden, head.mean_dense, head.log_var_dense, dec_hidden, dec_out
    ]
    copies = {
        id(v): tf.Variable(keras.ops.convert_to_numpy(v))
        for layer in dense_layers
        for v in (layer.kernel, layer.bias)
    }

    def dense(layer, inputs):
        return inputs @ copies[id(layer.kernel)] + copies[id(layer.bias)]

    def encoder(x):
        h = tf.nn.relu(dense(hidden, x))
        low, high = head.log_var_range
        log_var = tf.clip_by_value(dense(head.log_var_dense, h), low, high)
        return dense(head.mean_dense, h), log_var

    def decoder(z):
        return dense(dec_out, tf.nn.relu(dense(dec_hidden, z)))

    return encoder, decoder, copies


def _expected_gradients(vae, x, seed, objective, estimator, kl):
    eps = tf.random.stateless_normal([4, 2, 2], seed=seed)
    encoder, decoder, copies = _tf_networks(vae)
    enc_vars = [copies[id(v)] for v in vae.encoder.trainable_variables]
    dec_vars = [copies[id(v)] for v in vae.decoder.trainable_variables]
    with tf.GradientTape(persistent=True) as tape:
        mean, log_var = encoder(x)
        std = tf.exp(0.5 * log_var)
        z = mean + std * eps
        q_mean, q_std = mean, std
        if estimator != "standard":
            q_mean, q_std = tf.stop_gradient(mean), tf.stop_gradient(std)
        log_q = tf.reduce_sum(tfd.Normal(q_mean, q_std).log_prob(z), -1)
        log_prior = tf.reduce_sum(tfd.Normal(0.0, 1.0).log_prob(z), -1)
        loc = tf.reshape(decoder(tf.reshape(z, [8, 2])), [4, 2, 3])
        log_px_z = tf.reduce_sum(tfd.Normal(loc, 0.7).log_prob(x), -1)
        log_w = log_px_z + log_prior - log_q
        if objective == "iwae":
            loss = -tf.reduce_mean(
                tf.reduce_logsumexp(log_w, 0) - tf.math.log(4.0)
            )
        elif kl == "analytic" and estimator == "standard":
            analytic = tfd.kl_divergence(
                tfd.Normal(mean, std), tfd.Normal(0.0, 1.0)
            )
            loss = -tf.reduce_mean(
                tf.reduce_mean(log_px_z, 0) - tf.reduce_sum(analytic, -1)
            )
        else:
            loss = -tf.reduce_mean(log_w)
    if estimator != "dreg":
        return tape.gradient(loss, enc_vars + dec_vars)
    # DReG: the encoder gets sum_k w~_k^2 d log w_k, z's path only.
    normalized = tf.nn.softmax(log_w, axis=0)
    jacobians = tape.jacobian(log_w, enc_vars)
    encoder_grads = [
        -tf.einsum("kb,kb...->...", normalized**2, j) / 2.0 for j in jacobians
    ]
    return encoder_grads + tape.gradient(loss, dec_vars)


@pytest.mark.parametrize(
    "objective, estimator, kl",
    [
        ("elbo", "standard", "analytic"),
        ("elbo", "standard", "mc"),
        ("elbo", "stl", "mc"),
        ("iwae", "standard", "analytic"),
        ("iwae", "stl", "analytic"),
        ("iwae", "dreg", "analytic"),
    ],
)
def test_gradient_estimators_match_hand_computed_gradients(
    objective, estimator, kl
):
    vae, x = _tiny_vae(objective, estimator, kl)
    seed = (3, 9)
    gradients, variables, _, _ = vae.compute_gradients(x, seed=seed)
    expected = _expected_gradients(vae, x, seed, objective, estimator, kl)
    order = {id(v): i for i, v in enumerate(variables)}
    reference_vars = (
        vae.encoder.trainable_variables + vae.decoder.trainable_variables
    )
    assert len(variables) == len(reference_vars)
    for v, want in zip(reference_vars, expected):
        got = keras.ops.convert_to_numpy(gradients[order[id(v)]])
        np.testing.assert_allclose(
            got, want.numpy(), rtol=2e-4, atol=1e-5, err_msg=v.path
        )


def test_compute_gradients_before_compile_equals_after():
    """compute_gradients is usable in a custom loop with no compile."""
    vae, x = _tiny_vae("iwae", "standard")
    seed = (3, 9)
    compiled, _, _, _ = vae.compute_gradients(x, seed=seed)
    fresh = keras_vae.VAE(
        vae.encoder, vae.decoder, vae.likelihood, num_samples=4, objective="iwae"
    )
    uncompiled, _, _, _ = fresh.compute_gradients(x, seed=seed)
    for got, want in zip(uncompiled, compiled):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got),
            keras.ops.convert_to_numpy(want),
            rtol=1e-6,
        )


def test_stl_and_dreg_differ_from_the_standard_gradient():
    seed = (3, 9)
    encoder_grads = {}
    for estimator in ("standard", "stl", "dreg"):
        vae, x = _tiny_vae("iwae", estimator)
        grads, variables, _, _ = vae.compute_gradients(x, seed=seed)
        encoder_grads[estimator] = keras.ops.convert_to_numpy(grads[0])
    assert not np.allclose(encoder_grads["standard"], encoder_grads["stl"])
    assert not np.allclose(encoder_grads["stl"], encoder_grads["dreg"])


# Training and evaluation.


def test_trains_on_digits_with_validation_data():
    x = digits()
    vae = keras_vae.VAE(
        dense_encoder(64, 4), dense_decoder(4, 64), "bernoulli", seed=0
    )
    vae.compile(keras.optimizers.Adam(3e-3))
    history = vae.fit(
        x[:1200],
        batch_size=100,
        epochs=4,
        validation_data=(x[1200:1500],),
        verbose=0,
    ).history
    assert set(history) == {
        "loss", "elbo", "reconstruction", "kl",
        "val_loss", "val_elbo", "val_reconstruction", "val_kl",
    }
    assert history["loss"][-1] < history["loss"][0] - 5.0
    assert history["val_loss"][-1] < history["val_loss"][0]
    # The loss is per example (64 pixels), not per pixel.
    np.testing.assert_allclose(history["loss"], -np.array(history["elbo"]), rtol=1e-5)
    assert history["loss"][-1] > 10.0
    result = vae.evaluate(x[1500:], verbose=0, return_dict=True)
    np.testing.assert_allclose(
        result["elbo"], result["reconstruction"] - result["kl"], rtol=1e-4
    )
    reconstruction = vae.predict(x[:10], verbose=0)
    assert reconstruction.shape == (10, 64)
    assert reconstruction.min() >= 0.0 and reconstruction.max() <= 1.0


@pytest.mark.parametrize(
    "kwargs, beta_expected",
    [
        ({"beta": 0.0}, 0.0),
        ({"beta": 2.5}, 2.5),
        (
            {
                "beta": keras.optimizers.schedules.PolynomialDecay(
                    0.0, 10, end_learning_rate=1.0
                )
            },
            0.0,
        ),
    ],
)
def test_beta_weighs_the_kl_in_the_loss(kwargs, beta_expected):
    x = digits(128)
    vae = keras_vae.VAE(dense_encoder(64, 3), dense_decoder(3, 64), **kwargs)
    vae.compile(keras.optimizers.Adam())
    r = vae.evaluate(x, batch_size=128, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        r["loss"], -r["reconstruction"] + beta_expected * r["kl"], rtol=1e-5
    )
    # The reported bound does not depend on beta.
    np.testing.assert_allclose(r["elbo"], r["reconstruction"] - r["kl"], rtol=1e-5)


def test_beta_schedule_follows_the_optimizer_step():
    x = digits(128)
    schedule = keras.optimizers.schedules.PolynomialDecay(0.0, 4, 1.0)
    vae = keras_vae.VAE(dense_encoder(64, 3), dense_decoder(3, 64), beta=schedule)
    vae.compile(keras.optimizers.Adam())
    vae.fit(x, batch_size=32, epochs=1, verbose=0)  # 4 steps: warm-up done
    r = vae.evaluate(x, batch_size=128, verbose=0, return_dict=True)
    np.testing.assert_allclose(r["loss"], -r["elbo"], rtol=1e-5)


def test_free_bits_floor_each_dimension():
    x = digits(128)
    vae = keras_vae.VAE(dense_encoder(64, 3), dense_decoder(3, 64), free_bits=0.5)
    vae.compile(keras.optimizers.Adam())
    r = vae.evaluate(x, batch_size=128, verbose=0, return_dict=True)
    mean, log_var = (np.asarray(t) for t in vae.encode(x))
    kl_d = 0.5 * (np.exp(log_var) + mean**2 - 1.0 - log_var)
    floored = np.maximum(kl_d.mean(0), 0.5).sum()
    assert floored > r["kl"]
    np.testing.assert_allclose(r["loss"], -r["reconstruction"] + floored, rtol=1e-4)


def test_sample_weights_weigh_examples():
    x = digits(64)
    vae = keras_vae.VAE(dense_encoder(64, 3), dense_decoder(3, 64), seed=1)
    vae.compile(keras.optimizers.Adam())
    weights = np.r_[np.ones(32), np.zeros(32)].astype("float32")
    # y is ignored; Keras passes sample weights on only alongside a y.
    r = vae.evaluate(
        x, x, sample_weight=weights, batch_size=64, verbose=0, return_dict=True
    )
    # evaluate drew the generator's first seed, [1, 0], as does seed=1.
    per_example = np.asarray(vae.elbo(x, seed=1))
    np.testing.assert_allclose(r["elbo"], per_example[:32].mean(), rtol=1e-5)
    np.testing.assert_allclose(r["loss"], -per_example[:32].mean(), rtol=1e-5)


def test_regularization_losses_are_added():
    x = digits(64)
    inputs = keras.Input((64,))
    head = GaussianEncoderHead(3, kernel_regularizer=keras.regularizers.L2(10.0))
    vae = keras_vae.VAE(keras.Model(inputs, head(inputs)), dense_decoder(3, 64))
    vae.compile(keras.optimizers.Adam())
    r = vae.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    penalty = sum(float(keras.ops.convert_to_numpy(l)) for l in vae.losses)
    assert penalty > 1.0
    np.testing.assert_allclose(r["loss"], -r["elbo"] + penalty, rtol=1e-5)


@pytest.mark.slow
def test_trains_under_xla():
    vae = keras_vae.VAE(
        dense_encoder(64, 3), dense_decoder(3, 64), num_samples=3, objective="iwae",
        gradient_estimator="dreg",
    )
    vae.compile(keras.optimizers.Adam(3e-3), jit_compile=True)
    assert vae.jit_compile
    history = vae.fit(digits(512), batch_size=64, epochs=3, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert history["loss"][-1] < history["loss"][0]


# Inference methods.


def test_reconstruct_returns_every_sample():
    x = tiny_vae.data()[:5]
    vae = tiny_vae.build(seed=2)
    recon = np.asarray(vae.reconstruct(x, num_samples=4))
    assert recon.shape == (4, 5, tiny_vae.INPUT_DIM)
    assert not np.allclose(recon[0], recon[1])
    assert vae.reconstruct(x).shape == (1, 5, tiny_vae.INPUT_DIM)


def test_sample_is_reproducible_and_draws_from_the_likelihood():
    vae = tiny_vae.build()
    means = vae.sample(6, seed=4)
    assert means.shape == (6, tiny_vae.INPUT_DIM)
    np.testing.assert_array_equal(means, vae.sample(6, seed=4))
    assert not np.allclose(vae.sample(6), vae.sample(6))
    draws = np.asarray(vae.sample(6, seed=4, draw=True))
    assert set(np.unique(draws)) <= {0.0, 1.0}


def test_decode_folds_sample_axes():
    vae = keras_vae.VAE(dense_encoder(64, 3), dense_decoder(3, 64))
    z = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
    out = vae.decode(z)
    assert out.shape == (2, 5, 64)
    # Against the decoder on the same 10 rows (another batch size may sum
    # in another order on some backends' CPU kernels).
    folded = keras.ops.convert_to_numpy(vae.decoder(z.reshape(10, 3)))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out[1]), folded[5:], rtol=1e-6
    )


def test_log_likelihood_shows_a_progress_bar_on_long_runs(capsys):
    vae = keras_vae.VAE(dense_encoder(64, 3), dense_decoder(3, 64))
    vae.log_likelihood(digits(4), num_samples=20, chunk_size=2)
    assert "chunk" in capsys.readouterr().out
    vae.log_likelihood(digits(4), num_samples=20, chunk_size=10)
    assert capsys.readouterr().out == ""


# Saving.


def test_save_load_round_trip(tmp_path):
    x = digits(64)
    vae = keras_vae.VAE(
        dense_encoder(64, 3),
        dense_decoder(3, 64),
        likelihood=keras_vae.likelihoods.Gaussian("learned"),
        num_samples=3,
        objective="iwae",
        gradient_estimator="stl",
        beta=keras.optimizers.schedules.PolynomialDecay(0.1, 100, 1.0),
        seed=8,
    )
    vae.compile(keras.optimizers.Adam(1e-2))
    vae.fit(x, batch_size=32, epochs=1, verbose=0)
    path = str(tmp_path / "vae.keras")
    vae.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded, keras_vae.VAE)
    # Equal up to tuples read back as lists.
    assert json.loads(json.dumps(loaded.get_config())) == json.loads(
        json.dumps(vae.get_config())
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded.likelihood.log_scale),
        keras.ops.convert_to_numpy(vae.likelihood.log_scale),
    )
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), vae.predict(x, verbose=0))
    # The seed generator's state was restored: the next draws are the same.
    np.testing.assert_array_equal(
        np.asarray(loaded.iwae_bound(x, 3)), np.asarray(vae.iwae_bound(x, 3))
    )
    np.testing.assert_array_equal(
        np.asarray(loaded.sample(4)), np.asarray(vae.sample(4))
    )
    np.testing.assert_array_equal(
        np.asarray(loaded.elbo(x, 2, seed=1)), np.asarray(vae.elbo(x, 2, seed=1))
    )
    # Training continues after loading.
    loaded.fit(x, batch_size=32, epochs=1, verbose=0)


@pytest.mark.tensorflow_only("export writes a TensorFlow SavedModel")
def test_export_serves(tmp_path):
    x = digits(8)
    vae = keras_vae.VAE(dense_encoder(64, 3), dense_decoder(3, 64))
    path = str(tmp_path / "exported")
    vae.export(path, verbose=False)
    reloaded = tf.saved_model.load(path)  # keep it alive while serving
    served = reloaded.serve(tf.constant(x))
    np.testing.assert_allclose(served, vae.predict(x, verbose=0), rtol=1e-6)


# Bad arguments.


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"objective": "vimco"}, "objective"),
        ({"gradient_estimator": "reinforce"}, "gradient_estimator"),
        ({"gradient_estimator": "dreg"}, "dreg"),
        ({"kl": "exact"}, "kl"),
        ({"beta": -1.0}, "beta"),
        ({"free_bits": -0.1}, "free_bits"),
        ({"free_bits": 0.1, "objective": "iwae"}, "free_bits"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"implementation": "gpu"}, "implementation"),
    ],
)
def test_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        keras_vae.VAE(dense_encoder(4, 2), dense_decoder(2, 4), **kwargs)


def test_rejects_an_encoder_without_two_outputs():
    inputs = keras.Input((4,))
    encoder = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    vae = keras_vae.VAE(encoder, dense_decoder(2, 4))
    with pytest.raises(ValueError, match="encoder"):
        vae.encode(np.zeros((1, 4), "float32"))


def test_log_likelihood_default_batch_is_bounded_independently_of_n(
        monkeypatch):
    vae = keras_vae.VAE(dense_encoder(64, 3), dense_decoder(3, 64))
    default = vae._log_likelihood_batch_size(500)
    # The decoder's activations for one z: z (3), 32 hidden, 64 logits,
    # plus two outputs' worth for the likelihood's terms; float32, 500 z.
    per_example = 4 * (3 + 32 + 64 + 2 * 64) * 500
    assert default == keras_vae.model.LOG_LIKELIHOOD_MEMORY_BUDGET // per_example
    seen = []
    original = keras_vae.VAE._compiled_chunk_logsumexp

    def recording(self):
        # Around the compiled chunk, whose trace sees no batch size.
        compiled = original(self)

        def chunk_logsumexp(x, num_samples, seed):
            seen.append(int(x.shape[0]))
            return compiled(x, num_samples, seed)

        return chunk_logsumexp

    monkeypatch.setattr(keras_vae.VAE, "_compiled_chunk_logsumexp", recording)
    monkeypatch.setattr(keras_vae.model, "LOG_LIKELIHOOD_MEMORY_BUDGET",
                        4 * (3 + 32 + 64 + 2 * 64) * 10 * 7)
    for n in (5, 40):
        seen.clear()
        out = vae.log_likelihood(digits(n), num_samples=10, chunk_size=10,
                                 verbose=0)
        assert out.shape == (n,)
        assert max(seen) == min(n, 7) and sum(seen) == n


def test_log_likelihood_takes_datasets_and_iterables_and_empty_input():
    vae = keras_vae.VAE(dense_encoder(64, 3), dense_decoder(3, 64))
    x = digits(20)
    want = np.asarray(
        vae.log_likelihood(x, 30, batch_size=8, seed=1, verbose=0)
    )
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(8)
    got = vae.log_likelihood(dataset, 30, batch_size=8, seed=1, verbose=0)
    np.testing.assert_array_equal(np.asarray(got), want)
    # Batches of (x, y), larger than batch_size: split, same order.
    pairs = [(x[:16], None), (x[16:], None)]
    got = vae.log_likelihood(iter(pairs), 30, batch_size=8, seed=1, verbose=0)
    np.testing.assert_array_equal(np.asarray(got), want)
    empty = vae.log_likelihood(np.zeros((0, 64), "float32"), 30, verbose=0)
    assert empty.shape == (0,) and empty.dtype == "float32"
    assert vae.log_likelihood(dataset.take(0), 30, verbose=0).shape == (0,)
