"""Trains the tiny VAE under a tf.distribute strategy; run as a subprocess.

    python distributed_worker.py mirrored INIT.npz OUT.npz
    python distributed_worker.py multiworker INIT.npz OUT.npz  # TF_CONFIG set

`mirrored` splits the CPU into two logical devices (which must happen before
TensorFlow initializes its devices, hence a process of its own);
`multiworker` is one worker of a MultiWorkerMirroredStrategy cluster. Both
start from the weights in INIT.npz, fit with the global batch size
GLOBAL_BATCH, validate on the training data, and write the per-batch
losses, the validation losses, the final weights and the replica count to
OUT.npz.
"""

import sys

import numpy as np
import tensorflow as tf

STRATEGY, INIT_PATH, OUT_PATH = sys.argv[1:4]

if STRATEGY == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
elif STRATEGY == "multiworker":
    # Created first, before other TensorFlow work, as the strategy requires.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
else:
    raise SystemExit(f"unknown strategy {STRATEGY!r}")

import keras  # noqa: E402

from helpers import tiny_vae  # noqa: E402

GLOBAL_BATCH = 8
EPOCHS = 2


def main():
    x = tiny_vae.data()
    with strategy.scope():
        model = tiny_vae.build(fixed_log_var=-30.0)
        model.build((None, tiny_vae.INPUT_DIM))
        with np.load(INIT_PATH) as init:
            model.set_weights([init[f"w{i}"] for i in range(len(init.files))])
        model.compile(keras.optimizers.SGD(0.1))
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    dataset = dataset.with_options(options)
    losses = tiny_vae.BatchLosses()
    history = model.fit(
        dataset,
        epochs=EPOCHS,
        validation_data=dataset,
        verbose=0,
        callbacks=[losses],
    )
    np.savez(
        OUT_PATH,
        losses=np.array(losses.losses),
        val_losses=np.array(history.history["val_loss"]),
        replicas=strategy.num_replicas_in_sync,
        **{f"w{i}": w for i, w in enumerate(model.get_weights())},
    )


if __name__ == "__main__":
    main()
