"""ConditionalVAE on TensorFlow: bounds against a closed-form log p(x|c),
KL against TFP, saving, errors at the edge, class-conditional training on
digits and the command line's --conditional runs."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy.stats import multivariate_normal
from sklearn.datasets import load_digits

import keras_vae
from keras_vae import bounds, cli, presets
from keras_vae.layers import GaussianEncoderHead

tfd = tfp.distributions

# A linear-Gaussian conditional model, m the condition's size:
#   z | c ~ N(P c + p, diag(v)),   x | z, c ~ N(A z + B c + b, s^2 I).
# A has orthogonal columns, so the exact posterior is diagonal:
#   S = 1 / (1/v + |a_j|^2 / s^2),
#   m(x, c) = S (P c + p) / v + S A^T (x - B c - b) / s^2,
# and x | c ~ N(A (P c + p) + B c + b, A diag(v) A^T + s^2 I).

N_OBS, LATENT, SIGMA = 6, 2, 0.5


class LinearGaussian:
    """With `num_classes` the condition is labels, seen one-hot by the
    networks; otherwise a continuous condition of size 2. With
    `learned_prior=False` the prior is N(0, I) (P = 0, p = 0, v = 1)."""

    def __init__(self, seed=0, num_classes=None, learned_prior=True):
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.num_classes = num_classes
        self.learned_prior = learned_prior
        m = num_classes or 2
        q, _ = np.linalg.qr(rng.normal(size=(N_OBS, LATENT)))
        self.a = q * np.array([2.0, 1.0])
        self.b_c = rng.normal(size=(N_OBS, m))
        self.b = rng.normal(size=N_OBS)
        if learned_prior:
            self.p_c = rng.normal(size=(LATENT, m))
            self.p = rng.normal(size=LATENT)
            self.v = np.array([0.5, 2.0])
        else:
            self.p_c = np.zeros((LATENT, m))
            self.p = np.zeros(LATENT)
            self.v = np.ones(LATENT)
        self.s = 1.0 / (1.0 / self.v + np.sum(self.a**2, 0) / SIGMA**2)

    def network_condition(self, condition):
        if self.num_classes is None:
            return condition
        return np.eye(self.num_classes)[condition]

    def data(self, n):
        if self.num_classes is None:
            condition = self.rng.normal(size=(n, 2)).astype("float32")
        else:
            condition = self.rng.integers(0, self.num_classes, n)
        c = self.network_condition(condition)
        z = c @ self.p_c.T + self.p + np.sqrt(self.v) * self.rng.normal(
            size=(n, LATENT)
        )
        x = z @ self.a.T + c @ self.b_c.T + self.b
        x = x + SIGMA * self.rng.normal(size=x.shape)
        return x.astype("float32"), condition

    def log_px(self, x, condition):
        c = self.network_condition(condition)
        mean = (c @ self.p_c.T + self.p) @ self.a.T + c @ self.b_c.T + self.b
        cov = self.a @ np.diag(self.v) @ self.a.T + SIGMA**2 * np.eye(N_OBS)
        return np.array(
            [multivariate_normal(mu, cov).logpdf(xi) for mu, xi in zip(mean, x)]
        )

    def posterior(self, x, condition):
        """The exact posterior's mean `[B, D]` and variance `[D]`."""
        c = self.network_condition(condition)
        prior_mean = c @ self.p_c.T + self.p
        residual = x - c @ self.b_c.T - self.b
        mean = self.s * (prior_mean / self.v + residual @ self.a / SIGMA**2)
        return mean, self.s

    def vae(self, mean_scale=1.0, log_var_shift=0.0, **kwargs):
        """The model's ConditionalVAE; the exact posterior when
        unperturbed."""
        m = self.num_classes or 2
        x_in, c_in = keras.Input((N_OBS,)), keras.Input((m,))
        head = GaussianEncoderHead(LATENT)
        encoder = keras.Model(
            [x_in, c_in], head(keras.layers.Concatenate()([x_in, c_in]))
        )
        # m(x, c) = Kx x + Kc c + k0.
        kx = (self.s[:, None] * self.a.T) / SIGMA**2
        kc = (self.s / self.v)[:, None] * self.p_c - kx @ self.b_c
        k0 = self.s * self.p / self.v - kx @ self.b
        head.mean_dense.set_weights(
            [mean_scale * np.concatenate([kx.T, kc.T]), mean_scale * k0]
        )
        head.log_var_dense.set_weights(
            [np.zeros((N_OBS + m, LATENT)), np.log(self.s) + log_var_shift]
        )

        z_in, c_dec = keras.Input((LATENT,)), keras.Input((m,))
        dense = keras.layers.Dense(N_OBS)
        decoder = keras.Model(
            [z_in, c_dec], dense(keras.layers.Concatenate()([z_in, c_dec]))
        )
        dense.set_weights([np.concatenate([self.a.T, self.b_c.T]), self.b])

        prior = None
        if self.learned_prior:
            c_prior = keras.Input((m,))
            prior_head = GaussianEncoderHead(LATENT)
            prior = keras.Model(c_prior, prior_head(c_prior))
            prior_head.mean_dense.set_weights([self.p_c.T, self.p])
            prior_head.log_var_dense.set_weights(
                [np.zeros((m, LATENT)), np.log(self.v)]
            )
        kwargs.setdefault("likelihood", keras_vae.likelihoods.Gaussian(SIGMA))
        return keras_vae.ConditionalVAE(
            encoder, decoder, prior=prior, num_classes=self.num_classes,
            **kwargs,
        )


