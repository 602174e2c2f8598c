"""`HierarchicalVAE`: a VAE with two or more stochastic layers."""

import keras
from keras import ops

from keras_vae import bounds
from keras_vae import seeding
from keras_vae.checks import check_count
from keras_vae.model import VAE
from keras_vae.model import call_on_samples
from keras_vae.model import gaussian_parameters


@keras.saving.register_keras_serializable(package="keras_vae")
class HierarchicalVAE(VAE):
    """A VAE whose latent code is a chain of L >= 2 Gaussian layers.

    The generative model (Burda et al. 2015, section 5) is
    `p(z_L) p(z_{L-1}|z_L) ... p(z_1|z_2) p(x|z_1)` with `p(z_L) = N(0, I)`
    and each `p(z_l|z_{l+1})` a Gaussian whose mean and log-variance a
    network of z_{l+1} outputs; the posterior is
    `q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1})`.

    Every layer draws through the fused op. Its `log_ratio`, against
    N(0, I), becomes `log q(z_l|.) - log p(z_l|z_{l+1})` by adding
    `log N(z_l; 0, I) - log p(z_l|z_{l+1})`
    (`keras_vae.bounds.log_ratio_to_prior`); the top layer keeps it as it
    is. The log-weight of a sample is
    `log p(x|z_1) - sum_l log_ratio_l`, and every bound of `VAE` (ELBO,
    IWAE; standard, STL and DReG gradients) and `log_likelihood` take it
    as they take one layer's.

    Only the top layer has an analytic KL to N(0, I): with `kl="analytic"`
    the KL term is that analytic KL of `q(z_L|z_{L-1})`, averaged over the
    samples of the layers below, plus the Monte Carlo
    `log q(z_l|.) - log p(z_l|z_{l+1})` of the others. STL and DReG stop
    the gradient through q's parameters in every layer's `log q`, keeping
    its paths through the samples (for the layers above the first, also
    the path through the sample of the layer below, which the network's
    input carries).

    Each layer's samples are one per sample of the layer below: K samples
    of `(z_1, ..., z_L)` per example. The noise of layer l comes from
    `keras_vae.seeding.layer_seed(seed, l)`.

    Args:
        encoders: L models: `encoders[0]` maps x to `(mean, log_var)` of
            q(z_1|x), each `[B, D_1]`; `encoders[l]` maps z_l `[B, D_l]` to
            those of q(z_{l+1}|z_l), `[B, D_{l+1}]`.
        decoder: a model mapping z_1 `[B, D_1]` to the likelihood's
            parameters.
        priors: L - 1 models: `priors[l-1]` maps z_{l+1} `[B, D_{l+1}]` to
            `(mean, log_var)` of p(z_l|z_{l+1}), each `[B, D_l]`.
        likelihood: as for `VAE`.
        **kwargs: the other arguments of `VAE` (`num_samples`,
            `objective`, `gradient_estimator`, `kl`, `beta`, `seed`, ...);
            `free_bits` is not supported (it floors an analytic per-dimension
            KL, which only the top layer has).

    Example (the paper's two-layer model, also
    `keras_vae.presets.build_hierarchical`):

    >>> vae = keras_vae.HierarchicalVAE(
    ...     [x_to_z1, z1_to_z2], z1_to_x, [z2_to_z1],
    ...     num_samples=50, objective="iwae", gradient_estimator="dreg")
    >>> vae.compile(keras.optimizers.Adam(1e-3))
    >>> vae.fit(x_train, epochs=10)
    >>> vae.log_likelihood(x_test, num_samples=5000)   # [N]
    """

    def __init__(self, encoders, decoder, priors, likelihood="bernoulli",
                 **kwargs):
        encoders, priors = list(encoders), list(priors)
        if len(encoders) < 2:
            raise ValueError(
                "encoders must hold one model per stochastic layer, at "
                f"least 2, got {len(encoders)}; use keras_vae.VAE for one "
                "layer"
            )
        if len(priors) != len(encoders) - 1:
            raise ValueError(
                f"priors must hold one model per layer below the top, "
                f"{len(encoders) - 1} for {len(encoders)} encoders, got "
                f"{len(priors)}"
            )
        if kwargs.get("free_bits", 0.0):
            raise ValueError(
                "free_bits is not supported by HierarchicalVAE: it floors "
                "the analytic KL of each latent dimension, which only the "
                "top layer has"
            )
        _check_chain(encoders, decoder, priors)
        super().__init__(encoders[0], decoder, likelihood, **kwargs)
        self.upper_encoders = encoders[1:]
        self.priors = priors
        self._build_from_networks()

    # Structure.

    @property
    def encoders(self) -> list:
        return [self.encoder, *self.upper_encoders]

    @property
    def inference_networks(self) -> list:
        return self.encoders

    @property
    def latent_dims(self) -> tuple:
        """`(D_1, ..., D_L)`, read from the decoder's and the priors' input
        shapes."""
        return (self.latent_dim,) + tuple(
            prior.input_shape[-1] for prior in self.priors
        )

    def _build_from_networks(self):
        # VAE's constructor calls this before the upper layers exist.
        if hasattr(self, "priors"):
            super()._build_from_networks()

    def build(self, input_shape):
        super().build(input_shape)
        dims = self.latent_dims
        for encoder, below in zip(self.upper_encoders, dims):
            if not encoder.built:
                encoder.build((None, below))
        for prior, above in zip(self.priors, dims[1:]):
            if not prior.built:
                prior.build((None, above))

    # The generative model and the posterior.

    def _draw(self, mean, log_var, num_samples, seed, layer, stop=False):
        """The op on layer `layer`'s parameters, with that layer's seed."""
        return self._reparameterize(
            mean, log_var, num_samples, seeding.layer_seed(seed, layer), stop
        )

    def _posterior_samples(self, x, num_samples, seed, stop=False):
        """Encode and sample layer by layer, then decode:
        `(mean, log_var, kl, log_ratio, log_px_z)` with q(z_1|x)'s
        parameters, the KL estimate `[B]` and the log-ratio of the whole
        chain `[K, B]`."""
        x = ops.convert_to_tensor(x)
        self._check_shapes(x)
        mean, log_var = self.encode(x)
        z, _, log_ratio = self._draw(mean, log_var, num_samples, seed, 0, stop)
        z_first = z
        log_ratio_sum = 0.0
        for layer, (encoder, prior) in enumerate(
            zip(self.upper_encoders, self.priors), start=1
        ):
            upper_mean, upper_log_var = gaussian_parameters(
                call_on_samples(encoder, z), f"encoders[{layer}]"
            )
            z_upper, top_kl, upper_log_ratio = self._draw(
                upper_mean, upper_log_var, 1, seed, layer
            )
            z_upper, upper_log_ratio = z_upper[0], upper_log_ratio[0]
            if stop:
                upper_log_ratio = _log_ratio_at_frozen_parameters(
                    encoder, z, z_upper
                )
            prior_mean, prior_log_var = gaussian_parameters(
                call_on_samples(prior, z_upper), f"priors[{layer - 1}]"
            )
            log_ratio_sum += bounds.log_ratio_to_prior(
                log_ratio, z, prior_mean, prior_log_var
            )
            z, log_ratio = z_upper, upper_log_ratio
        log_ratio_sum += log_ratio
        # The top layer's analytic KL replaces its Monte Carlo term.
        kl = ops.mean(log_ratio_sum - log_ratio + top_kl, axis=0)
        log_px_z = self.likelihood.log_prob(x, self.decode(z_first))
        return mean, log_var, kl, log_ratio_sum, log_px_z

    def kl_divergence(self, x, seed: seeding.SeedLike = None):
        """An estimate of KL(q(z_1..z_L|x) || p(z_1..z_L)) per example,
        `[B]`, from one sample of the chain: the top layer's KL analytic,
        the others Monte Carlo."""
        _, _, kl, _, _ = self._posterior_samples(
            x, 1, self._seeds(seed).next()
        )
        return kl

    def sample(self, n: int, seed: seeding.SeedLike = None,
               draw: bool = False):
        """Ancestral draws from the generative model: z_L ~ N(0, I), then
        z_l ~ p(z_l|z_{l+1}) down to z_1, then x given z_1 (as `VAE.sample`,
        whose arguments it takes)."""
        n = check_count(n, "n")
        seeds = self._seeds(seed)
        step_seed = seeds.next()
        top = len(self.priors)
        zeros = ops.zeros((n, self.latent_dims[-1]), "float32")
        z, _, _ = self._draw(zeros, zeros, 1, step_seed, top)
        z = z[0]
        for layer in range(top - 1, -1, -1):
            prior_mean, prior_log_var = gaussian_parameters(
                self.priors[layer](z), f"priors[{layer}]"
            )
            z, _, _ = self._draw(prior_mean, prior_log_var, 1, step_seed, layer)
            z = z[0]
        return self._likelihood_output(self.decoder(z), seeds, draw)

    def posterior_means(self, x) -> list:
        """The posterior means of every layer, `[[B, D_1], ..., [B, D_L]]`,
        each layer's taken at the mean of the layer below (what active units
        are counted on)."""
        mean, _ = self.encode(x)
        means = [mean]
        for layer, encoder in enumerate(self.upper_encoders, start=1):
            mean, _ = gaussian_parameters(encoder(mean), f"encoders[{layer}]")
            means.append(mean)
        return means

    # Serialization.

    def get_config(self):
        config = super().get_config()
        config.pop("encoder")
        config.pop("free_bits")
        serialize = keras.saving.serialize_keras_object
        config["encoders"] = [serialize(e) for e in self.encoders]
        config["priors"] = [serialize(p) for p in self.priors]
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        for key in ("encoders", "priors"):
            config[key] = [deserialize(c) for c in config[key]]
        return super().from_config(config)


