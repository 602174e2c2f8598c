"""`VAE`: a variational autoencoder trained on the ELBO or the IWAE bound."""

import sys
from typing import Optional

import keras
import numpy as np
from keras import ops

from keras_vae import bounds
from keras_vae import inference
from keras_vae import likelihoods as likelihoods_module
from keras_vae import ops as vae_ops
from keras_vae import seeding
from keras_vae import training
from keras_vae.checks import check_count
from keras_vae.checks import check_implementation
from keras_vae.checks import check_objective
from keras_vae.checks import check_samples_at_once
from keras_vae.training.trainer import NonfiniteGuardState

_Schedule = keras.optimizers.schedules.LearningRateSchedule
# Bytes of decoder activations one batch of `log_likelihood` may hold.
LOG_LIKELIHOOD_MEMORY_BUDGET = 256 * 2**20


def _tf():
    """TensorFlow, imported on its own backend only: JAX and PyTorch run
    without it."""
    import tensorflow as tf

    return tf


@keras.saving.register_keras_serializable(package="keras_vae")
class VAE(
    inference.InferenceMethods, seeding.SavesSeedState, training.Trainer,
    keras.Model,
):
    """Variational autoencoder: encoder q(z|x), decoder p(x|z), prior N(0, I).

    `fit` maximizes a lower bound on log p(x) per example:

    - `objective="elbo"`: the K-sample ELBO,
      `mean_k log p(x|z_k) - KL(q(z|x) || p(z))`, with the analytic KL
      (`kl="analytic"`) or the Monte Carlo one (`kl="mc"`,
      `mean_k [log q(z_k|x) - log p(z_k)]`).
    - `objective="iwae"`: the importance-weighted bound (Burda et al. 2015),
      `logsumexp_k log w_k - log K` with
      `log w_k = log p(x|z_k) - log q(z_k|x) + log p(z_k)`.

    **The loss is the negative bound of each example, averaged over the
    batch.** The reconstruction term is summed over every pixel (event
    dimension) of an example, never averaged per pixel: averaging it would
    weigh the KL by the number of pixels and give a different model.
    Regularization losses of the layers are added to it.

    Gradient estimators (`gradient_estimator`):

    - `"standard"`: the reparameterization gradient of the bound.
    - `"stl"`: "sticking the landing" (Roeder et al. 2017): drops the score
      function term of log q by stopping the gradient through q's
      parameters inside log q (the path through z stays). With
      `objective="elbo"` it implies the Monte Carlo KL.
    - `"dreg"`: doubly reparameterized (Tucker et al. 2018), for
      `objective="iwae"` only: the encoder gets
      `sum_k w~_k**2 * grad log w_k` (path through z only, `w~` the
      normalized weights), the decoder the standard IWAE gradient.

    Inside an XLA-compiled step (the default on TensorFlow and JAX) the
    op lowers to the same compiled kernels, so the step draws the same noise
    with or without XLA (README, "XLA").

    Args:
        encoder: a model mapping x to `(mean, log_var)`, each `[B, D]`, e.g.
            ending in `keras_vae.layers.GaussianEncoderHead`.
        decoder: a model mapping z `[B, D]` to the likelihood's parameters
            (logits for `"bernoulli"`, the mean for `"gaussian"`).
        likelihood: a `keras_vae.likelihoods.Likelihood`, `"bernoulli"` or
            `"gaussian"`.
        num_samples: K, the samples of z per example in training and
            evaluation, an int >= 1.
        objective: `"elbo"` or `"iwae"`.
        gradient_estimator: `"standard"`, `"stl"` or `"dreg"` (IWAE only).
        kl: `"analytic"` or `"mc"`, the KL estimator of the ELBO.
        beta: the KL weight (>= 0), or a
            `keras.optimizers.schedules.LearningRateSchedule` of the training
            step for a warm-up, e.g. `PolynomialDecay(0.0, 10000, 1.0)`. With
            the IWAE objective it scales `log q(z|x) - log p(z)` inside the
            weights. The reported bound always uses beta = 1.
        free_bits: a floor, in nats, on each latent dimension's KL averaged
            over the batch (Kingma et al. 2016); ELBO with the analytic KL and
            the standard estimator only.
        seed: the initial seed of the model's seed generator (its state is
            saved with the model): an int, a pair of ints or `None`; see
            `keras_vae.seeding`.
        implementation: the op's implementation, see
            `keras_vae.ops.reparameterize_kl`.
        stop_on_nonfinite: if True (the default), a training step whose loss
            or gradients hold a NaN or Inf stops `fit` with an error naming
            the step (TensorFlow's InvalidArgumentError, a
            FloatingPointError on JAX and PyTorch); the weights and the
            optimizer's state are those of the step before, with any
            `steps_per_execution`. Compiled steps carry the first bad step
            and skip every update after it, so no step waits for the host
            (`keras_vae.training`). Under a `LossScaleOptimizer` (mixed
            float16) only the loss is checked: that optimizer skips the
            steps whose scaled gradients overflow, by design.
        **kwargs: `keras.Model` keyword arguments, such as `name`.

    Metrics (reset each epoch): `loss`; `elbo` or `iwae`, the bound;
    `reconstruction`, the expected log-likelihood `mean_k log p(x|z_k)`;
    `kl`, the analytic KL.

    Calling the model returns the reconstruction of x from the posterior
    mean, so `predict` works.

    Saving: `model.save("m.keras")` and `keras.models.load_model("m.keras")`
    need no `custom_objects` once keras-vae's classes are registered:
    `import keras_vae` after `import keras`, any use of `keras_vae.VAE`, or
    `keras_vae.load_model` (which also says when a file is truncated or
    corrupt). The seed generator's state is saved too. `model.export`
    writes a SavedModel of `call`; graphs that contain the fused op (for
    example an encoder with a `Sampling` layer) need the op library, so
    `import keras_vae` before `tf.saved_model.load`.

    Example:

    >>> vae = keras_vae.VAE(encoder, decoder, "bernoulli", num_samples=5,
    ...                     objective="iwae", gradient_estimator="dreg")
    >>> vae.compile(keras.optimizers.Adam(1e-3))
    >>> vae.fit(x_train, epochs=10, validation_data=(x_val,))
    >>> vae.log_likelihood(x_test, num_samples=5000)   # [N]
    """

    def __init__(
        self,
        encoder,
        decoder,
        likelihood="bernoulli",
        num_samples=1,
        objective="elbo",
        gradient_estimator="standard",
        kl="analytic",
        beta=1.0,
        free_bits=0.0,
        seed=None,
        implementation="auto",
        stop_on_nonfinite=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        num_samples = check_samples_at_once(num_samples)
        free_bits = check_objective(objective, gradient_estimator, kl, free_bits)
        if not isinstance(beta, _Schedule):
            if isinstance(beta, bool) or not float(beta) >= 0.0:
                raise ValueError(
                    "beta must be a float >= 0 or a keras.optimizers."
                    f"schedules.LearningRateSchedule, got {beta!r}"
                )
            beta = float(beta)
        check_implementation(implementation)

        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihoods_module.get(likelihood)
        self.num_samples = num_samples
        self.objective = objective
        self.gradient_estimator = gradient_estimator
        self.kl = kl
        self.beta = beta
        self.free_bits = free_bits
        self.seed = seeding.config_seed(seed)
        self.implementation = implementation
        self.stop_on_nonfinite = bool(stop_on_nonfinite)
        self.seed_generator = seeding.seed_generator(seed)

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.bound_tracker = keras.metrics.Mean(name=objective)
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self._nonfinite_guard = NonfiniteGuardState()
        self._check_latent_sizes()
        self._build_from_networks()
        self._check_decoder_activation()

    # Structure.

    def _build_from_networks(self):
        """Builds now when the encoder's input shape is known, so that the
        state (a learned likelihood scale) exists before weights load and
        the model can be saved or exported before it has seen data.
        Building locks the sublayers: a subclass with more networks builds
        once it has set them."""
        try:
            input_shape = self.encoder.input_shape
        except (AttributeError, ValueError):
            input_shape = None
        if input_shape is not None:
            self.build(input_shape)

    def _check_latent_sizes(self):
        """Raises when the encoder's latent code and the decoder's input
        differ in size (compared where both are known): otherwise only
        `fit` would fail, with a generic shape message."""
        try:
            encoded = self.encoder.output_shape
            decoded = self.latent_dim
        except (AttributeError, ValueError, IndexError, TypeError):
            return
        if not (isinstance(encoded, (list, tuple)) and len(encoded) == 2
                and isinstance(encoded[0], tuple) and encoded[0]):
            return
        shape = tuple(encoded[0])
        if None not in (shape[-1], decoded) and shape[-1] != decoded:
            raise ValueError(
                f"The encoder outputs latent codes of size {shape[-1]} (its "
                f"mean and log_var have shape {shape}), but the decoder "
                f"takes inputs of size {decoded}; the decoder's input size "
                "must be the encoder's latent size."
            )

    def _check_decoder_activation(self):
        """A decoder ending in a sigmoid outputs probabilities, which a
        Bernoulli likelihood on logits would take for logits: the outputs
        would stay in (0.5, 0.73), silently."""
        likelihood = self.likelihood
        if not (
            isinstance(likelihood, likelihoods_module.Bernoulli)
            and likelihood.from_logits
        ):
            return
        last = _output_layer(self.decoder)
        activation = getattr(last, "activation", None)
        if getattr(activation, "__name__", None) == "sigmoid":
            raise ValueError(
                f"The decoder's last layer {last.name!r} applies a sigmoid, "
                "so it outputs probabilities, but the Bernoulli likelihood "
                "takes logits. Either drop the final activation (the "
                "stable choice) or pass likelihood=keras_vae.likelihoods."
                "Bernoulli(from_logits=False)."
            )

    def _check_shapes(self, x):
        """Raises when x's examples are not shaped like the decoder's output
        (compared where both are known, at trace time)."""
        try:
            output_shape = self.decoder.output_shape
        except (AttributeError, ValueError):
            return
        if not isinstance(output_shape, tuple) or _rank(x) is None:
            return
        x_event = tuple(x.shape[1:])
        out_event = tuple(output_shape[1:])
        if len(x_event) == len(out_event) and all(
            a is None or b is None or a == b
            for a, b in zip(x_event, out_event)
        ):
            return
        hint = ""
        if x_event + (1,) == out_event:
            hint = " Add the channel axis: x[..., None]."
        raise ValueError(
            f"x has examples of shape {x_event} (x: {tuple(x.shape)}), but "
            f"the decoder outputs examples of shape {out_event} (decoder "
            f"output: {output_shape}); they must be the same.{hint}"
        )

    def check_data(self, x) -> None:
        """Checks examples `x` (an array or tensor) against the model.

        Raises a ValueError when their shape differs from the decoder's
        output, or when they leave the likelihood's support (e.g. 0-255
        images with a Bernoulli likelihood) or hold NaN or Inf. `fit`,
        `evaluate` and `log_likelihood` run it on their array input, or on
        the first batch of a `tf.data.Dataset`.
        """
        if not isinstance(x, np.ndarray):
            x = ops.convert_to_tensor(x)
        if x.shape and x.shape[0] == 0:
            raise ValueError(
                f"x has no examples (shape {tuple(x.shape)}); it needs at "
                "least one"
            )
        self._check_shapes(x)
        self.likelihood.check_support(x)

    def _check_input(self, data):
        """`check_data` on arrays, or on a dataset's first batch."""
        if data is None:
            return
        if _is_tf_dataset(data):
            for batch in data.take(1):
                data = batch
        self._check_inputs(self._unpack_data(data)[0])

    def _check_inputs(self, inputs):
        """`check_data` on a step's inputs (see `_unpack_data`) when they
        are arrays or tensors. A hook of the subclasses."""
        if isinstance(inputs, np.ndarray) or _is_tensor(inputs):
            self.check_data(inputs)

    def _unpack_data(self, data):
        """A step's data as `(inputs, sample_weight)`: `inputs` is what
        `_posterior_samples` and `compute_gradients` take, here x (any
        target is ignored). A hook of the subclasses."""
        x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        return x, sample_weight

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        self._check_input(x if y is None else (x, y))
        self._check_input(validation_data)
        self._nonfinite_guard.reset()
        return super().fit(
            x, y, *args, validation_data=validation_data, **kwargs
        )

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_input(x if y is None else (x, y))
        return super().evaluate(x, y, *args, **kwargs)

    def _build_likelihood(self):
        if self.likelihood.built:
            return
        try:
            output_shape = self.decoder.output_shape
        except (AttributeError, ValueError):
            output_shape = self.decoder.compute_output_shape(
                (None, self.latent_dim)
            )
        self.likelihood.build(output_shape)

    @property
    def latent_dim(self):
        """D, read from the decoder's input shape."""
        try:
            return self.decoder.input_shape[-1]
        except (AttributeError, ValueError) as e:
            raise ValueError(
                "The latent dimension is read from the decoder's input "
                "shape; build the decoder (e.g. a Functional model with an "
                "Input) first."
            ) from e

    def build(self, input_shape):
        if not self.encoder.built:
            self.encoder.build(input_shape)
        if not self.decoder.built:
            self.decoder.build((None, self.latent_dim))
        self._build_likelihood()

    @property
    def metrics(self):
        return [
            self.loss_tracker,
            self.bound_tracker,
            self.reconstruction_tracker,
            self.kl_tracker,
        ]

    # The generative model and the posterior.

    def encode(self, x) -> tuple:
        """q(z|x)'s parameters `(mean, log_var)`, each `[B, D]`, float32."""
        return gaussian_parameters(self.encoder(x), "encoder")

    def decode(self, z):
        """The likelihood's parameters for z `[..., D]`: `[..., *event]`."""
        return call_on_samples(self.decoder, z)

    def call(self, x, training=None):
        mean, _ = self.encode(x)
        return self.likelihood.mean(self.decoder(mean))

    def _reparameterize(self, mean, log_var, num_samples, seed, stop=False):
        """The op, with the model's implementation: `(z, kl, log_ratio)`."""
        return vae_ops.reparameterize_kl(
            mean,
            log_var,
            num_samples=num_samples,
            seed=seed,
            stop_log_ratio_param_grad=stop,
            implementation=self.implementation,
        )

    def _posterior_samples(self, x, num_samples, seed, stop=False):
        """Encode, sample, decode: `(mean, log_var, kl, log_ratio, log_px_z)`.

        `x` is the step's inputs (see `_unpack_data`). A hook of the
        subclasses: every bound, the training and evaluation steps and
        `log_likelihood` draw their samples here.
        """
        x = ops.convert_to_tensor(x)
        self._check_shapes(x)
        mean, log_var = self.encode(x)
        z, kl, log_ratio = self._reparameterize(
            mean, log_var, num_samples, seed, stop
        )
        log_px_z = self.likelihood.log_prob(x, self.decode(z))
        return mean, log_var, kl, log_ratio, log_px_z

    # Training.

    def _beta(self):
        if isinstance(self.beta, _Schedule):
            optimizer = getattr(self, "optimizer", None)
            step = 0 if optimizer is None else optimizer.iterations
            return ops.cast(self.beta(step), "float32")
        return self.beta

    def _objective(self, x, sample_weight, seed):
        """Losses to minimize and the per-example terms to report: encode,
        sample, decode, bound (`keras_vae.bounds.training_losses`).

        Returns `(losses, report)`: `losses` maps `"loss"` (and, for DReG,
        `"encoder_loss"`) to scalars; `report` holds the per-example bound,
        reconstruction and KL.
        """
        stop = bounds.stops_log_ratio_param_grad(self.gradient_estimator)
        mean, log_var, kl, log_ratio, log_px_z = self._posterior_samples(
            x, self.num_samples, seed, stop=stop
        )
        losses, report = bounds.training_losses(
            log_px_z,
            log_ratio,
            kl,
            mean,
            log_var,
            objective=self.objective,
            gradient_estimator=self.gradient_estimator,
            kl_estimator=self.kl,
            beta=self._beta(),
            free_bits=self.free_bits,
            sample_weight=sample_weight,
        )
        if self.losses:
            regularization = ops.sum(
                [ops.cast(v, "float32") for v in self.losses]
            )
            losses = {k: v + regularization for k, v in losses.items()}
        return losses, report

    @property
    def inference_networks(self) -> list:
        """The networks of q(z|x), which DReG trains on its encoder loss."""
        return [self.encoder]

    def compute_gradients(self, x, sample_weight=None, seed=None):
        """Gradients of the training loss for one batch, without applying them.

        `x` is the batch's inputs: the examples, or for a
        `ConditionalVAE` the pair `(x, condition)`.

        With DReG the encoder's variables get the gradient of the encoder
        loss, the others that of the loss, from the same samples. On JAX
        the gradients are taken statelessly at the variables' current
        values (the model's seed generator still advances).

        Returns:
            `(gradients, variables, losses, report)`: `variables` are
            `self.trainable_variables`; `losses` holds `"loss"` (and, for
            DReG, `"encoder_loss"`), `report` the per-example bound,
            reconstruction and KL.
        """
        # The backend's trainer (keras_vae.training) takes the gradients.
        return super().compute_gradients(x, sample_weight, seed)

    # Inference.

    def _seeds(self, seed):
        """The model's generator, or a fresh one starting at `seed`."""
        if seed is None:
            return self.seed_generator
        return seeding.seed_generator(seed)

    def sample(
        self, n: int, seed: seeding.SeedLike = None, draw: bool = False
    ):
        """Draws from the generative model: z ~ N(0, I), then x given z.

        Args:
            n: the number of samples.
            seed: a seed (int or pair) for reproducible samples; `None`
                uses the model's seed generator.
            draw: if False, returns the likelihood's mean E[x|z]; if True, a
                draw x ~ p(x|z). z is the op's noise, the same on every
                backend for the same seed (and so the means are); the draw
                of x is the backend's own.

        Returns:
            `[n, *event]`.
        """
        n = check_count(n, "n")
        seeds = self._seeds(seed)
        # z from the op's noise, which is the same on every backend.
        zeros = ops.zeros((n, self.latent_dim), "float32")
        z, _, _ = self._reparameterize(zeros, zeros, 1, seeds.next())
        return self._likelihood_output(self.decoder(z[0]), seeds, draw)

    def _likelihood_output(self, decoder_output, seeds, draw):
        """A draw x ~ p(x|z) (`draw=True`) or the likelihood's mean."""
        if draw:
            return self.likelihood.sample(decoder_output, seed=seeds)
        return self.likelihood.mean(decoder_output)

    def reconstruct(
        self, x, num_samples: int = 1, seed: seeding.SeedLike = None
    ):
        """K reconstructions per example, E[x|z_k] for z_k ~ q(z|x).

        Returns:
            `[num_samples, B, *event]`; the samples are not averaged.
        """
        num_samples = check_samples_at_once(num_samples)
        mean, log_var = self.encode(x)
        z, _, _ = self._reparameterize(
            mean, log_var, num_samples, self._seeds(seed).next()
        )
        return self.likelihood.mean(self.decode(z))

    def elbo(
        self, x, num_samples: int = 1, seed: seeding.SeedLike = None
    ):
        """The K-sample ELBO of each example, `[B]`, with the model's KL."""
        num_samples = check_samples_at_once(num_samples)
        _, _, kl, log_ratio, log_px_z = self._posterior_samples(
            x, num_samples, self._seeds(seed).next()
        )
        if self.kl == "mc":
            return bounds.elbo_mc(log_px_z, log_ratio)
        return bounds.elbo(log_px_z, kl)

    def iwae_bound(
        self, x, num_samples: int = 1, seed: seeding.SeedLike = None
    ):
        """The K-sample importance-weighted bound of each example, `[B]`."""
        num_samples = check_samples_at_once(num_samples)
        _, _, _, log_ratio, log_px_z = self._posterior_samples(
            x, num_samples, self._seeds(seed).next()
        )
        return bounds.iwae_bound(log_px_z, log_ratio)

    def posterior_means(self, x) -> list:
        """The posterior mean of each stochastic layer: `[mean]`, `[B, D]`,
        for this one-layer model."""
        return [self.encode(x)[0]]

    def kl_divergence(self, x, seed: seeding.SeedLike = None):
        """KL(q(z|x) || p(z)) of each example, `[B]`: the analytic KL to
        N(0, I) here (`seed` is unused); models whose KL has no closed form
        estimate it from samples."""
        mean, log_var = self.encode(x)
        return ops.sum(bounds.kl_per_dimension(mean, log_var), axis=-1)

    def _chunk_logsumexp(self, x, num_samples, seed):
        """`logsumexp_s log w_s` of one chunk of `num_samples` importance
        samples, `[B]`: what `log_likelihood` runs compiled
        (`_compiled_chunk_logsumexp`)."""
        _, _, _, log_ratio, log_px_z = self._posterior_samples(
            x, num_samples, seed
        )
        return ops.logsumexp(bounds.log_weights(log_px_z, log_ratio), axis=0)

    def log_likelihood(
        self,
        x,
        num_samples: int = 5000,
        batch_size: Optional[int] = None,
        chunk_size: int = 500,
        seed: seeding.SeedLike = None,
        verbose="auto",
    ):
        """Importance-sampling estimate of log p(x) per example.

        Burda et al. 2015: `log (1/S) sum_s p(x, z_s) / q(z_s|x)` with
        z_s ~ q(z|x), which tends to log p(x) from below as S grows. The S
        samples are drawn `chunk_size` at a time for `batch_size` examples
        at a time, and combined with a logsumexp across chunks.

        **Memory** is bounded by one chunk of one batch, and does not grow
        with N: with the default `batch_size=None` the batch is the largest
        whose chunk of decoder activations (estimated from the decoder's
        layer output sizes, times `chunk_size`) fits in
        `LOG_LIKELIHOOD_MEMORY_BUDGET` bytes (256 MiB), at least 1 example.
        For the MLP preset on 28x28 images that is 37 examples per batch;
        measured peak memory: BENCHMARKS.md.

        Args:
            x: the examples: an array `[N, ...]`, or a `tf.data.Dataset` or
                any iterable of batches (of x, or of `(x, ...)` tuples).
            num_samples: S, the importance samples per example.
            batch_size: examples per batch (batches of a dataset are split
                to it); `None` derives it from the memory budget.
            chunk_size: samples drawn at a time.
            seed: a seed (int or pair); `None` uses the model's seed
                generator.
            verbose: `"auto"` shows a progress bar when there are 10 or more
                chunks to run (always for datasets); 0 or 1 force it off or
                on.

        Returns:
            `[N]` float32 estimates; `[0]` for no examples.
        """
        num_samples = check_count(num_samples)
        chunk_size = check_count(chunk_size, "chunk_size")
        if batch_size is None:
            batch_size = self._log_likelihood_batch_size(chunk_size)
        batch_size = check_count(batch_size, "batch_size")
        chunks = [chunk_size] * (num_samples // chunk_size)
        if num_samples % chunk_size:
            chunks.append(num_samples % chunk_size)

        if _is_batch_iterable(x):
            batches = self._sub_batches(x, batch_size)
            steps = None
        else:
            # x is the model's inputs: an array, or a structure of arrays
            # with one batch axis (a conditional model's (x, condition)).
            inputs = keras.tree.map_structure(ops.convert_to_tensor, x)
            batches = _slices(inputs, batch_size)
            n = _batch_size(inputs)
            steps = -(-n // batch_size) * len(chunks)
        if verbose == "auto":
            verbose = int(steps is None or steps >= 10)
        progbar = keras.utils.Progbar(steps, verbose=verbose, unit_name="chunk")
        seeds = self._seeds(seed)
        chunk_logsumexp = self._compiled_chunk_logsumexp()
        estimates = []
        for x_batch in batches:
            if not estimates:
                self._check_inputs(x_batch)
            chunk_lse = []
            for k in chunks:
                chunk_lse.append(
                    chunk_logsumexp(x_batch, k, seeds.next())
                )
                progbar.add(1)
            estimates.append(
                bounds.combine_log_mean_exp(ops.stack(chunk_lse), num_samples)
            )
        if not estimates:
            return ops.zeros((0,), "float32")
        return ops.concatenate(estimates, axis=0)

    def _sub_batches(self, batches, batch_size):
        """The inputs of each batch, split to at most `batch_size`
        examples."""
        for batch in batches:
            inputs = self._unpack_data(batch)[0]
            yield from _slices(
                keras.tree.map_structure(ops.convert_to_tensor, inputs),
                batch_size,
            )

    def _log_likelihood_batch_size(self, chunk_size):
        """Examples per batch whose chunk fits LOG_LIKELIHOOD_MEMORY_BUDGET."""
        per_sample = _activation_floats(self.decoder)
        # The likelihood's terms and the log-weights: about two more outputs.
        per_sample += 2 * _event_size(self.decoder)
        per_example = 4 * per_sample * chunk_size
        return max(1, LOG_LIKELIHOOD_MEMORY_BUDGET // max(per_example, 1))

    # Serialization.

    def export(
        self,
        filepath,
        format="tf_saved_model",
        verbose=None,
        input_signature=None,
        **kwargs,
    ):
        """Exports `call` (x to its reconstruction) for inference.

        As `keras.Model.export`; the input signature defaults to the
        encoder's input, so a model that has not been called yet exports
        too. Import `keras_vae` before loading a SavedModel whose graph
        holds the fused op (e.g. an encoder with a `Sampling` layer).
        A SavedModel needs TensorFlow installed, on any backend.
        """
        if format == "tf_saved_model":
            try:
                _tf()
            except ImportError as e:
                raise ImportError(
                    "VAE.export writes a TensorFlow SavedModel, which needs "
                    "TensorFlow installed (pip install tensorflow), on any "
                    "backend"
                ) from e
        if input_signature is None:
            try:
                shape = self.encoder.input_shape
                dtype = self.encoder.inputs[0].dtype
            except (AttributeError, ValueError, IndexError):
                shape = None
            if isinstance(shape, tuple):
                input_signature = [_tf().TensorSpec(shape, dtype)]
        return super().export(
            filepath,
            format=format,
            verbose=verbose,
            input_signature=input_signature,
            **kwargs,
        )

    def get_config(self):
        beta = self.beta
        if isinstance(beta, _Schedule):
            beta = keras.optimizers.schedules.serialize(beta)
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "likelihood": likelihoods_module.serialize(self.likelihood),
            "num_samples": self.num_samples,
            "objective": self.objective,
            "gradient_estimator": self.gradient_estimator,
            "kl": self.kl,
            "beta": beta,
            "free_bits": self.free_bits,
            "seed": self.seed,
            "implementation": self.implementation,
            "stop_on_nonfinite": self.stop_on_nonfinite,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # A subclass may hold its encoders under another key.
        for key in ("encoder", "decoder"):
            if key in config:
                config[key] = keras.saving.deserialize_keras_object(
                    config[key]
                )
        if isinstance(config["beta"], dict):
            config["beta"] = keras.optimizers.schedules.deserialize(
                config["beta"]
            )
        return cls(**config)


def call_on_samples(network, z, condition=None):
    """`network` applied to z `[..., B, D]` with any number of leading
    sample axes: they are folded into the one batch axis networks take, and
    unfolded in each output (`[..., B, *event]`). A `condition` `[B, ...]`
    goes beside z (`network([z, condition])`), repeated for every sample."""
    z = ops.convert_to_tensor(z)
    if len(z.shape) <= 2:
        return network(z if condition is None else [z, condition])
    leading = ops.shape(z)[:-1]
    inputs = ops.reshape(z, (-1, ops.shape(z)[-1]))
    if condition is not None:
        event = tuple(ops.shape(condition)[1:])
        repeated = ops.broadcast_to(condition, (*leading, *event))
        inputs = [inputs, ops.reshape(repeated, (-1, *event))]
    outputs = network(inputs)
    return keras.tree.map_structure(
        lambda t: ops.reshape(t, (*leading, *ops.shape(t)[1:])), outputs
    )


def _is_tf_dataset(x):
    # Only a program that imported TensorFlow can hold a tf.data.Dataset.
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(x, tf.data.Dataset)


def _is_tensor(x):
    """A tensor of the active backend, or a TensorFlow one (from tf.data)."""
    tf = sys.modules.get("tensorflow")
    return ops.is_tensor(x) or (tf is not None and isinstance(x, tf.Tensor))


def _rank(x):
    """x's rank, or None when unknown (a TensorFlow graph)."""
    return getattr(x.shape, "rank", len(x.shape))


def _is_batch_iterable(x):
    """Whether x is a dataset or iterable of batches rather than an array."""
    if _is_tf_dataset(x):
        return True
    if isinstance(x, (np.ndarray, list, tuple)) or hasattr(
        x, "shape"
    ):
        return False
    return hasattr(x, "__iter__")


def _batch_size(inputs):
    """The examples in `inputs`, a tensor or a structure of tensors."""
    return int(keras.tree.flatten(inputs)[0].shape[0])


def _slices(inputs, batch_size):
    """`inputs` (a tensor or a structure of them) in slices of at most
    `batch_size` examples."""
    for start in range(0, _batch_size(inputs), batch_size):
        yield keras.tree.map_structure(
            lambda t: t[start : start + batch_size], inputs
        )


def gaussian_parameters(outputs, network):
    """A network's `(mean, log_var)` as float32, checked to be a pair."""
    if not isinstance(outputs, (list, tuple)) or len(outputs) != 2:
        raise ValueError(
            f"{network} must return (mean, log_var), got "
            f"{type(outputs).__name__} of "
            f"{len(outputs) if isinstance(outputs, (list, tuple)) else 1}"
        )
    return tuple(ops.cast(t, "float32") for t in outputs)


def _event_size(decoder):
    try:
        return int(np.prod(decoder.output_shape[1:]))
    except (AttributeError, ValueError, TypeError):
        return 1


def _activation_floats(decoder):
    """Floats of all the decoder's layer outputs for one z (an estimate of
    its activation memory); the output size for a non-Functional decoder."""
    total = 0
    for layer in getattr(decoder, "layers", []):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if all(d is not None for d in shape[1:]):
            total += int(np.prod(shape[1:]))
    return total or _event_size(decoder)


def _output_layer(model):
    """The layer that computes `model`'s output, looking through layers that
    only reshape it."""
    reshaping = (
        keras.layers.Reshape,
        keras.layers.Flatten,
        keras.layers.Permute,
    )
    for layer in reversed(getattr(model, "layers", [])):
        if not isinstance(layer, reshaping):
            return layer
    return None


