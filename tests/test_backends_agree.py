"""The three Keras backends agree: the same inputs, weights and seeds give
the same noise, losses, gradients (DReG's included) and training steps on
TensorFlow, JAX and PyTorch, and a model saved on one loads on another and
draws the same samples.

TensorFlow is the oracle: its training step is the one the rest of the suite
checks against TensorFlow Probability and closed forms. Each backend runs in
a process of its own (tests/helpers/backend_worker.py).
"""

import numpy as np
import pytest

from helpers.backend_worker import CONFIGS, config_name
from helpers.processes import python_env, run_python

pytestmark = pytest.mark.backend_independent

BACKENDS = ("tensorflow", "jax", "torch")
# float32 sums and matrix products in another order on each framework.
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Each backend's npz; each loads the model saved by the one before it
    (TensorFlow's saved by PyTorch, in a last run)."""
    root = tmp_path_factory.mktemp("backends")
    out = {b: str(root / f"{b}.npz") for b in BACKENDS}
    previous = {"jax": "tensorflow", "torch": "jax"}
    for backend in BACKENDS:
        args = ["-m", "helpers.backend_worker", out[backend]]
        if backend in previous:
            args.append(out[previous[backend]].replace(".npz", ".keras"))
        run_python(args, env=python_env(KERAS_BACKEND=backend), timeout=600)
    # TensorFlow loads PyTorch's model.
    run_python(
        ["-m", "helpers.backend_worker", str(root / "tf-loads.npz"),
         out["torch"].replace(".npz", ".keras")],
        env=python_env(KERAS_BACKEND="tensorflow"), timeout=600,
    )
    loaded = {b: dict(np.load(path)) for b, path in out.items()}
    loaded["tf-loads"] = dict(np.load(root / "tf-loads.npz"))
    return loaded


def assert_same(results, prefix, backend):
    oracle = results["tensorflow"]
    keys = sorted(k for k in oracle if k.startswith(prefix))
    assert keys, prefix
    assert keys == sorted(k for k in results[backend] if k.startswith(prefix))
    for key in keys:
        np.testing.assert_allclose(
            results[backend][key], oracle[key], rtol=RTOL, atol=ATOL,
            err_msg=f"{key} on {backend}",
        )


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_same_seed_gives_the_same_noise_and_terms(results, backend):
    assert_same(results, "op/", backend)
    assert_same(results, "sampling", backend)


@pytest.mark.parametrize("config", [config_name(c) for c in CONFIGS])
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_losses_and_gradients_equal_tensorflows(results, backend, config):
    assert_same(results, f"{config}/losses/", backend)
    assert_same(results, f"{config}/report/", backend)
    assert_same(results, f"{config}/gradient/", backend)
    # The gradients are not all zero, so the comparison says something.
    gradients = [v for k, v in results[backend].items()
                 if k.startswith(f"{config}/gradient/")]
    assert max(np.abs(g).max() for g in gradients) > 1e-3


def test_dreg_gives_the_encoder_another_gradient(results):
    """DReG's decoder gradient is IWAE's (from the same samples, STL's
    log-ratio) and its encoder gradient is not: the two losses reach their
    own sides on every backend."""
    dreg, iwae = "iwae-dreg-analytic/gradient/", "iwae-stl-analytic/gradient/"
    for backend in BACKENDS:
        r = results[backend]
        keys = [k[len(dreg):] for k in r if k.startswith(dreg)]
        decoder = [k for k in keys if k.endswith("decoder")]
        encoder = [k for k in keys if k.endswith("encoder")]
        assert decoder and encoder
        for k in decoder:
            np.testing.assert_allclose(
                r[dreg + k], r[iwae + k], rtol=RTOL, atol=ATOL
            )
        assert any(
            not np.allclose(r[dreg + k], r[iwae + k], rtol=1e-2)
            for k in encoder
        ), backend


@pytest.mark.parametrize("config", [config_name(c) for c in CONFIGS])
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_training_steps_equal_tensorflows(results, backend, config):
    assert_same(results, f"{config}/fit_loss", backend)
    assert_same(results, f"{config}/trained/", backend)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_two_layer_model_agrees_with_tensorflows(results, backend):
    """Its bound, DReG gradients, ancestral samples and training steps: the
    upper layer's seed, offset from the step's, is the same in each
    backend's seed dtype."""
    assert_same(results, "hierarchical/", backend)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_conditional_model_agrees_with_tensorflows(results, backend):
    """Its DReG losses and gradients (the learned prior's included),
    samples given labels and a training epoch."""
    assert_same(results, "conditional/", backend)


@pytest.mark.parametrize(
    "saved, loaded",
    [("tensorflow", "jax"), ("jax", "torch"), ("torch", "tf-loads")],
)
def test_a_model_saved_on_one_backend_samples_the_same_on_another(
    results, saved, loaded
):
    for what in ("sample", "reconstruct"):
        np.testing.assert_allclose(
            results[loaded][f"loaded/{what}"], results[saved][f"saved/{what}"],
            rtol=RTOL, atol=ATOL,
        )


def test_an_unsupported_backend_is_refused_at_import():
    proc = run_python(
        ["-c", "import keras, keras_vae"],
        env=python_env(KERAS_BACKEND="numpy"), check=False,
    )
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr
    assert "('tensorflow', 'jax', 'torch')" in proc.stderr
    assert "'numpy'" in proc.stderr


def test_jax_data_parallel_on_two_devices_matches_one_device():
    """keras.distribution.DataParallel over 2 host devices trains DReG to
    the weights one device reaches (the batch is split, the noise is the
    global batch's)."""
    proc = run_python(
        ["-m", "helpers.data_parallel_worker"],
        env=python_env(
            KERAS_BACKEND="jax",
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
        ),
        timeout=600,
    )
    values = dict(
        line.split() for line in proc.stdout.splitlines()
        if line.startswith("max_")
    )
    assert float(values["max_change"]) > 1e-3
    assert float(values["max_difference"]) < 1e-5
