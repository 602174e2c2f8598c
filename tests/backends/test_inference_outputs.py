"""Inference outputs convert to NumPy on the active backend, as `predict`'s
do; the command line, `ImageGrids` and the plotting functions run on it.

`make test` runs this directory under KERAS_BACKEND=tensorflow, jax and
torch. On PyTorch a tensor that records its gradient is refused by NumPy;
the oracle is NumPy itself (`np.asarray`, `float(np.mean(...))`), and for
the values, the same method's output taken through
`keras.ops.convert_to_numpy`.
"""

import json

import keras
import numpy as np
import pytest
from keras import ops

import keras_vae
from helpers import tiny_vae
from helpers.processes import python_env, run_python

BACKEND = keras.backend.backend()


@pytest.fixture(scope="module")
def vae():
    model = tiny_vae.build(num_samples=2)
    model.compile(keras.optimizers.Adam(1e-3))
    model.fit(tiny_vae.data(), epochs=1, batch_size=16, verbose=0)
    return model


@pytest.fixture(scope="module")
def conditional():
    return tiny_vae.build_conditional()


def outputs(model, x):
    """Each inference method's output(s) on x."""
    return {
        "sample": model.sample(4, seed=1),
        "sample_draw": model.sample(4, seed=1, draw=True),
        "reconstruct": model.reconstruct(x, num_samples=2, seed=1),
        "log_likelihood": model.log_likelihood(x, num_samples=6, seed=1,
                                               verbose=0),
        "elbo": model.elbo(x, num_samples=2, seed=1),
        "iwae_bound": model.iwae_bound(x, num_samples=3, seed=1),
        "encode_mean": model.encode(x)[0],
        "encode_log_var": model.encode(x)[1],
        "kl_divergence": model.kl_divergence(x, seed=1),
        "posterior_mean": model.posterior_means(x)[0],
    }


def test_inference_outputs_convert_to_numpy(vae):
    x = tiny_vae.data()[:5]
    for name, value in outputs(vae, x).items():
        array = np.asarray(value)
        np.testing.assert_array_equal(array, ops.convert_to_numpy(value),
                                      err_msg=name)
        assert np.isfinite(float(np.mean(value))), name
    # The README's line.
    assert float(np.mean(vae.log_likelihood(x, num_samples=6, verbose=0))) < 0


def test_conditional_inference_outputs_convert_to_numpy(conditional):
    x, labels = tiny_vae.data()[:4], tiny_vae.labels()[:4]
    for value in (
        conditional.sample(4, condition=labels, seed=1),
        conditional.reconstruct(x, labels, seed=1),
        conditional.elbo(x, labels, seed=1),
        conditional.iwae_bound(x, labels, num_samples=2, seed=1),
        conditional.log_likelihood(x, labels, num_samples=4, verbose=0),
        conditional.encode(x, labels)[0],
        conditional.kl_divergence(x, labels, seed=1),
    ):
        assert np.isfinite(float(np.mean(np.asarray(value))))


def test_model_call_and_training_still_record_gradients(vae):
    """The model's own computations stay differentiable: calling the model
    and the bound's terms inside a training step (checked by training: the
    weights move)."""
    x = tiny_vae.data()[:8]
    before = [ops.convert_to_numpy(w) for w in vae.trainable_weights]
    vae.fit(x, epochs=1, batch_size=8, verbose=0)
    after = [ops.convert_to_numpy(w) for w in vae.trainable_weights]
    assert all(np.any(a != b) for a, b in zip(after, before))
    if BACKEND == "torch":
        assert vae(ops.convert_to_tensor(x)).requires_grad


def test_image_grids_and_plotting(vae, tmp_path):
    from keras_vae import callbacks, plotting

    x = tiny_vae.data()[:4]
    # Its PNGs are written by the command line's test (--plot-every): these
    # examples are not square images.
    grids = callbacks.ImageGrids(x, directory=str(tmp_path), num_samples=4)
    grids.set_model(vae)
    images = grids.grids()
    assert images["samples"].shape == (4, tiny_vae.INPUT_DIM)
    np.testing.assert_array_equal(images["reconstructions"][:4], x)
    assert images["reconstructions"].shape == (8, tiny_vae.INPUT_DIM)
    images, dims = plotting.latent_traversal(vae, x, num_dims=2, steps=3)
    assert images.shape == (2, 3, tiny_vae.INPUT_DIM) and len(dims) == 2
    line = plotting.latent_interpolation(vae, x[0], x[1], steps=4)
    assert line.shape == (4, tiny_vae.INPUT_DIM)
    # The interpolation's ends decode the two posterior means.
    means = ops.convert_to_numpy(vae.encode(x[:2])[0])
    ends = ops.convert_to_numpy(vae.likelihood.mean(vae.decode(means)))
    np.testing.assert_allclose(line[[0, -1]], ends, rtol=1e-5, atol=1e-6)


def cli(*args, cwd):
    return run_python(["-m", "keras_vae", *args], env=python_env(),
                      cwd=cwd)


def test_command_line_on_digits(tmp_path):
    """train (with grids during training), evaluate, sample, traverse and
    interpolate on the active backend, in one run directory."""
    run = tmp_path / "run"
    steps = [
        ["train", "--dataset", "digits", "--epochs", "1", "--limit", "200",
         "--latent-dim", "2", "--plot-every", "1", "--output", str(run)],
        ["evaluate", str(run), "--limit", "20", "--ll-samples", "10",
         "--iwae-k", "1", "2", "--verbose", "0"],
        ["sample", str(run), "--num", "4", "--seed", "1", "--output",
         str(tmp_path / "samples.png"), "--npy", str(tmp_path / "s.npy")],
        ["traverse", str(run), "--dims", "2", "--steps", "3", "--output",
         str(tmp_path / "traverse.png")],
        ["interpolate", str(run), "--pair", "0", "1", "--steps", "3",
         "--output", str(tmp_path / "interpolate.png")],
    ]
    for args in steps:
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 0, (args[0], result.stderr[-3000:])
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for name in ("model.keras", "samples.png", "reconstructions.png",
                 "latent.png", "images/samples-epoch1.png"):
        assert (run / name).is_file(), name
    for name in ("samples.png", "traverse.png", "interpolate.png"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["evaluation"]["num_examples"] == 20
    assert np.isfinite(metrics["evaluation"]["log_likelihood"]["mean"])
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (4, 8, 8, 1)
    assert 0.0 <= samples.min() and samples.max() <= 1.0
