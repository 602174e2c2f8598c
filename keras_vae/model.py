"""`VAE`: a variational autoencoder trained on the ELBO or the IWAE bound."""

import math

import keras
import tensorflow as tf
from keras import ops

from keras_vae import bounds
from keras_vae import likelihoods as likelihoods_module
from keras_vae import ops as vae_ops
from keras_vae import seeding
from keras_vae.checks import check_count
from keras_vae.checks import check_implementation
from keras_vae.layers.sampling import keras_jit_supported
from keras_vae.seeding import next_seed

OBJECTIVES = ("elbo", "iwae")
GRADIENT_ESTIMATORS = ("standard", "stl", "dreg")
KL_ESTIMATORS = ("analytic", "mc")
_Schedule = keras.optimizers.schedules.LearningRateSchedule


@keras.saving.register_keras_serializable(package="keras_vae")
class VAE(seeding.SavesSeedState, keras.Model):
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

    Inside an XLA-compiled step (`jit_compile=True`, the default on GPUs) the
    op's pure-TensorFlow reference implementation runs. Without a GPU the
    model declares `supports_jit=False`: Keras then trains it without XLA,
    on the compiled op, which measured level with XLA on CPU and keeps the
    documented noise (README, "XLA").

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
        **kwargs: `keras.Model` keyword arguments, such as `name`.

    Metrics (reset each epoch): `loss`; `elbo` or `iwae`, the bound;
    `reconstruction`, the expected log-likelihood `mean_k log p(x|z_k)`;
    `kl`, the analytic KL.

    Calling the model returns the reconstruction of x from the posterior
    mean, so `predict` works.

    Saving: `model.save("m.keras")` and `keras.models.load_model("m.keras")`
    need no `custom_objects` once `keras_vae` is imported. `model.export`
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        num_samples = check_count(num_samples)
        if objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {OBJECTIVES}, got {objective!r}"
            )
        if gradient_estimator not in GRADIENT_ESTIMATORS:
            raise ValueError(
                f"gradient_estimator must be one of {GRADIENT_ESTIMATORS}, "
                f"got {gradient_estimator!r}"
            )
        if gradient_estimator == "dreg" and objective != "iwae":
            raise ValueError(
                'gradient_estimator="dreg" needs objective="iwae", got '
                f"objective={objective!r}"
            )
        if kl not in KL_ESTIMATORS:
            raise ValueError(f"kl must be one of {KL_ESTIMATORS}, got {kl!r}")
        if not isinstance(beta, _Schedule):
            if isinstance(beta, bool) or not float(beta) >= 0.0:
                raise ValueError(
                    "beta must be a float >= 0 or a keras.optimizers."
                    f"schedules.LearningRateSchedule, got {beta!r}"
                )
            beta = float(beta)
        if not float(free_bits) >= 0.0:
            raise ValueError(f"free_bits must be >= 0, got {free_bits!r}")
        free_bits = float(free_bits)
        if free_bits > 0.0 and (
            objective != "elbo"
            or kl != "analytic"
            or gradient_estimator != "standard"
        ):
            raise ValueError(
                "free_bits needs objective='elbo', kl='analytic' and "
                "gradient_estimator='standard', got objective="
                f"{objective!r}, kl={kl!r}, "
                f"gradient_estimator={gradient_estimator!r}"
            )
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
        self.seed_generator = seeding.seed_generator(seed)
        self.supports_jit = keras_jit_supported()

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.bound_tracker = keras.metrics.Mean(name=objective)
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        # Build now when the encoder's input shape is known, so that the
        # state (a learned likelihood scale) exists before weights load and
        # the model can be saved or exported before it has seen data.
        try:
            input_shape = encoder.input_shape
        except (AttributeError, ValueError):
            input_shape = None
        if input_shape is not None:
            self.build(input_shape)

    # Structure.

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

    def encode(self, x):
        """q(z|x)'s parameters `(mean, log_var)`, each `[B, D]`, float32."""
        outputs = self.encoder(x)
        if not isinstance(outputs, (list, tuple)) or len(outputs) != 2:
            raise ValueError(
                "encoder must return (mean, log_var), got "
                f"{type(outputs).__name__} of "
                f"{len(outputs) if isinstance(outputs, (list, tuple)) else 1}"
            )
        return tuple(ops.cast(t, "float32") for t in outputs)

    def decode(self, z):
        """The likelihood's parameters for z `[..., D]`: `[..., *event]`."""
        z = ops.convert_to_tensor(z)
        if len(z.shape) <= 2:
            return self.decoder(z)
        # The decoder sees one batch axis: fold the sample axes into it.
        flat = self.decoder(tf.reshape(z, [-1, tf.shape(z)[-1]]))
        shape = tf.concat([tf.shape(z)[:-1], tf.shape(flat)[1:]], axis=0)
        return tf.reshape(flat, shape)

    def call(self, x, training=None):
        mean, _ = self.encode(x)
        return self.likelihood.mean(self.decoder(mean))

    def _posterior_samples(self, x, num_samples, seed, stop=False):
        """Encode, sample, decode: `(mean, log_var, kl, log_ratio, log_px_z)`."""
        mean, log_var = self.encode(x)
        z, kl, log_ratio = vae_ops.reparameterize_kl(
            mean,
            log_var,
            num_samples=num_samples,
            seed=seed,
            stop_log_ratio_param_grad=stop,
            implementation=self.implementation,
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
        """Losses to minimize and the per-example terms to report.

        Returns `(losses, report)`: `losses` maps `"loss"` (and, for DReG,
        `"encoder_loss"`) to scalars; `report` holds the per-example bound,
        reconstruction and KL.
        """
        stop = self.gradient_estimator != "standard"
        mean, log_var, kl, log_ratio, log_px_z = self._posterior_samples(
            x, self.num_samples, seed, stop=stop
        )
        beta = self._beta()
        batch_mean = lambda v: _weighted_mean(v, sample_weight)  # noqa: E731
        reconstruction = ops.mean(log_px_z, axis=0)
        losses = {}
        if self.objective == "iwae":
            bound = bounds.iwae_bound(log_px_z, log_ratio)
            losses["loss"] = -batch_mean(
                bounds.iwae_bound(log_px_z, beta * log_ratio)
            )
            if self.gradient_estimator == "dreg":
                losses["encoder_loss"] = -batch_mean(
                    bounds.dreg_surrogate(log_px_z, beta * log_ratio)
                )
        elif self.kl == "mc" or self.gradient_estimator == "stl":
            bound = bounds.elbo_mc(log_px_z, log_ratio)
            losses["loss"] = -batch_mean(
                bounds.elbo_mc(log_px_z, beta * log_ratio)
            )
        else:
            bound = bounds.elbo(log_px_z, kl)
            if self.free_bits > 0.0:
                kl_term = bounds.free_bits_kl(
                    bounds.kl_per_dimension(mean, log_var), self.free_bits
                )
            else:
                kl_term = batch_mean(kl)
            losses["loss"] = -batch_mean(reconstruction) + beta * kl_term
        if self.losses:
            regularization = ops.sum(
                [ops.cast(v, "float32") for v in self.losses]
            )
            losses = {k: v + regularization for k, v in losses.items()}
        report = {"bound": bound, "reconstruction": reconstruction, "kl": kl}
        return losses, report

    def _update_metrics(self, loss, report, sample_weight):
        batch_size = ops.shape(report["bound"])[0]
        self.loss_tracker.update_state(loss, sample_weight=batch_size)
        for tracker, values in (
            (self.bound_tracker, report["bound"]),
            (self.reconstruction_tracker, report["reconstruction"]),
            (self.kl_tracker, report["kl"]),
        ):
            tracker.update_state(values, sample_weight=sample_weight)
        return _replica_logs({m.name: m.result() for m in self.metrics})

    def _scaled(self, loss):
        # Keras's convention under tf.distribute: each replica's loss is
        # divided by the replica count, and the gradients are summed.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = loss / replicas
        # Before compile there is no optimizer, hence no loss scaling.
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None:
            return loss
        return optimizer.scale_loss(loss)

    def compute_gradients(self, x, sample_weight=None, seed=None):
        """Gradients of the training loss for one batch, without applying them.

        Returns:
            `(gradients, variables, losses, report)`; see `train_step`.
        """
        if seed is None:
            seed = next_seed(self.seed_generator)
        dreg = self.gradient_estimator == "dreg"
        with tf.GradientTape(persistent=dreg) as tape:
            losses, report = self._objective(x, sample_weight, seed)
            scaled = {k: self._scaled(v) for k, v in losses.items()}
        if not dreg:
            variables = self.trainable_variables
            gradients = tape.gradient(scaled["loss"], variables)
        else:
            # Each loss only trains its own side of the model.
            encoder_ids = {id(v) for v in self.encoder.trainable_variables}
            encoder_vars = self.encoder.trainable_variables
            other_vars = [
                v for v in self.trainable_variables if id(v) not in encoder_ids
            ]
            variables = encoder_vars + other_vars
            gradients = tape.gradient(
                scaled["encoder_loss"], encoder_vars
            ) + tape.gradient(scaled["loss"], other_vars)
            del tape
        return gradients, variables, losses, report

    def train_step(self, data):
        x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        gradients, variables, losses, report = self.compute_gradients(
            x, sample_weight
        )
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._update_metrics(losses["loss"], report, sample_weight)

    def test_step(self, data):
        x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        losses, report = self._objective(
            x, sample_weight, next_seed(self.seed_generator)
        )
        return self._update_metrics(losses["loss"], report, sample_weight)

    # Inference.

    def _seeds(self, seed):
        """The model's generator, or a fresh one starting at `seed`."""
        if seed is None:
            return self.seed_generator
        return seeding.seed_generator(seed)

    def sample(self, n, seed=None, draw=False):
        """Draws from the generative model: z ~ N(0, I), then x given z.

        Args:
            n: the number of samples.
            seed: a seed (int or pair) for reproducible samples; `None`
                uses the model's seed generator.
            draw: if False, returns the likelihood's mean E[x|z]; if True, a
                draw x ~ p(x|z).

        Returns:
            `[n, *event]`.
        """
        n = check_count(n, "n")
        seeds = self._seeds(seed)
        z = keras.random.normal((n, self.latent_dim), seed=seeds)
        decoder_output = self.decoder(z)
        if draw:
            return self.likelihood.sample(decoder_output, seed=seeds)
        return self.likelihood.mean(decoder_output)

    def reconstruct(self, x, num_samples=1, seed=None):
        """K reconstructions per example, E[x|z_k] for z_k ~ q(z|x).

        Returns:
            `[num_samples, B, *event]`; the samples are not averaged.
        """
        num_samples = check_count(num_samples)
        mean, log_var = self.encode(x)
        z, _, _ = vae_ops.reparameterize_kl(
            mean,
            log_var,
            num_samples=num_samples,
            seed=self._seeds(seed).next(),
            implementation=self.implementation,
        )
        return self.likelihood.mean(self.decode(z))

    def elbo(self, x, num_samples=1, seed=None):
        """The K-sample ELBO of each example, `[B]`, with the model's KL."""
        num_samples = check_count(num_samples)
        _, _, kl, log_ratio, log_px_z = self._posterior_samples(
            x, num_samples, self._seeds(seed).next()
        )
        if self.kl == "mc":
            return bounds.elbo_mc(log_px_z, log_ratio)
        return bounds.elbo(log_px_z, kl)

    def iwae_bound(self, x, num_samples=1, seed=None):
        """The K-sample importance-weighted bound of each example, `[B]`."""
        num_samples = check_count(num_samples)
        _, _, _, log_ratio, log_px_z = self._posterior_samples(
            x, num_samples, self._seeds(seed).next()
        )
        return bounds.iwae_bound(log_px_z, log_ratio)

    @tf.function(reduce_retracing=True)
    def _chunk_logsumexp(self, x, num_samples, seed):
        _, _, _, log_ratio, log_px_z = self._posterior_samples(
            x, num_samples, seed
        )
        return ops.logsumexp(bounds.log_weights(log_px_z, log_ratio), axis=0)

    def log_likelihood(
        self,
        x,
        num_samples=5000,
        batch_size=None,
        chunk_size=500,
        seed=None,
        verbose="auto",
    ):
        """Importance-sampling estimate of log p(x) per example.

        Burda et al. 2015: `log (1/S) sum_s p(x, z_s) / q(z_s|x)` with
        z_s ~ q(z|x), which tends to log p(x) from below as S grows. The S
        samples are drawn `chunk_size` at a time and combined with a
        logsumexp across chunks, so memory is bounded by
        `chunk_size * batch_size` decoder outputs.

        Args:
            x: the examples, `[N, ...]`.
            num_samples: S, the importance samples per example.
            batch_size: examples per batch; `None` for all at once.
            chunk_size: samples drawn at a time.
            seed: int seed; `None` uses the model's seed generator.
            verbose: `"auto"` shows a progress bar when there are 10 or more
                chunks to run; 0 or 1 force it off or on.

        Returns:
            `[N]` float32 estimates.
        """
        num_samples = check_count(num_samples)
        chunk_size = check_count(chunk_size, "chunk_size")
        x = ops.convert_to_tensor(x)
        n = int(x.shape[0])
        batch_size = n if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunks = [chunk_size] * (num_samples // chunk_size)
        if num_samples % chunk_size:
            chunks.append(num_samples % chunk_size)
        starts = range(0, n, batch_size)
        steps = len(starts) * len(chunks)
        if verbose == "auto":
            verbose = int(steps >= 10)
        progbar = keras.utils.Progbar(steps, verbose=verbose, unit_name="chunk")
        seeds = self._seeds(seed)
        estimates = []
        for start in starts:
            x_batch = x[start : start + batch_size]
            chunk_lse = []
            for k in chunks:
                chunk_lse.append(
                    self._chunk_logsumexp(x_batch, k, seeds.next())
                )
                progbar.add(1)
            estimates.append(
                bounds.combine_log_mean_exp(ops.stack(chunk_lse), num_samples)
            )
        return ops.concatenate(estimates, axis=0)

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
        """
        if input_signature is None:
            try:
                shape = self.encoder.input_shape
                dtype = self.encoder.inputs[0].dtype
            except (AttributeError, ValueError, IndexError):
                shape = None
            if isinstance(shape, tuple):
                input_signature = [tf.TensorSpec(shape, dtype)]
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
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        if isinstance(config["beta"], dict):
            config["beta"] = keras.optimizers.schedules.deserialize(
                config["beta"]
            )
        return cls(**config)


def _replica_logs(logs):
    """The step's logs in the shape Keras can reduce across replicas.

    Under a MultiWorkerMirroredStrategy with several workers, Keras reduces
    every log with `strategy.reduce("MEAN", value, axis=0)`, which fails on
    scalars (tensorflow/tensorflow#72388). A `[1]` tensor reduces to the
    same mean over the replicas, as a scalar.
    """
    strategy = tf.distribute.get_strategy()
    if (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    ):
        return {name: ops.reshape(value, [1]) for name, value in logs.items()}
    return logs


def _weighted_mean(values, sample_weight):
    if sample_weight is None:
        return ops.mean(values)
    weight = ops.cast(ops.reshape(sample_weight, ops.shape(values)), "float32")
    return ops.sum(values * weight) / ops.sum(weight)
