"""Trains the tiny VAE on JAX on one device, then with
`keras.distribution.DataParallel` over every device, and prints the largest
difference of the trained weights and how far training moved them (tests/test_backends_agree.py runs it with
two host devices)."""

import jax
import keras
import numpy as np

from helpers import tiny_vae


def train():
    model = tiny_vae.build(objective="iwae", gradient_estimator="dreg")
    model.compile(keras.optimizers.SGD(0.05))
    initial = [keras.ops.convert_to_numpy(w) for w in model.get_weights()]
    model.fit(tiny_vae.data(), batch_size=16, epochs=2, shuffle=False,
              verbose=0)
    trained = [keras.ops.convert_to_numpy(w) for w in model.get_weights()]
    return initial, trained


def main():
    assert len(jax.devices()) == 2, jax.devices()
    keras.utils.set_random_seed(0)
    initial, single = train()
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=jax.devices())
    )
    keras.utils.set_random_seed(0)
    _, parallel = train()
    print("max_difference", max(
        float(np.max(np.abs(a - b))) for a, b in zip(single, parallel)
    ))
    print("max_change", max(
        float(np.max(np.abs(a - b))) for a, b in zip(single, initial)
    ))


if __name__ == "__main__":
    main()
