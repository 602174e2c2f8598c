"""A linear-Gaussian model with two stochastic layers, and its closed forms.

Per dimension d (all layers and x have the same dimension D, and every map
is diagonal, so the dimensions are independent):

    z2 ~ N(0, 1),  z1 | z2 ~ N(a z2 + b, s1^2),  x | z1 ~ N(c z1 + d, sx^2)
    q(z1 | x) = N(e x + f, t1^2),  q(z2 | z1) = N(g z1 + h, t2^2)

`exact_log_px` is log p(x); `exact_posterior` gives the (e, f, t1, g, h, t2)
with which q is the true posterior (then every bound equals log p(x) and
every log-weight is log p(x)); `analytic_elbo` is the ELBO of any q in
closed form.
"""

import keras
import numpy as np

import keras_vae

LOG_2PI = np.log(2 * np.pi)


def generative(rng, dim):
    return dict(
        a=rng.uniform(0.5, 1.5, dim), b=rng.uniform(-0.5, 0.5, dim),
        s1=rng.uniform(0.5, 1.0, dim), c=rng.uniform(0.5, 1.5, dim),
        d=rng.uniform(-0.5, 0.5, dim), sx=np.full(dim, 0.7),
    )


def exact_posterior(p):
    a, b, s1, c, d, sx = (p[k] for k in ("a", "b", "s1", "c", "d", "sx"))
    prior_var = a**2 + s1**2
    precision = 1 / prior_var + c**2 / sx**2
    e = c / sx**2 / precision
    f = (b / prior_var - c * d / sx**2) / precision
    upper_precision = 1 + a**2 / s1**2
    g = a / s1**2 / upper_precision
    return dict(e=e, f=f, t1=np.sqrt(1 / precision), g=g, h=-b * g,
                t2=np.sqrt(1 / upper_precision))


def exact_log_px(p, x):
    mean = p["c"] * p["b"] + p["d"]
    var = p["c"] ** 2 * (p["a"] ** 2 + p["s1"] ** 2) + p["sx"] ** 2
    return np.sum(-0.5 * (LOG_2PI + np.log(var) + (x - mean) ** 2 / var), -1)


def analytic_elbo(p, q, x):
    a, b, s1, c, d, sx = (p[k] for k in ("a", "b", "s1", "c", "d", "sx"))
    e, f, t1, g, h, t2 = (q[k] for k in ("e", "f", "t1", "g", "h", "t2"))
    m1, v1 = e * x + f, t1**2
    log_px_z1 = -0.5 * (LOG_2PI + np.log(sx**2)) - (
        (x - c * m1 - d) ** 2 + c**2 * v1) / (2 * sx**2)
    # z1 - a z2 - b with z2 = g z1 + h + t2 eps.
    residual = ((1 - a * g) * m1 - a * h - b) ** 2 + (1 - a * g) ** 2 * v1 \
        + a**2 * t2**2
    log_pz1_z2 = -0.5 * (LOG_2PI + np.log(s1**2)) - residual / (2 * s1**2)
    log_pz2 = -0.5 * LOG_2PI - 0.5 * ((g * m1 + h) ** 2 + g**2 * v1 + t2**2)
    entropy = 0.5 * (LOG_2PI + np.log(v1) + 1) + 0.5 * (
        LOG_2PI + np.log(t2**2) + 1)
    return np.sum(log_px_z1 + log_pz1_z2 + log_pz2 + entropy, -1)


def perturbed(q, rng, size=0.3):
    return {k: v * (1 + rng.uniform(-size, size, v.shape)) for k, v in
            q.items()}


def _linear_gaussian_network(dim, name, input_name):
    """x -> (scale * x + shift, log_var): two Dense maps, set by `assign`."""
    inputs = keras.Input((dim,), name=input_name)
    mean = keras.layers.Dense(dim, name="mean")(inputs)
    log_var = keras.layers.Dense(dim, name="log_var")(inputs)
    return keras.Model(inputs, [mean, log_var], name=name)


def _assign(network, scale, shift, std):
    dim = len(scale)
    network.get_layer("mean").kernel.assign(np.diag(scale).astype("float32"))
    network.get_layer("mean").bias.assign(shift.astype("float32"))
    network.get_layer("log_var").kernel.assign(np.zeros((dim, dim),
                                                        "float32"))
    network.get_layer("log_var").bias.assign(
        np.log(std**2).astype("float32"))


def model(p, q, **kwargs):
    """The `HierarchicalVAE` of generative parameters p and posterior q."""
    dim = len(p["a"])
    x_to_z1 = _linear_gaussian_network(dim, "x_to_z1", "x")
    z1_to_z2 = _linear_gaussian_network(dim, "z1_to_z2", "z1")
    z2_to_z1 = _linear_gaussian_network(dim, "z2_to_z1", "z2")
    _assign(x_to_z1, q["e"], q["f"], q["t1"])
    _assign(z1_to_z2, q["g"], q["h"], q["t2"])
    _assign(z2_to_z1, p["a"], p["b"], p["s1"])
    z1 = keras.Input((dim,), name="z1")
    x_mean = keras.layers.Dense(dim, name="x_mean")(z1)
    decoder = keras.Model(z1, x_mean, name="z1_to_x")
    decoder.get_layer("x_mean").kernel.assign(
        np.diag(p["c"]).astype("float32"))
    decoder.get_layer("x_mean").bias.assign(p["d"].astype("float32"))
    return keras_vae.HierarchicalVAE(
        [x_to_z1, z1_to_z2], decoder, [z2_to_z1],
        likelihood=keras_vae.likelihoods.Gaussian(float(p["sx"][0])),
        **kwargs,
    )


def data(p, rng, n):
    """n draws of x from the generative model."""
    dim = len(p["a"])
    z2 = rng.standard_normal((n, dim))
    z1 = p["a"] * z2 + p["b"] + p["s1"] * rng.standard_normal((n, dim))
    x = p["c"] * z1 + p["d"] + p["sx"] * rng.standard_normal((n, dim))
    return x.astype("float32")
