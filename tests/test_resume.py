"""Resuming after a crash with keras.callbacks.BackupAndRestore.

A fit is SIGKILLed in the middle of an epoch and restarted with the same
backup directory. It resumes from the last backup (the end of the last
completed epoch: Keras restores the epoch, not the batch), with the model's
weights, the optimizer's state and the seed generators' state; with the backend's deterministic ops its final
weights equal those of a run that was never interrupted. The negative control resets the
seed generators after the restore and must end elsewhere, which shows the
seed state is what the backup carried.
"""

import shutil

import numpy as np
import pytest

from helpers.processes import SCRIPTS_DIR, start_python, wait_all

WORKER = str(SCRIPTS_DIR / "resume_worker.py")
EPOCHS, BATCHES_PER_EPOCH = 4, 4


def _start(tmp_path, name, *extra):
    backup = tmp_path / f"backup_{name}"
    out = tmp_path / f"{name}.npz"
    proc = start_python([WORKER, str(backup), str(out), *extra], cwd=tmp_path)
    return proc, backup, out


def _load(path):
    with np.load(path) as run:
        n = len(run.files) - 2
        return {
            "weights": [run[f"w{i}"] for i in range(n)],
            "seed_state": run["seed_state"],
            "iterations": int(run["iterations"]),
        }


@pytest.mark.slow
def test_killed_fit_resumes_to_the_uninterrupted_result(tmp_path):
    uninterrupted, _, uninterrupted_out = _start(tmp_path, "uninterrupted")
    killed, backup, killed_out = _start(tmp_path, "killed", "--kill-at", "2:1")
    (code, log), (killed_code, killed_log) = wait_all([uninterrupted, killed])
    assert code == 0, log[-6000:]
    assert killed_code == -9, (
        f"the run was not killed (exit {killed_code}):\n{killed_log[-4000:]}"
    )
    assert not killed_out.exists()
    assert (backup / "latest.weights.h5").exists(), "no backup was written"
    assert '"epoch": 2' in (backup / "training_metadata.json").read_text()

    # Resume twice from the same backup: as is, and with the seed state lost.
    control_backup = tmp_path / "backup_control"
    shutil.copytree(backup, control_backup)
    resumed_out, control_out = tmp_path / "resumed.npz", tmp_path / "control.npz"
    runs = [
        start_python([WORKER, str(backup), str(resumed_out)], cwd=tmp_path),
        start_python(
            [WORKER, str(control_backup), str(control_out), "--reset-seed-state"],
            cwd=tmp_path,
        ),
    ]
    for code, log in wait_all(runs):
        assert code == 0, log[-6000:]

    want, got, reset = (
        _load(p) for p in (uninterrupted_out, resumed_out, control_out)
    )
    assert want["iterations"] == EPOCHS * BATCHES_PER_EPOCH
    assert got["iterations"] == want["iterations"]
    np.testing.assert_array_equal(got["seed_state"], want["seed_state"])
    for g, w in zip(got["weights"], want["weights"], strict=True):
        np.testing.assert_array_equal(g, w)
    # Negative control: without the restored seed state the noise differs.
    assert any(
        not np.array_equal(r, w) for r, w in zip(reset["weights"], want["weights"])
    )