def _log_ratio_at_frozen_parameters(encoder, z_below, z):
    """`log q(z|z_below) - log N(z; 0, I)` with the gradient stopped
    through the encoder's weights but not through z_below or z: what STL
    and DReG keep of a layer above the first."""
    frozen = [ops.stop_gradient(v.value) for v in encoder.trainable_variables]
    fixed = [v.value for v in encoder.non_trainable_variables]

    def frozen_encoder(inputs):
        outputs, _ = encoder.stateless_call(frozen, fixed, inputs)
        return outputs

    mean, log_var = gaussian_parameters(
        call_on_samples(frozen_encoder, z_below), "an encoder"
    )
    return bounds.normal_log_prob(z, mean, log_var) - (
        bounds.standard_normal_log_prob(z)
    )


def _known_dim(shape):
    """The last entry of a Keras shape, or None where unknown."""
    if isinstance(shape, tuple) and shape and isinstance(shape[-1], int):
        return shape[-1]
    return None


def _gaussian_output_dims(network):
    """The sizes of a Gaussian network's `(mean, log_var)`, or None."""
    try:
        shapes = network.output_shape
    except (AttributeError, ValueError):
        return None
    if not isinstance(shapes, list) or len(shapes) != 2:
        return None
    return tuple(_known_dim(s) for s in shapes)


