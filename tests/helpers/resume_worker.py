"""Trains the tiny VAE with BackupAndRestore and deterministic ops, on the
Keras backend that KERAS_BACKEND names; run as a subprocess so that it can
be killed.

    python resume_worker.py BACKUP_DIR OUT.npz [--kill-at EPOCH:BATCH]
                            [--reset-seed-state]

--kill-at sends this process SIGKILL after that (0-based) training batch,
as a crash would, leaving BACKUP_DIR as the last backup wrote it.
--reset-seed-state sets the seed generators back to their initial state
after the backup is restored (a negative control: what a resume that lost
them would do). OUT.npz receives the final weights, the model's seed
generator state and the optimizer's step count.
"""

import argparse
import os
import signal

import keras
import numpy as np  # noqa: E402

from helpers import tiny_vae  # noqa: E402

EPOCHS = 4
BATCH_SIZE = 8


class KillAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.kill_epoch, self.kill_batch = epoch, batch
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == (self.kill_epoch, self.kill_batch):
            os.kill(os.getpid(), signal.SIGKILL)


class ResetSeedState(keras.callbacks.Callback):
    """Runs after BackupAndRestore's on_train_begin (it comes later in the
    callback list)."""

    def __init__(self, initial_state):
        super().__init__()
        self.initial_state = initial_state

    def on_train_begin(self, logs=None):
        self.model.seed_generator.state.assign(self.initial_state)


def use_deterministic_ops():
    """Each backend's switch to deterministic kernels (JAX's CPU kernels
    are deterministic already)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True)


def main():
    use_deterministic_ops()
    parser = argparse.ArgumentParser()
    parser.add_argument("backup_dir")
    parser.add_argument("out")
    parser.add_argument("--kill-at")
    parser.add_argument("--reset-seed-state", action="store_true")
    args = parser.parse_args()

    model = tiny_vae.build(num_samples=2)
    model.compile(keras.optimizers.Adam(1e-2))
    callbacks = [keras.callbacks.BackupAndRestore(args.backup_dir)]
    if args.kill_at:
        callbacks.append(KillAt(*map(int, args.kill_at.split(":"))))
    if args.reset_seed_state:
        initial = keras.ops.convert_to_numpy(model.seed_generator.state)
        callbacks.append(ResetSeedState(initial))
    # shuffle=False: Keras draws each epoch's order from a generator that a
    # backup does not hold.
    model.fit(
        tiny_vae.data(),
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    np.savez(
        args.out,
        seed_state=keras.ops.convert_to_numpy(model.seed_generator.state),
        iterations=int(
            keras.ops.convert_to_numpy(model.optimizer.iterations)
        ),
        **{f"w{i}": w for i, w in enumerate(model.get_weights())},
    )


if __name__ == "__main__":
    main()
