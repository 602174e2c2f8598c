"""`GaussianEncoderHead`: features to the parameters of a diagonal Gaussian."""

import keras
from keras import ops

from keras_vae.checks import check_count

DEFAULT_LOG_VAR_RANGE = (-30.0, 20.0)


@keras.saving.register_keras_serializable(package="keras_vae")
class GaussianEncoderHead(keras.layers.Layer):
    """Maps features to the mean and log-variance of q(z|x) = N(mean, var).

    Two affine maps of the input, one for the mean and one for the
    log-variance. The log-variance is clipped to `log_var_range` (by default
    [-30, 20]) so that `exp(log_var)` neither overflows nor underflows in
    float32 (exp(20) ~ 4.9e8); outside the range its gradient is zero.

    Under a mixed-precision policy, pass `dtype="float32"` to this layer to
    keep the posterior parameters in float32.

    Args:
        latent_dim: positive int, the dimension D of the latent code.
        log_var_range: `(low, high)` with `low < high`; the range that
            `log_var` is clipped to.
        kernel_initializer: initializer for both kernels.
        bias_initializer: initializer for both biases.
        kernel_regularizer: regularizer for both kernels.
        bias_regularizer: regularizer for both biases.
        kernel_constraint: constraint for both kernels.
        bias_constraint: constraint for both biases.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        `(..., input_dim)`.

    Output shape:
        A tuple `(mean, log_var)`, each `(..., latent_dim)`.

    Example:

    >>> features = keras.Input((64,))
    >>> mean, log_var = keras_vae.layers.GaussianEncoderHead(8)(features)
    >>> mean.shape
    (None, 8)
    """

    def __init__(
        self,
        latent_dim,
        log_var_range=DEFAULT_LOG_VAR_RANGE,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        latent_dim = check_count(latent_dim, "latent_dim")
        low, high = (float(v) for v in log_var_range)
        if not low < high:
            raise ValueError(
                "log_var_range must be (low, high) with low < high, got "
                f"{tuple(log_var_range)!r}"
            )
        self.latent_dim = latent_dim
        self.log_var_range = (low, high)
        dense_kwargs = dict(
            units=latent_dim,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            dtype=self.dtype_policy,
        )
        self.mean_dense = keras.layers.Dense(name="mean", **dense_kwargs)
        self.log_var_dense = keras.layers.Dense(name="log_var", **dense_kwargs)

    def build(self, input_shape):
        self.mean_dense.build(input_shape)
        self.log_var_dense.build(input_shape)

    def call(self, inputs):
        mean = self.mean_dense(inputs)
        log_var = ops.clip(self.log_var_dense(inputs), *self.log_var_range)
        return (mean, log_var)

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape[:-1]) + (self.latent_dim,)
        return (shape, shape)

    def get_config(self):
        config = super().get_config()
        config["latent_dim"] = self.latent_dim
        config["log_var_range"] = list(self.log_var_range)
        # Both Dense layers share these arguments; read them off one.
        for name, module in (
            ("kernel_initializer", keras.initializers),
            ("bias_initializer", keras.initializers),
            ("kernel_regularizer", keras.regularizers),
            ("bias_regularizer", keras.regularizers),
            ("kernel_constraint", keras.constraints),
            ("bias_constraint", keras.constraints),
        ):
            config[name] = module.serialize(getattr(self.mean_dense, name))
        return config