def _input_dim(network):
    try:
        return _known_dim(network.input_shape)
    except (AttributeError, ValueError):
        return None


def _check_chain(encoders, decoder, priors):
    """Raises, naming the network, where the layer sizes do not chain:
    encoders[l] outputs z_{l+1}, which encoders[l+1] and priors[l] take;
    priors[l-1] outputs z_l; the decoder takes z_1."""
    def describe(kind, index, network):
        return f"{kind}[{index}] ({getattr(network, 'name', 'a model')!r})"

    dims = []
    for index, encoder in enumerate(encoders):
        out = _gaussian_output_dims(encoder)
        if out is not None and None not in out and out[0] != out[1]:
            raise ValueError(
                f"{describe('encoders', index, encoder)} returns a mean of "
                f"size {out[0]} and a log-variance of size {out[1]}; they "
                "must be the same"
            )
        dims.append(None if out is None else out[0])
    checks = [(_input_dim(decoder), dims[0], "decoder", "takes inputs", 1)]
    for index, encoder in enumerate(encoders[1:], start=1):
        checks.append((_input_dim(encoder), dims[index - 1],
                       describe("encoders", index, encoder), "takes inputs",
                       index))
    for index, prior in enumerate(priors):
        checks.append((_input_dim(prior), dims[index + 1],
                       describe("priors", index, prior), "takes inputs",
                       index + 2))
        out = _gaussian_output_dims(prior)
        for found in (out or ()):
            checks.append((found, dims[index],
                           describe("priors", index, prior),
                           "returns (mean, log_var)", index + 1))
    for found, wanted, where, what, layer in checks:
        if found is not None and wanted is not None and found != wanted:
            raise ValueError(
                f"The layer sizes do not chain: {where} {what} of size "
                f"{found}, but z_{layer} has size {wanted} (the output of "
                f"encoders[{layer - 1}])"
            )
