"""VAE.fit under tf.distribute matches single-device training.

What is compared: the per-batch training loss, the validation loss
(`test_step`) and the final weights of a
2-replica run against one device, on the same data, initial weights and
global batch (8). The encoder's log-variance is fixed at -30, so the noise
moves z by ~1e-7 of its scale and training is deterministic although each
replica draws its own noise for its half of the batch.

Why it catches a loss-scaling bug: the optimizer is plain SGD, whose step
is proportional to the gradient (Adam's is not), so a per-replica loss that
is not divided by the replica count (gradients summed over 2 replicas: a 2x
gradient) or that is averaged over the global batch twice (0.5x) changes
the weights by far more than the tolerance; `test_tolerance_detects_scaling`
checks that margin on the single-device run. The reported loss is compared
too, which catches a metric aggregated as a sum over replicas.

Each strategy runs in subprocesses (helpers/distributed_worker.py): logical
devices must be configured before TensorFlow starts, and a
MultiWorkerMirroredStrategy needs one process per worker.
"""

import json

import keras
import numpy as np
import pytest

from helpers import tiny_vae
from helpers.processes import (
    SCRIPTS_DIR,
    free_ports,
    python_env,
    run_python,
    start_python,
    wait_all,
)

pytestmark = pytest.mark.tensorflow_only("tf.distribute")

WORKER = str(SCRIPTS_DIR / "distributed_worker.py")
GLOBAL_BATCH = 8
EPOCHS = 2
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


def _write_initial_weights(path):
    model = tiny_vae.build(fixed_log_var=-30.0)
    model.build((None, tiny_vae.INPUT_DIM))
    weights = model.get_weights()
    np.savez(path, **{f"w{i}": w for i, w in enumerate(weights)})
    return weights


def _single_device_run(initial_weights, learning_rate=0.1):
    model = tiny_vae.build(fixed_log_var=-30.0)
    model.build((None, tiny_vae.INPUT_DIM))
    model.set_weights(initial_weights)
    model.compile(keras.optimizers.SGD(learning_rate))
    losses = tiny_vae.BatchLosses()
    history = model.fit(
        tiny_vae.data(),
        batch_size=GLOBAL_BATCH,
        epochs=EPOCHS,
        shuffle=False,
        validation_data=(tiny_vae.data(),),
        validation_batch_size=GLOBAL_BATCH,
        verbose=0,
        callbacks=[losses],
    )
    val_losses = np.array(history.history["val_loss"])
    return np.array(losses.losses), val_losses, model.get_weights()


def _load_run(path):
    with np.load(path) as run:
        weights = [run[f"w{i}"] for i in range(len(run.files) - 3)]
        return run["losses"], run["val_losses"], weights, int(run["replicas"])


def _assert_matches(distributed, single):
    losses, val_losses, weights, replicas = distributed
    single_losses, single_val_losses, single_weights = single
    assert replicas == 2
    assert len(losses) == len(single_losses) == EPOCHS * (
        tiny_vae.NUM_EXAMPLES // GLOBAL_BATCH
    )
    np.testing.assert_allclose(losses, single_losses, rtol=LOSS_RTOL)
    np.testing.assert_allclose(val_losses, single_val_losses, rtol=LOSS_RTOL)
    assert len(weights) == len(single_weights)
    for w, s in zip(weights, single_weights):
        np.testing.assert_allclose(w, s, rtol=0, atol=WEIGHT_ATOL)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The initial weights file and the single-device reference run."""
    path = tmp_path_factory.mktemp("distributed") / "init.npz"
    initial = _write_initial_weights(path)
    return path, _single_device_run(initial)


def test_tolerance_detects_scaling(runs):
    """A 2x or 0.5x gradient moves the weights well past WEIGHT_ATOL."""
    path, (_, _, single_weights) = runs
    with np.load(path) as init:
        initial = [init[f"w{i}"] for i in range(len(init.files))]
    for factor in (2.0, 0.5):
        _, _, scaled = _single_device_run(initial, learning_rate=0.1 * factor)
        worst = max(np.max(np.abs(a - b)) for a, b in zip(scaled, single_weights))
        assert worst > 100 * WEIGHT_ATOL, factor


@pytest.mark.slow
def test_mirrored_strategy_matches_single_device(runs, tmp_path):
    init_path, single = runs
    out = tmp_path / "mirrored.npz"
    run_python([WORKER, "mirrored", str(init_path), str(out)], cwd=tmp_path)
    _assert_matches(_load_run(out), single)


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_matches_single_device(runs, tmp_path):
    init_path, single = runs
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers, outputs = [], []
    for index in range(2):
        out = tmp_path / f"worker{index}.npz"
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        workers.append(
            start_python(
                [WORKER, "multiworker", str(init_path), str(out)],
                cwd=tmp_path,
                env=python_env(TF_CONFIG=json.dumps(tf_config)),
            )
        )
        outputs.append(out)
    for code, log in wait_all(workers, timeout=240):
        assert code == 0, log[-6000:]
    for out in outputs:
        _assert_matches(_load_run(out), single)
