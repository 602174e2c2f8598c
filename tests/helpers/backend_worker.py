"""One backend's side of the cross-backend tests (tests/test_backends_agree.py).

Run as `KERAS_BACKEND=... python -m helpers.backend_worker OUT [LOAD]`: it
writes to the npz OUT what the same inputs, weights and seeds give on this
backend (the op's outputs, each objective's losses and gradients, the
weights after two training steps), saves a model next to OUT, and with LOAD
draws samples from the model saved there by another backend.
"""

import sys

import keras
import numpy as np

import keras_vae
from helpers import linear_gaussian
from helpers import tiny_vae

# objective, gradient estimator, KL estimator.
CONFIGS = (
    ("elbo", "standard", "analytic"),
    ("elbo", "standard", "mc"),
    ("elbo", "stl", "analytic"),
    ("iwae", "standard", "analytic"),
    ("iwae", "stl", "analytic"),
    ("iwae", "dreg", "analytic"),
)
SEED = (3, 4)


def config_name(config):
    return "-".join(config)


def set_shared_weights(model):
    """Weights from NumPy, so that every backend starts from the same."""
    rng = np.random.default_rng(0)
    model.set_weights(
        [0.5 * rng.standard_normal(w.shape).astype("float32")
         for w in model.get_weights()]
    )


def variable_keys(model, variables):
    """`NN-encoder` or `NN-decoder` per variable: its place and side, the
    same in every process (layer names count up per process)."""
    encoder = {id(v) for v in model.encoder.trainable_variables}
    return [
        f"{i:02d}-{'encoder' if id(v) in encoder else 'decoder'}"
        for i, v in enumerate(variables)
    ]


def numpy(t):
    return keras.ops.convert_to_numpy(t)


def hierarchical(results):
    """A two-layer model's bound, DReG gradients, ancestral samples and two
    training steps (whose seeds are the generator's, of this backend's
    dtype, offset per layer)."""
    rng = np.random.default_rng(5)
    p = linear_gaussian.generative(rng, 3)
    q = linear_gaussian.perturbed(linear_gaussian.exact_posterior(p), rng)
    x = linear_gaussian.data(p, rng, 32)
    model = linear_gaussian.model(p, q, objective="iwae", num_samples=3,
                                  gradient_estimator="dreg", seed=2)
    gradients, _, losses, report = model.compute_gradients(x, seed=SEED)
    for key, value in {**losses, **report}.items():
        results[f"hierarchical/terms/{key}"] = numpy(value)
    for i, g in enumerate(gradients):
        results[f"hierarchical/gradient/{i:02d}"] = numpy(g)
    results["hierarchical/sample"] = numpy(model.sample(4, seed=6))
    model.compile(keras.optimizers.SGD(0.05))
    history = model.fit(x, batch_size=16, shuffle=False, verbose=0)
    results["hierarchical/fit_loss"] = np.asarray(history.history["loss"])
    for i, v in enumerate(model.trainable_variables):
        results[f"hierarchical/trained/{i:02d}"] = numpy(v)


def conditional(results):
    """A conditional model with a learned prior: its DReG losses and
    gradients, samples given labels and a training epoch."""
    model = tiny_vae.build_conditional(num_samples=3, objective="iwae",
                                       gradient_estimator="dreg")
    set_shared_weights(model)
    x, labels = tiny_vae.data(), tiny_vae.labels()
    gradients, _, losses, report = model.compute_gradients(
        (x, labels), seed=SEED)
    for key, value in {**losses, **report}.items():
        results[f"conditional/terms/{key}"] = numpy(value)
    for i, g in enumerate(gradients):
        results[f"conditional/gradient/{i:02d}"] = numpy(g)
    results["conditional/sample"] = numpy(
        model.sample(3, condition=[0, 1, 2], seed=6))
    model.compile(keras.optimizers.SGD(0.05))
    history = model.fit(x, labels, batch_size=16, shuffle=False, verbose=0)
    results["conditional/fit_loss"] = np.asarray(history.history["loss"])
    for i, v in enumerate(model.trainable_variables):
        results[f"conditional/trained/{i:02d}"] = numpy(v)


def main(out, load=None):
    results = {}
    rng = np.random.default_rng(1)
    mean = rng.standard_normal((4, 3)).astype("float32")
    log_var = rng.standard_normal((4, 3)).astype("float32")
    for name, t in zip(
        ("z", "kl", "log_ratio"),
        keras_vae.ops.reparameterize_kl(mean, log_var, 5, seed=SEED),
    ):
        results[f"op/{name}"] = numpy(t)
    sampling = keras_vae.layers.Sampling(num_samples=2, seed=7)
    results["sampling"] = numpy(sampling([mean, log_var]))

    x = tiny_vae.data()
    for config in CONFIGS:
        objective, estimator, kl = config
        name = config_name(config)
        model = tiny_vae.build(
            num_samples=3, objective=objective, gradient_estimator=estimator,
            kl=kl, beta=0.7,
        )
        set_shared_weights(model)
        gradients, variables, losses, report = model.compute_gradients(
            x, seed=SEED
        )
        for key, value in losses.items():
            results[f"{name}/losses/{key}"] = numpy(value)
        for key, value in report.items():
            results[f"{name}/report/{key}"] = numpy(value)
        for key, g in zip(variable_keys(model, variables), gradients):
            results[f"{name}/gradient/{key}"] = numpy(g)
        model.compile(keras.optimizers.SGD(0.05))
        history = model.fit(x, batch_size=16, shuffle=False, verbose=0)
        results[f"{name}/fit_loss"] = np.asarray(history.history["loss"])
        variables = model.trainable_variables
        for key, v in zip(variable_keys(model, variables), variables):
            results[f"{name}/trained/{key}"] = numpy(v)

    hierarchical(results)
    conditional(results)
    model.save(out.removesuffix(".npz") + ".keras")
    results["saved/sample"] = numpy(model.sample(4))
    results["saved/reconstruct"] = numpy(model.reconstruct(x[:2], 2, seed=5))
    if load is not None:
        loaded = keras.models.load_model(load)
        results["loaded/sample"] = numpy(loaded.sample(4))
        results["loaded/reconstruct"] = numpy(loaded.reconstruct(x[:2], 2, seed=5))
    np.savez(out, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
