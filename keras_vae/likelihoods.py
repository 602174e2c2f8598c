"""Decoder likelihoods p(x|z): Bernoulli and Gaussian.

A likelihood turns the decoder's output into a distribution over x. Each is a
Keras layer (so a learned scale is a weight of the model) with:

- `log_prob(x, decoder_output)`: log p(x|z), summed over the event
  dimensions, i.e. every axis of `x` but the first (the batch axis).
  `decoder_output` may carry extra leading axes (samples), `[..., B, *event]`;
  the result is then `[..., B]`. Computed in float32.
- `mean(decoder_output)`: E[x|z].
- `sample(decoder_output, seed=None)`: a draw of x.

Calling the layer returns `mean(decoder_output)`.
"""

import math

import keras
import numpy as np
from keras import ops

__all__ = ["Likelihood", "Bernoulli", "Gaussian", "get", "serialize"]


class Likelihood(keras.layers.Layer):
    """Base class of decoder likelihoods.

    `support` is the `(low, high)` range of x the likelihood is defined on;
    `check_support(x)` raises a ValueError naming the likelihood and the
    range found when x leaves it.
    """

    support = (-math.inf, math.inf)

    def check_support(self, x):
        """Raises ValueError unless every value of `x` is finite and in
        `support`. `x`: an array or tensor (its min and max are taken on
        the host, with NumPy: one copy of a tensor, none of an array)."""
        x = np.asarray(ops.convert_to_numpy(x) if not isinstance(
            x, np.ndarray) else x)
        if x.size == 0:
            return
        # NumPy's min and max propagate NaN, which then fails isfinite.
        low = float(np.min(x))
        high = float(np.max(x))
        name = type(self).__name__
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(
                f"x holds non-finite values (range found: [{low}, {high}]); "
                f"the {name} likelihood needs finite data. Remove or "
                "replace the NaN/Inf entries."
            )
        lo, hi = self.support
        if low < lo or high > hi:
            hint = ""
            if isinstance(self, Bernoulli) and high > 1.0:
                hint = (
                    " Scale the data to [0, 1] first (for 8-bit images, "
                    "x / 255)."
                )
            raise ValueError(
                f"x spans [{low:g}, {high:g}], outside the support "
                f"[{lo:g}, {hi:g}] of the {name} likelihood.{hint}"
            )

    def log_prob(self, x, decoder_output):
        raise NotImplementedError

    def mean(self, decoder_output):
        raise NotImplementedError

    def sample(self, decoder_output, seed=None):
        raise NotImplementedError

    def call(self, decoder_output):
        return self.mean(decoder_output)

    def compute_output_shape(self, input_shape):
        return input_shape

    @staticmethod
    def _to_float32(x, decoder_output):
        return ops.cast(x, "float32"), ops.cast(decoder_output, "float32")

    @staticmethod
    def _sum_event(values, x):
        event_axes = tuple(range(-(len(x.shape) - 1), 0))
        return ops.sum(values, axis=event_axes) if event_axes else values


@keras.saving.register_keras_serializable(package="keras_vae")
class Bernoulli(Likelihood):
    """Independent Bernoulli per dimension.

    For data in [0, 1] (binary, or grey levels treated as probabilities):
    `log_prob` is minus the binary cross-entropy, summed over the event
    dimensions.

    Args:
        from_logits: True (the default) when the decoder outputs logits (a
            final layer with no activation: the stable choice); False when
            it outputs probabilities (a final `sigmoid`, as in the Keras VAE
            example), which are clipped to [1e-7, 1 - 1e-7].

    Example:

    >>> likelihood = keras_vae.likelihoods.Bernoulli()
    >>> log_px_z = likelihood.log_prob(x, decoder(z))   # [B]
    """

    support = (0.0, 1.0)
    # Keras's epsilon for probabilities: log(1e-7) bounds the loss per pixel.
    _EPSILON = 1e-7

    def __init__(self, from_logits=True, **kwargs):
        super().__init__(**kwargs)
        self.from_logits = bool(from_logits)

    def log_prob(self, x, decoder_output):
        x, output = _flat_events(*self._to_float32(x, decoder_output))
        if self.from_logits and keras.backend.backend() == "torch":
            return _bernoulli_log_prob_torch(x, output)
        if self.from_logits:
            # x * logits - softplus(logits), stable for large |logits|.
            values = x * output - _softplus(output)
        else:
            p = ops.clip(output, self._EPSILON, 1.0 - self._EPSILON)
            values = x * ops.log(p) + (1.0 - x) * ops.log1p(-p)
        return self._sum_event(values, x)

    def mean(self, decoder_output):
        output = ops.cast(decoder_output, "float32")
        return ops.sigmoid(output) if self.from_logits else output

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}

    def sample(self, decoder_output, seed=None):
        probs = self.mean(decoder_output)
        uniform = keras.random.uniform(ops.shape(probs), seed=seed)
        return ops.cast(uniform < probs, "float32")


