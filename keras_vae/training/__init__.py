"""The VAE's training, one module per Keras backend.

As Keras keeps one trainer per backend (`keras/src/backend/{jax,
tensorflow,torch}/trainer.py`) over shared logic, `trainer.py` holds what
every backend shares (DReG's choice of loss per variable, the metrics, the
non-finite guard's reduction and carried state) and each backend's module
writes only its gradient and update with its own autodiff. `Trainer` is the
active backend's class, which `keras_vae.VAE` mixes in; importing it
imports only that backend's framework.
"""

import importlib

import keras

_CLASSES = {
    "jax": "JAXTrainer",
    "tensorflow": "TensorFlowTrainer",
    "torch": "TorchTrainer",
}


def _trainer_class():
    backend = keras.backend.backend()
    if backend not in _CLASSES:
        raise ValueError(
            f"keras_vae trains on the jax, tensorflow and torch backends; "
            f"KERAS_BACKEND is {backend!r}."
        )
    module = importlib.import_module(f"keras_vae.training.{backend}")
    return getattr(module, _CLASSES[backend])


Trainer = _trainer_class()
