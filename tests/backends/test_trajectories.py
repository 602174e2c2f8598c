"""Training trajectories pinned to the values recorded on each backend
before the training code moved into `keras_vae.training`.

Each case trains the tiny VAE for two epochs of four Adam steps from fixed
seeds, then evaluates it; the per-step logs (loss, bound, reconstruction,
KL), the final weights and the evaluation's metrics must equal the
recording. `PYTHONPATH=tests python tests/backends/test_trajectories.py`
(with KERAS_BACKEND set) records the backend's values again, for a
deliberate change of the numerics only.
"""

import os
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from helpers import tiny_vae

BACKEND = keras.backend.backend()
RECORDING = Path(__file__).with_name("trajectories") / f"{BACKEND}.npz"
CASES = [
    (k, objective, estimator)
    for k in (1, 5)
    for objective, estimator in (
        ("elbo", "standard"), ("iwae", "standard"), ("iwae", "stl"),
        ("iwae", "dreg"),
    )
]
# Tolerances of the other backend tests (tests/backends/test_training.py).
RTOL, ATOL = 1e-5, 1e-6


class _StepLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        self.rows.append([float(logs[k]) for k in sorted(logs)])


def _name(k, objective, estimator):
    return f"k{k}_{objective}_{estimator}"


def trajectory(k, objective, estimator):
    """`{name/steps, name/weights, name/evaluate}` for one case."""
    x = tiny_vae.data()
    model = tiny_vae.build(
        num_samples=k, objective=objective, gradient_estimator=estimator
    )
    # TensorFlow's default changed to XLA where the library loaded; the
    # recording is of the graph step.
    jit = False if BACKEND == "tensorflow" else "auto"
    model.compile(keras.optimizers.Adam(1e-2), jit_compile=jit)
    logs = _StepLogs()
    model.fit(x, batch_size=8, epochs=2, shuffle=False, verbose=0,
              callbacks=[logs])
    result = model.evaluate(x, batch_size=16, verbose=0, return_dict=True)
    name = _name(k, objective, estimator)
    return {
        f"{name}/steps": np.array(logs.rows),
        f"{name}/weights": np.concatenate(
            [ops.convert_to_numpy(v).ravel() for v in model.trainable_variables]
        ),
        f"{name}/evaluate": np.array([result[k] for k in sorted(result)]),
    }


@pytest.mark.parametrize("k, objective, estimator", CASES)
def test_training_follows_the_recorded_trajectory(k, objective, estimator):
    recorded = np.load(RECORDING)
    for key, value in trajectory(k, objective, estimator).items():
        np.testing.assert_allclose(
            value, recorded[key], rtol=RTOL, atol=ATOL, err_msg=key
        )


if __name__ == "__main__":
    os.makedirs(RECORDING.parent, exist_ok=True)
    values = {}
    for case in CASES:
        values.update(trajectory(*case))
        keras.backend.clear_session(free_memory=False)
    np.savez_compressed(RECORDING, **values)
    print(f"recorded {len(CASES)} cases in {RECORDING}")