def _flat_events(x, output):
    """x `[B, *event]` and the decoder's output `[..., B, *event]` with
    the event axes folded into one: XLA runs the terms over
    `[samples, B, 28, 28, 1]` several times slower than over
    `[samples, B, 784]`, and the sum over the event is the same."""
    event_ndim = len(x.shape) - 1
    event = tuple(x.shape[1:])
    if event_ndim <= 1 or any(d is None for d in event):
        return x, output
    size = int(np.prod(event))
    x = ops.reshape(x, (-1, size))
    leading = ops.shape(output)[:-event_ndim]
    return x, ops.reshape(output, (*leading, size))


def _bernoulli_log_prob_torch(x, logits):
    """sum_e x * logits - softplus(logits) on PyTorch, which runs each
    term as a pass of its own; each sum apart, so that no [..., B, E]
    difference is made. Without gradients (`log_likelihood`'s chunks) the
    first sum is a contraction, which reads the logits once: the terms
    take half the time of the written-out form. With gradients the
    product is kept, as the contraction's backward is 2x slower
    (BENCHMARKS.md)."""
    import torch

    def sum_event(values):
        return Likelihood._sum_event(values, x)

    softplus = sum_event(ops.softplus(logits))
    if len(x.shape) == 2 and not torch.is_grad_enabled():
        return ops.einsum("be,...be->...b", x, logits) - softplus
    return sum_event(x * logits) - softplus


def _softplus(t):
    """softplus(t) = max(t, 0) + log1p(exp(-|t|)). Written out for XLA
    (TensorFlow, JAX), which fuses it into one loop with the Bernoulli
    terms around it: 3.5x faster than JAX's own softplus on the chunks of
    `log_likelihood` (BENCHMARKS.md)."""
    return ops.relu(t) + ops.log1p(ops.exp(-ops.abs(t)))


@keras.saving.register_keras_serializable(package="keras_vae")
class Gaussian(Likelihood):
    """Independent Gaussian per dimension; the decoder outputs the mean.

    Args:
        scale: the standard deviation: a positive float, fixed, or
            `"learned"` for one learned log-scale per output dimension
            (a weight of shape `decoder_output.shape[1:]`, initialized to
            scale 1).

    Example:

    >>> likelihood = keras_vae.likelihoods.Gaussian(scale="learned")
    >>> log_px_z = likelihood.log_prob(x, decoder(z))   # [B]
    """

    def __init__(self, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        if scale != "learned":
            if isinstance(scale, str) or not float(scale) > 0.0:
                raise ValueError(
                    'scale must be a positive float or "learned", got '
                    f"{scale!r}"
                )
            scale = float(scale)
        self.scale = scale
        if scale != "learned":
            self.built = True

    @property
    def learned(self):
        return self.scale == "learned"

    def build(self, input_shape):
        if self.learned:
            self.log_scale = self.add_weight(
                shape=tuple(input_shape[1:]),
                initializer="zeros",
                name="log_scale",
            )

    def _log_scale(self):
        if self.learned:
            return ops.cast(self.log_scale, "float32")
        return ops.convert_to_tensor(math.log(self.scale), "float32")

    def log_prob(self, x, decoder_output):
        x, loc = self._to_float32(x, decoder_output)
        log_scale = self._log_scale()
        values = (
            -0.5 * ops.square((x - loc) * ops.exp(-log_scale))
            - log_scale
            - 0.5 * math.log(2.0 * math.pi)
        )
        return self._sum_event(values, x)

    def mean(self, decoder_output):
        return ops.cast(decoder_output, "float32")

    def sample(self, decoder_output, seed=None):
        loc = self.mean(decoder_output)
        noise = keras.random.normal(ops.shape(loc), seed=seed)
        return loc + ops.exp(self._log_scale()) * noise

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


_BY_NAME = {"bernoulli": Bernoulli, "gaussian": Gaussian}


def get(identifier):
    """A `Likelihood` from an instance, a name or a serialized config.

    Args:
        identifier: a `Likelihood`; `"bernoulli"` or `"gaussian"` (scale 1);
            or a dict from `serialize`.
    """
    if isinstance(identifier, Likelihood):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, dict):
        obj = keras.saving.deserialize_keras_object(identifier)
        if isinstance(obj, Likelihood):
            return obj
    raise ValueError(
        f"likelihood must be a keras_vae.likelihoods.Likelihood or one of "
        f"{sorted(_BY_NAME)}, got {identifier!r}"
    )


def serialize(likelihood):
    return keras.saving.serialize_keras_object(likelihood)