MODELS = {
    "learned-prior": dict(learned_prior=True),
    "labels-learned-prior": dict(num_classes=3, learned_prior=True),
    "standard-prior": dict(learned_prior=False),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_exact_posterior_makes_every_bound_equal_log_px_given_c(name):
    model = LinearGaussian(**MODELS[name])
    x, c = model.data(32)
    log_px = model.log_px(x, c)
    vae = model.vae(kl="mc", seed=0)
    for value in (
        vae.elbo(x, c, num_samples=3),
        vae.iwae_bound(x, c, num_samples=3),
        vae.log_likelihood(x, c, num_samples=10, chunk_size=4, verbose=0),
    ):
        np.testing.assert_allclose(value, log_px, rtol=1e-5, atol=1e-4)
    # With the analytic KL only the reconstruction term is sampled: its
    # Monte Carlo error here is ~0.02 per example, ~0.005 for the mean.
    analytic = np.asarray(model.vae(seed=0).elbo(x, c, num_samples=4000))
    np.testing.assert_allclose(analytic, log_px, atol=0.1)
    assert abs(analytic.mean() - log_px.mean()) < 0.03
    # The encoder is the exact posterior.
    mean, log_var = (np.asarray(t) for t in vae.encode(x, c))
    exact_mean, exact_var = model.posterior(x, c)
    np.testing.assert_allclose(mean, exact_mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        np.exp(log_var), np.broadcast_to(exact_var, mean.shape), rtol=1e-4
    )


def test_bounds_below_log_px_and_iwae_rises_with_k():
    model = LinearGaussian(seed=1)
    x, c = model.data(512)
    log_px = model.log_px(x, c).mean()
    vae = model.vae(mean_scale=0.6, log_var_shift=0.7, seed=1)
    elbo = float(np.mean(vae.elbo(x, c, num_samples=10)))
    iwae = [
        float(np.mean(vae.iwae_bound(x, c, num_samples=k)))
        for k in (1, 10, 100)
    ]
    # The gaps are nats; the Monte Carlo error of these means is ~0.05.
    assert elbo < iwae[1] - 0.2
    assert iwae[0] < iwae[1] - 0.2 < iwae[2] - 0.4
    assert iwae[2] < log_px
    assert log_px - iwae[2] < log_px - elbo


def test_log_likelihood_converges_to_log_px_given_c():
    model = LinearGaussian(seed=2, num_classes=3)
    x, c = model.data(64)
    log_px = model.log_px(x, c)
    vae = model.vae(mean_scale=0.8, log_var_shift=0.3, seed=2)
    gap = log_px - np.asarray(vae.elbo(x, c, num_samples=100))
    assert gap.mean() > 0.3

    def error(num_samples, **kwargs):
        estimate = np.asarray(vae.log_likelihood(
            num_samples=num_samples, batch_size=24, chunk_size=700, seed=3,
            verbose=0, **kwargs,
        ))
        assert estimate.shape == (64,)
        return np.abs(estimate - log_px)

    few, many = error(50, x=x, condition=c), error(5000, x=x, condition=c)
    assert many.mean() < few.mean() / 3
    # The prior's variance of 2 makes the weights heavier-tailed than
    # with N(0, I): a little more error at 5000 samples.
    assert many.mean() < 0.03 and many.max() < 0.15
    # A dataset of (x, condition) batches of the same size gives the same
    # estimates (the same seed per batch and chunk).
    dataset = tf.data.Dataset.from_tensor_slices((x, c)).batch(24)
    np.testing.assert_allclose(
        error(5000, x=dataset), many, rtol=1e-5, atol=1e-5
    )


def test_kl_against_tfp():
    rng = np.random.default_rng(3)
    mean, log_var, prior_mean, prior_log_var = rng.normal(
        size=(4, 5, 3)
    ).astype("float32")

    def normal(m, lv):
        return tfd.MultivariateNormalDiag(m, tf.exp(0.5 * lv))

    expected = tfd.kl_divergence(
        normal(mean, log_var), normal(prior_mean, prior_log_var)
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(
            bounds.normal_kl(mean, log_var, prior_mean, prior_log_var)
        ),
        expected.numpy(), rtol=1e-5, atol=1e-5,
    )

    model = LinearGaussian(seed=4, num_classes=3)
    x, c = model.data(16)
    vae = model.vae(mean_scale=0.7, log_var_shift=0.4)
    q_mean, q_log_var = (np.asarray(t) for t in vae.encode(x, c))
    p_mean = np.eye(3)[c] @ model.p_c.T + model.p
    p_log_var = np.broadcast_to(np.log(model.v), p_mean.shape)
    expected = tfd.kl_divergence(
        normal(q_mean, q_log_var),
        normal(p_mean.astype("float32"), p_log_var.astype("float32")),
    )
    expected = expected.numpy()
    np.testing.assert_allclose(
        np.asarray(vae.kl_divergence(x, c)), expected, rtol=1e-4, atol=1e-5
    )
    # The KL the training step reports is the same.
    vae.compile(keras.optimizers.SGD(0.0))
    result = vae.evaluate(x, c, batch_size=16, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["kl"], np.mean(expected), rtol=1e-4)


def test_sample_draws_z_from_the_learned_prior():
    """sample's z is the op's noise for the seed, shifted and scaled by
    p(z|c): the decoder's mean at that z."""
    model = LinearGaussian(seed=5, num_classes=3)
    vae = model.vae()
    labels = np.array([0, 2, 1, 2])
    zeros = np.zeros((4, LATENT), "float32")
    noise, _, _ = keras_vae.ops.reparameterize_kl(zeros, zeros, seed=[7, 0])
    noise = keras.ops.convert_to_numpy(noise)
    z = np.eye(3)[labels] @ model.p_c.T + model.p + np.sqrt(model.v) * noise[0]
    expected = z @ model.a.T + np.eye(3)[labels] @ model.b_c.T + model.b
    np.testing.assert_allclose(
        np.asarray(vae.sample(4, labels, seed=7)), expected, rtol=1e-5,
        atol=1e-5,
    )
    # One label for all: the rows of label 2 above.
    np.testing.assert_allclose(
        np.asarray(vae.sample(4, 2, seed=7))[[1, 3]], expected[[1, 3]],
        rtol=1e-5, atol=1e-5,
    )


# Saving.


def _conditional_mlp(num_classes=3, n_in=6, latent=2, seed=0):
    init = lambda i: keras.initializers.GlorotUniform(seed=seed + i)  # noqa: E731
    x_in, c_in = keras.Input((n_in,)), keras.Input((num_classes,))
    h = keras.layers.Concatenate()([x_in, c_in])
    h = keras.layers.Dense(8, activation="tanh", kernel_initializer=init(0))(h)
    encoder = keras.Model(
        [x_in, c_in], GaussianEncoderHead(latent, kernel_initializer=init(1))(h)
    )
    z_in, c_dec = keras.Input((latent,)), keras.Input((num_classes,))
    h = keras.layers.Concatenate()([z_in, c_dec])
    h = keras.layers.Dense(8, activation="tanh", kernel_initializer=init(2))(h)
    decoder = keras.Model(
        [z_in, c_dec], keras.layers.Dense(n_in, kernel_initializer=init(3))(h)
    )
    c_prior = keras.Input((num_classes,))
    prior = keras.Model(
        c_prior, GaussianEncoderHead(latent, kernel_initializer=init(4))(c_prior)
    )
    return encoder, decoder, prior


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    x = (rng.uniform(size=(48, 6)) < 0.4).astype("float32")
    labels = rng.integers(0, 3, 48)
    encoder, decoder, prior = _conditional_mlp()
    vae = keras_vae.ConditionalVAE(
        encoder, decoder, prior=prior, num_classes=3, num_samples=3,
        objective="iwae", gradient_estimator="dreg", seed=8,
    )
    vae.compile(keras.optimizers.Adam(1e-2))
    vae.fit(x, labels, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "cvae.keras")
    vae.save(path)
    loaded = keras_vae.load_model(path)
    assert isinstance(loaded, keras_vae.ConditionalVAE)
    assert loaded.num_classes == 3 and loaded.prior is not None
    assert json.loads(json.dumps(loaded.get_config())) == json.loads(
        json.dumps(vae.get_config())
    )
    for a, b in zip(loaded.get_weights(), vae.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        loaded.predict([x, labels], verbose=0),
        vae.predict([x, labels], verbose=0),
    )
    # The seed generator's state was restored: the next draws are the same.
    np.testing.assert_array_equal(
        loaded.sample(4, labels[:4]), vae.sample(4, labels[:4])
    )
    for method in ("elbo", "iwae_bound", "reconstruct"):
        np.testing.assert_array_equal(
            getattr(loaded, method)(x, labels, 2, seed=1),
            getattr(vae, method)(x, labels, 2, seed=1),
        )
    loaded.fit(x, labels, batch_size=16, epochs=1, verbose=0)


# Errors at the edge.


def test_a_condition_that_does_not_fit_is_a_value_error_naming_both():
    x = np.zeros((4, 6), "float32")
    encoder, decoder, prior = _conditional_mlp()
    labelled = keras_vae.ConditionalVAE(
        encoder, decoder, prior=prior, num_classes=3
    )
    with pytest.raises(ValueError, match=r"batch size 5 but x has 4") as error:
        labelled.elbo(x, np.zeros(5, "int32"))
    assert "(5,)" in str(error.value) and "(4, 6)" in str(error.value)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)") as error:
        labelled.reconstruct(x, np.array([0, 1, 3, 2]))
    assert "num_classes=3" in str(error.value) and "3" in str(error.value)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        labelled.sample(2, np.array([-1, 0]))
    with pytest.raises(ValueError, match=r"integer class labels of shape"):
        labelled.encode(x, np.eye(3)[[0, 1, 2, 0]])
    with pytest.raises(ValueError, match=r"n=3 samples") as error:
        labelled.sample(3, np.array([0, 1]))
    assert "(2,)" in str(error.value)
    # fit checks before training: the weights stay as they were.
    labelled.compile(keras.optimizers.Adam(1e-2))
    before = labelled.get_weights()
    with pytest.raises(ValueError, match=r"batch size 3 but x has 4"):
        labelled.fit(x, np.zeros(3, "int32"), verbose=0)
    with pytest.raises(ValueError, match=r"needs a condition"):
        labelled.fit(x, verbose=0)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        labelled.fit(x, np.zeros(4, "int32"),
                     validation_data=(x, np.full(4, 7)), verbose=0)
    for a, b in zip(labelled.get_weights(), before):
        np.testing.assert_array_equal(a, b)

    # A continuous condition must have the encoder's condition shape.
    model = LinearGaussian()
    vae = model.vae()
    x, c = model.data(4)
    with pytest.raises(ValueError, match=r"examples of shape \(3,\)") as error:
        vae.elbo(x, np.zeros((4, 3), "float32"))
    assert "takes (2,)" in str(error.value) and "(4, 6)" in str(error.value)
    with pytest.raises(ValueError, match=r"NaN or Inf"):
        vae.iwae_bound(x, np.full((4, 2), np.nan, "float32"))


