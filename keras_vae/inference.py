"""The models' inference methods return values that NumPy takes, on
every backend, as `predict` does.

TensorFlow's and JAX's arrays convert to NumPy as they are. PyTorch's do
not: NumPy refuses a tensor that records its gradient ("Can't call numpy()
on Tensor that requires grad"), and `np.mean` any tensor. So on PyTorch
`encode`, `sample`, `reconstruct`, `elbo`, `iwae_bound`, `kl_divergence`,
`log_likelihood` and `posterior_means`, called by a user, run as `predict`
runs the model, under `torch.no_grad()`, and return NumPy arrays:

>>> log_px = vae.log_likelihood(x_test, num_samples=5000)
>>> float(np.mean(log_px))

Inside the model's own differentiated computations (`call`, and
`_posterior_samples`, which every training step draws through) they
return tensors that record gradients, as any other code: the training
steps differentiate through `encode`.
"""

import functools
import threading

import keras

# The methods whose outputs are results for the user.
INFERENCE_METHODS = (
    "encode", "sample", "reconstruct", "elbo", "iwae_bound",
    "kl_divergence", "log_likelihood", "posterior_means",
)
# The methods that training differentiates: inference methods they call
# record gradients.
DIFFERENTIATED_METHODS = ("call", "_posterior_samples")

_calls = threading.local()


def _wrapped(method, differentiated):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        depth = getattr(_calls, "depth", 0)
        _calls.depth = depth + 1
        try:
            if (differentiated or depth
                    or keras.backend.backend() != "torch"):
                return method(self, *args, **kwargs)
            import torch

            with torch.no_grad():
                outputs = method(self, *args, **kwargs)
            return keras.tree.map_structure(
                keras.ops.convert_to_numpy, outputs
            )
        finally:
            _calls.depth = depth

    wrapper._keras_vae_inference = True
    return _not_autograph_converted(wrapper)


def _not_autograph_converted(wrapper):
    """On TensorFlow, `wrapper` as AutoGraph must leave it: it caches its
    conversions by code, and every wrapper shares one code, so inside a
    `tf.function` all would call the method of the first one converted.
    (The methods need no conversion: they are written in `keras.ops`.)"""
    if keras.backend.backend() != "tensorflow":
        return wrapper
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(wrapper)


class InferenceMethods:
    """Mixin of the models: wraps the methods named in `INFERENCE_METHODS`
    and `DIFFERENTIATED_METHODS` of the class and of every subclass, so
    that an override behaves as the method it overrides."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for names, differentiated in (
            (INFERENCE_METHODS, False), (DIFFERENTIATED_METHODS, True),
        ):
            for name in names:
                method = cls.__dict__.get(name)
                if callable(method) and not getattr(
                    method, "_keras_vae_inference", False
                ):
                    setattr(cls, name, _wrapped(method, differentiated))
