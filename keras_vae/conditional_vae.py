"""`ConditionalVAE`: a VAE whose encoder, decoder and prior see a condition."""

from typing import Optional

import keras
import numpy as np
from keras import ops

from keras_vae import bounds
from keras_vae import seeding
from keras_vae.checks import check_count
from keras_vae.model import VAE
from keras_vae.model import _is_batch_iterable
from keras_vae.model import _is_tensor
from keras_vae.model import call_on_samples
from keras_vae.model import gaussian_parameters

_NO_CONDITION = (
    "ConditionalVAE needs a condition with every batch: fit(x, condition), "
    "evaluate(x, condition), a tf.data.Dataset of (x, condition) tuples, "
    "or validation_data=(x_val, condition_val)"
)


@keras.saving.register_keras_serializable(package="keras_vae")
class ConditionalVAE(VAE):
    """Conditional VAE: encoder q(z|x, c), decoder p(x|z, c), prior p(z|c).

    The condition c (class labels, or any tensor with one row per example)
    goes to the encoder, the decoder and, when given, a learned prior
    network; without one the prior is N(0, I). Everything else is `VAE`'s:
    the objectives (ELBO, IWAE), the gradient estimators (standard, STL,
    DReG), `beta`, the metrics, saving. With a learned prior the KL and
    `log q(z|x, c) - log p(z|c)` are taken against it, and its parameters
    belong to the generative model: STL and DReG keep their gradient.

    Shapes: x `[B, *event]`; the condition `[B]` integer labels in
    `[0, num_classes)` when `num_classes` is set (the networks then see
    their one-hot encoding, `[B, num_classes]`), otherwise `[B, *c_event]`,
    passed to the networks as float32.

    Args:
        encoder: a model mapping `[x, condition]` to `(mean, log_var)`,
            each `[B, D]`.
        decoder: a model mapping `[z, condition]` (`[B, D]` and the
            condition) to the likelihood's parameters.
        likelihood: as `VAE`'s.
        prior: `None` for the prior N(0, I), or a model mapping the
            condition to `(mean, log_var)` of p(z|c), each `[B, D]`.
        num_classes: the number of classes when the condition is integer
            labels, which are one-hot encoded before they reach the
            networks; `None` passes the condition as it is.
        **kwargs: `VAE`'s keyword arguments (`num_samples`, `objective`,
            `gradient_estimator`, `kl`, `beta`, `free_bits`, `seed`, ...).
            Free bits need the N(0, I) prior.

    Data: `fit(x, condition)` (the condition takes the place of Keras's
    targets), `fit(x, condition, sample_weight=w)`, a `tf.data.Dataset` of
    `(x, condition)` or `(x, condition, sample_weight)` tuples, and
    `validation_data=(x_val, condition_val)`; `evaluate` alike. Calling the
    model on `[x, condition]` returns the reconstruction from the posterior
    mean, so `predict([x, condition])` works.

    A condition whose batch size differs from x's, whose shape does not
    fit the encoder's condition input, or labels outside
    `[0, num_classes)`, raise a ValueError naming both.

    Example:

    >>> vae = keras_vae.ConditionalVAE(encoder, decoder, num_classes=10)
    >>> vae.compile(keras.optimizers.Adam(1e-3))
    >>> vae.fit(x_train, y_train, epochs=10, validation_data=(x_val, y_val))
    >>> sevens = vae.sample(16, condition=7, seed=0)     # [16, *event]
    >>> vae.log_likelihood(x_test, y_test, num_samples=5000)   # [N]
    """

    def __init__(
        self,
        encoder,
        decoder,
        likelihood="bernoulli",
        *,
        prior=None,
        num_classes=None,
        **kwargs,
    ):
        for name, network in (("encoder", encoder), ("decoder", decoder)):
            inputs = getattr(network, "inputs", None)
            if inputs is not None and len(inputs) != 2:
                first = "x" if name == "encoder" else "z"
                raise ValueError(
                    f"The {name} must take [{first}, condition], two "
                    f"inputs; it takes {len(inputs)}"
                )
        self.num_classes = check_count(
            num_classes, "num_classes", allow_none=True
        )
        if prior is not None and kwargs.get("free_bits", 0.0):
            raise ValueError(
                "free_bits floors the KL to N(0, I); it does not go with a "
                "learned prior"
            )
        super().__init__(encoder, decoder, likelihood, **kwargs)
        self.prior = prior
        super()._build_from_networks()
        shape = self._condition_shape
        if (
            self.num_classes is not None
            and shape is not None
            and shape != (self.num_classes,)
        ):
            raise ValueError(
                f"With num_classes={self.num_classes} the networks take "
                f"one-hot labels of shape ({self.num_classes},), but the "
                f"encoder's condition input takes {shape}"
            )

    # Structure.

    @property
    def latent_dim(self):
        """D, read from the decoder's first input."""
        return self.decoder.inputs[0].shape[-1]

    @property
    def _condition_shape(self):
        """An example's condition as the encoder takes it, or None when
        unknown."""
        inputs = getattr(self.encoder, "inputs", None)
        return None if inputs is None else tuple(inputs[1].shape[1:])

    def _build_from_networks(self):
        # VAE's constructor calls this before the prior is set; this
        # constructor builds once it is (building locks the sublayers).
        pass

    def build(self, input_shape):
        # Functional networks arrive built; the likelihood's state (a
        # learned scale) is created from the decoder's output.
        self._build_likelihood()

    # Conditions at the edge.

    def _check_condition(self, condition, x=None, values=False):
        """Raises a ValueError when the condition does not fit x or the
        networks (shapes as far as they are known; label values too when
        `values` and the condition is concrete)."""
        c_shape = tuple(condition.shape)
        x_shape = None if x is None else tuple(x.shape)
        where = f"(condition: {c_shape}" + (
            ")" if x is None else f", x: {x_shape})"
        )
        if x is not None and len(c_shape) and len(x_shape):
            if None not in (c_shape[0], x_shape[0]) and (
                c_shape[0] != x_shape[0]
            ):
                raise ValueError(
                    f"The condition has batch size {c_shape[0]} but x has "
                    f"{x_shape[0]} {where}; they need one condition per "
                    "example."
                )
        if self.num_classes is not None:
            if len(c_shape) != 1:
                raise ValueError(
                    f"With num_classes={self.num_classes} the condition "
                    f"holds integer class labels of shape [B], got shape "
                    f"{c_shape} {where}."
                )
        else:
            expected = self._condition_shape
            event = c_shape[1:]
            if expected is not None and not (
                len(event) == len(expected)
                and all(
                    a is None or b is None or a == b
                    for a, b in zip(event, expected)
                )
            ):
                raise ValueError(
                    f"The condition has examples of shape {event} "
                    f"{where}, but the encoder's condition input takes "
                    f"{expected}."
                )
        if values:
            self._check_condition_values(condition, where)

    def _check_condition_values(self, condition, where):
        values = np.asarray(ops.convert_to_numpy(condition))
        if self.num_classes is None:
            if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
                raise ValueError(f"The condition holds NaN or Inf {where}.")
            return
        outside = (values < 0) | (values >= self.num_classes)
        outside |= values != np.round(values)
        if np.any(outside):
            raise ValueError(
                f"The condition holds class labels outside "
                f"[0, {self.num_classes}) (num_classes={self.num_classes}), "
                f"e.g. {values[outside][0].item()!r} {where}."
            )

    def _checked(self, x, condition):
        """x and the condition as tensors, checked against each other."""
        if condition is None:
            raise ValueError(_NO_CONDITION)
        x = ops.convert_to_tensor(x)
        condition = ops.convert_to_tensor(condition)
        self._check_condition(condition, x, values=True)
        return x, condition

    def _network_condition(self, condition):
        """The condition as the networks take it: one-hot labels, or the
        condition as float32."""
        condition = ops.convert_to_tensor(condition)
        if self.num_classes is None:
            return ops.cast(condition, "float32")
        labels = ops.cast(condition, "int32")
        return ops.one_hot(labels, self.num_classes, dtype="float32")

    def check_data(self, x, condition=None) -> None:
        """Checks examples x and their condition against the model.

        As `VAE.check_data`, and raises a ValueError when the condition is
        missing, has another batch size than x, does not fit the encoder's
        condition input, or holds labels outside `[0, num_classes)`.
        """
        self._checked(x, condition)
        super().check_data(x)

    def _check_inputs(self, inputs):
        x, condition = inputs
        if not (isinstance(x, np.ndarray) or _is_tensor(x)):
            # A keras.utils.PyDataset or a generator: each batch's
            # condition is checked in its step.
            return
        if condition is None:
            raise ValueError(_NO_CONDITION)
        if all(isinstance(t, np.ndarray) or _is_tensor(t) for t in inputs):
            self.check_data(x, condition)

    def _unpack_data(self, data):
        """`((x, condition), sample_weight)`: the condition is in the
        place of Keras's targets, or beside x as `[x, condition]`."""
        x, condition, sample_weight = keras.utils.unpack_x_y_sample_weight(
            data
        )
        if condition is None and isinstance(x, (list, tuple)) and len(x) == 2:
            x, condition = x
        return (x, condition), sample_weight

    # The generative model and the posterior.

    def _encode(self, x, network_condition):
        return gaussian_parameters(
            self.encoder([x, network_condition]), "encoder"
        )

    def _prior_parameters(self, network_condition):
        return gaussian_parameters(self.prior(network_condition), "prior")

    def encode(self, x, condition) -> tuple:
        """q(z|x, c)'s parameters `(mean, log_var)`, each `[B, D]`."""
        x, condition = self._checked(x, condition)
        return self._encode(x, self._network_condition(condition))

    def decode(self, z, condition):
        """The likelihood's parameters for z `[..., B, D]` given the
        condition `[B, ...]`: `[..., B, *event]`."""
        return call_on_samples(
            self.decoder, z, self._network_condition(condition)
        )

    def prior_parameters(self, condition) -> tuple:
        """p(z|c)'s `(mean, log_var)`, each `[B, D]` (zeros for N(0, I))."""
        condition = ops.convert_to_tensor(condition)
        self._check_condition(condition, values=True)
        network_condition = self._network_condition(condition)
        if self.prior is not None:
            return self._prior_parameters(network_condition)
        zeros = ops.zeros(
            (ops.shape(network_condition)[0], self.latent_dim), "float32"
        )
        return zeros, zeros

    def call(self, inputs, training=None):
        x, condition = inputs
        network_condition = self._network_condition(condition)
        mean, _ = self._encode(x, network_condition)
        return self.likelihood.mean(self.decoder([mean, network_condition]))

    def _posterior_samples(self, inputs, num_samples, seed, stop=False):
        """Encode, sample, decode given the condition; with a learned prior
        the KL and the log-ratio are taken against p(z|c)."""
        x, condition = inputs
        if condition is None:
            raise ValueError(_NO_CONDITION)
        x = ops.convert_to_tensor(x)
        condition = ops.convert_to_tensor(condition)
        self._check_shapes(x)
        self._check_condition(condition, x)
        network_condition = self._network_condition(condition)
        mean, log_var = self._encode(x, network_condition)
        z, kl, log_ratio = self._reparameterize(
            mean, log_var, num_samples, seed, stop
        )
        if self.prior is not None:
            prior_mean, prior_log_var = self._prior_parameters(
                network_condition
            )
            kl = bounds.normal_kl(mean, log_var, prior_mean, prior_log_var)
            log_ratio = bounds.log_ratio_to_prior(
                log_ratio, z, prior_mean, prior_log_var
            )
        decoded = call_on_samples(self.decoder, z, network_condition)
        return mean, log_var, kl, log_ratio, self.likelihood.log_prob(
            x, decoded
        )

    # Inference.

    def sample(
        self,
        n: int,
        condition,
        seed: seeding.SeedLike = None,
        draw: bool = False,
    ):
        """Draws from the generative model: z ~ p(z|c), then x given z, c.

        Args:
            n: the number of samples.
            condition: one condition per sample (`[n]` labels or
                `[n, *c_event]`), or a single one (a label, or
                `[*c_event]`) for all n.
            seed: a seed (int or pair); `None` uses the model's seed
                generator. z is the op's noise (scaled and shifted by a
                learned prior), the same on every backend for one seed.
            draw: if False, returns the likelihood's mean E[x|z, c]; if
                True, a draw x ~ p(x|z, c).

        Returns:
            `[n, *event]`.
        """
        n = check_count(n, "n")
        condition = ops.convert_to_tensor(condition)
        if self.num_classes is not None:
            single_rank = 0
        elif self._condition_shape is not None:
            single_rank = len(self._condition_shape)
        else:
            single_rank = len(condition.shape) - 1
        if len(condition.shape) == single_rank:
            condition = ops.broadcast_to(
                condition[None], (n, *condition.shape)
            )
        if condition.shape[0] != n:
            raise ValueError(
                f"The condition has batch size {condition.shape[0]} "
                f"(condition: {tuple(condition.shape)}), but n={n} samples "
                "were asked for: pass one condition per sample, or one for "
                "all."
            )
        mean, log_var = self.prior_parameters(condition)
        seeds = self._seeds(seed)
        z, _, _ = self._reparameterize(mean, log_var, 1, seeds.next())
        decoder_output = self.decoder(
            [z[0], self._network_condition(condition)]
        )
        return self._likelihood_output(decoder_output, seeds, draw)

    def reconstruct(
        self,
        x,
        condition,
        num_samples: int = 1,
        seed: seeding.SeedLike = None,
    ):
        """K reconstructions per example, E[x|z_k, c] for z_k ~ q(z|x, c).

        Returns:
            `[num_samples, B, *event]`; the samples are not averaged.
        """
        num_samples = check_count(num_samples)
        mean, log_var = self.encode(x, condition)
        z, _, _ = self._reparameterize(
            mean, log_var, num_samples, self._seeds(seed).next()
        )
        return self.likelihood.mean(self.decode(z, condition))

    def elbo(
        self,
        x,
        condition,
        num_samples: int = 1,
        seed: seeding.SeedLike = None,
    ):
        """The K-sample ELBO of each example given its condition, `[B]`."""
        return super().elbo(self._checked(x, condition), num_samples, seed)

    def iwae_bound(
        self,
        x,
        condition,
        num_samples: int = 1,
        seed: seeding.SeedLike = None,
    ):
        """The K-sample importance-weighted bound on log p(x|c), `[B]`."""
        return super().iwae_bound(
            self._checked(x, condition), num_samples, seed
        )

    def posterior_means(self, x, condition) -> list:
        """`[mean]` of q(z|x, c), `[B, D]`."""
        return [self.encode(x, condition)[0]]

    def kl_divergence(self, x, condition, seed: seeding.SeedLike = None):
        """KL(q(z|x, c) || p(z|c)) of each example, `[B]`, in closed form
        (`seed` is unused)."""
        mean, log_var = self.encode(x, condition)
        prior_mean, prior_log_var = self.prior_parameters(condition)
        return bounds.normal_kl(mean, log_var, prior_mean, prior_log_var)

    def log_likelihood(
        self,
        x,
        condition=None,
        num_samples: int = 5000,
        batch_size: Optional[int] = None,
        chunk_size: int = 500,
        seed: seeding.SeedLike = None,
        verbose="auto",
    ):
        """Importance-sampling estimate of log p(x|c) per example.

        As `VAE.log_likelihood`, given the condition: x and condition
        arrays, or (with `condition=None`) a `tf.data.Dataset` or iterable
        of `(x, condition)` batches.

        Returns:
            `[N]` float32 estimates.
        """
        if condition is not None:
            inputs = self._checked(x, condition)
        elif _is_batch_iterable(x):
            inputs = x
        else:
            raise ValueError(_NO_CONDITION)
        return super().log_likelihood(
            inputs,
            num_samples=num_samples,
            batch_size=batch_size,
            chunk_size=chunk_size,
            seed=seed,
            verbose=verbose,
        )

    # Serialization.

    def get_config(self):
        config = super().get_config()
        config["prior"] = (
            None
            if self.prior is None
            else keras.saving.serialize_keras_object(self.prior)
        )
        config["num_classes"] = self.num_classes
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("prior") is not None:
            config["prior"] = keras.saving.deserialize_keras_object(
                config["prior"]
            )
        return super().from_config(config)