def test_bad_constructor_arguments():
    encoder, decoder, prior = _conditional_mlp()
    with pytest.raises(ValueError, match=r"one-hot labels of shape \(4,\)"):
        keras_vae.ConditionalVAE(encoder, decoder, num_classes=4)
    with pytest.raises(ValueError, match=r"free_bits"):
        keras_vae.ConditionalVAE(
            encoder, decoder, prior=prior, num_classes=3, free_bits=0.5
        )
    plain = keras.Model(encoder.inputs[0], [encoder.inputs[0]] * 2)
    with pytest.raises(ValueError, match=r"\[x, condition\], two inputs"):
        keras_vae.ConditionalVAE(plain, decoder, num_classes=3)


# Class-conditional training on digits.


def _class_accuracy(vae, classes, image_mean, seed):
    """Of the classes, those whose mean sample is nearest their own class's
    training mean image. Every class gets the same z (one seed per
    class), so a model that ignores the condition draws the same images
    for every class and gets at most one right."""
    right = 0
    for c in range(classes):
        samples = np.asarray(vae.sample(50, c, seed=seed))
        distances = np.linalg.norm(image_mean - samples.mean(0), axis=1)
        right += int(np.argmin(distances) == c)
    return right


def test_digits_samples_depend_on_the_class():
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target
    image_mean = np.stack([x[y == c].mean(0) for c in range(10)])
    encoder, decoder = presets.build_conditional(
        "mlp", (64,), 10, latent_dim=4, train_mean=x.mean(0)
    )
    vae = keras_vae.ConditionalVAE(encoder, decoder, num_classes=10, seed=0)
    assert _class_accuracy(vae, 10, image_mean, seed=1) <= 1
    vae.compile(keras.optimizers.Adam(3e-3))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        len(x), seed=0).batch(64)
    history = vae.fit(dataset, epochs=8, verbose=0,
                      validation_data=(x[:200], y[:200]))
    assert history.history["loss"][-1] < history.history["loss"][0] - 1.0
    assert _class_accuracy(vae, 10, image_mean, seed=1) >= 8


# The command line.


TINY = ["--dataset", "digits", "--batch-size", "256", "--verbose", "0"]


def test_cli_trains_samples_and_evaluates_a_conditional_run(tmp_path, capsys):
    import matplotlib.image

    from keras_vae.evaluation import evaluate_arrays

    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--conditional", "--epochs", "1",
                     "--output", str(run)]) == 0
    samples = matplotlib.image.imread(run / "samples.png")
    # Ten rows of eight: taller than wide.
    assert samples.shape[0] > samples.shape[1]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["conditional"] is True
    assert metrics["config"]["class_names"] == [str(d) for d in range(10)]

    model = keras_vae.load_model(run / "model.keras")
    assert isinstance(model, keras_vae.ConditionalVAE)
    assert cli.main(["sample", str(run), "-n", "20", "--seed", "3",
                     "-o", str(tmp_path / "s.png"),
                     "--npy", str(tmp_path / "s.npy")]) == 0
    images = np.load(tmp_path / "s.npy")
    labels = np.repeat(np.arange(10), 2)
    np.testing.assert_allclose(
        images, model.sample(20, labels, seed=3), rtol=1e-5, atol=1e-6
    )

    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", str(run), "--limit", "30", "--ll-samples",
                     "20", "--iwae-k", "1", "5", "--verbose", "0",
                     "-o", str(out)]) == 0
    results = json.loads(out.read_text())
    # The KL is deterministic: evaluate gave each image its own label.
    data = cli._load_data(cli._data_config(
        cli.build_parser().parse_args(["evaluate", str(run)]),
        fallback=metrics["config"]), 100, 0, True)
    x, y = data.arrays["test"][:30], data.arrays["test_labels"][:30]
    np.testing.assert_allclose(
        results["kl"]["mean"], np.mean(model.kl_divergence(x, y)), rtol=1e-4
    )
    wrong = (y + 1) % 10
    assert not np.isclose(
        results["kl"]["mean"], np.mean(model.kl_divergence(x, wrong)),
        rtol=1e-3,
    )
    direct = evaluate_arrays(model, x, iwae_ks=(1,), ll_samples=20,
                             verbose=0, condition=y)
    assert direct["num_examples"] == results["num_examples"] == 30
    assert np.isfinite(results["log_likelihood"]["mean"])

    capsys.readouterr()
    assert cli.main(["traverse", str(run)]) == 2
    assert "conditional" in capsys.readouterr().err
