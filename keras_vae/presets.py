"""Architecture presets: encoder and decoder networks for image VAEs.

Keras is imported when a preset is built, so that the command line lists the
presets without importing a framework.

Each preset builds an encoder mapping images to `[mean, log_var]` of q(z|x)
and a decoder mapping latent codes to the logits of a Bernoulli distribution
over the pixels, shaped like the images.
"""

import numpy as np

PRESETS = ("mlp", "conv", "mlp2")
# Presets of `keras_vae.HierarchicalVAE`, built by `build_hierarchical`.
HIERARCHICAL_PRESETS = ("mlp2",)
DEFAULT_LATENT_DIMS = {"mlp": 50, "conv": 16, "mlp2": 50}
# Bounds on the training mean before taking its logit, so that pixels that
# are always 0 (or 1) in the training set get a large but finite bias.
_MEAN_CLIP = 1e-3


def build(preset, image_shape, latent_dim=None, train_mean=None):
    """Builds `(encoder, decoder)` for the named preset.

    Args:
        preset: `"mlp"`: the one-stochastic-layer model of Burda et al.
            (2015), two tanh hidden layers of 200 units on each side;
            `"conv"`: two stride-2 convolutions each side, for images whose
            height and width divide by 4.
        image_shape: shape of one image, e.g. `(28, 28, 1)`.
        latent_dim: dimension of z; defaults to 50 for `mlp` (as in the
            paper) and 16 for `conv`.
        train_mean: per-pixel mean of the training images, shaped like an
            image; the decoder's output bias starts at its logit, so that the
            untrained decoder predicts the average image. `None` leaves zeros.

    Returns:
        `(encoder, decoder)`, two functional `keras.Model`s.
    """
    image_shape, latent_dim = _check_arguments(preset, image_shape, latent_dim)
    if preset == "mlp":
        encoder, decoder = _mlp(image_shape, latent_dim)
    else:
        encoder, decoder = _conv(image_shape, latent_dim)
    _set_output_bias(decoder, image_shape, train_mean)
    return encoder, decoder


def build_conditional(
    preset, image_shape, num_classes, latent_dim=None, train_mean=None
):
    """Builds `(encoder, decoder)` of a class-conditional VAE.

    The networks of `build`'s preset, given the one-hot class label too:
    the encoder takes `[images, one_hot]` and concatenates the label to the
    flattened image (for `conv`, to the flattened feature maps); the
    decoder takes `[z, one_hot]` and concatenates it to z. For
    `keras_vae.ConditionalVAE(..., num_classes=num_classes)`.

    Args:
        preset, image_shape, latent_dim, train_mean: as for `build`.
        num_classes: the number of classes, the length of the one-hot
            labels.

    Returns:
        `(encoder, decoder)`, two functional `keras.Model`s of two inputs.
    """
    image_shape, latent_dim = _check_arguments(preset, image_shape, latent_dim)
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive integer, got {num_classes!r}"
        )
    if preset == "mlp":
        encoder, decoder = _mlp(image_shape, latent_dim, int(num_classes))
    else:
        encoder, decoder = _conv(image_shape, latent_dim, int(num_classes))
    _set_output_bias(decoder, image_shape, train_mean)
    return encoder, decoder


def build_hierarchical(image_shape, latent_dim=None, train_mean=None):
    """Builds `(encoders, decoder, priors)` of the `mlp2` preset, for
    `keras_vae.HierarchicalVAE`.

    Burda et al.'s (2015) model with two stochastic layers:
    x -> 200-200 -> z_1 (100) -> 100-100 -> z_2 (50) for q, and
    z_2 -> 100-100 -> z_1 -> 200-200 -> x for p, with a learned Gaussian
    p(z_1|z_2); tanh hidden layers.

    Args:
        image_shape: shape of one image, e.g. `(28, 28, 1)`.
        latent_dim: the top layer's dimension D_2 (default 50); the first
            layer has 2 * D_2.
        train_mean: as for `build`.
    """
    image_shape, top = _check_arguments(
        "mlp2", image_shape, latent_dim, hierarchical=True
    )
    first = 2 * top
    x_to_z1, z1_to_x = _mlp(image_shape, first)
    z1_to_z2 = _gaussian_mlp((first,), top, (100, 100), "encoder_2", "z_1")
    z2_to_z1 = _gaussian_mlp((top,), first, (100, 100), "prior_1", "z_2")
    _set_output_bias(z1_to_x, image_shape, train_mean)
    return [x_to_z1, z1_to_z2], z1_to_x, [z2_to_z1]


def _check_arguments(preset, image_shape, latent_dim, hierarchical=False):
    """The image shape and latent dimension, checked, as ints."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if (preset in HIERARCHICAL_PRESETS) != hierarchical:
        builder = "build_hierarchical" if not hierarchical else "build"
        raise ValueError(
            f"preset {preset!r} has {'several' if not hierarchical else 'one'}"
            f" stochastic layer(s): build it with {builder}"
        )
    image_shape = tuple(int(d) for d in image_shape)
    if latent_dim is None:
        latent_dim = DEFAULT_LATENT_DIMS[preset]
    if not isinstance(latent_dim, (int, np.integer)) or latent_dim < 1:
        raise ValueError(
            f"latent_dim must be a positive integer, got {latent_dim!r}"
        )
    return image_shape, int(latent_dim)


def _set_output_bias(decoder, image_shape, train_mean):
    """Starts the decoder's output bias at the logit of the training mean."""
    if train_mean is not None:
        train_mean = np.asarray(train_mean, dtype=np.float64)
        if train_mean.shape != image_shape:
            raise ValueError(
                f"train_mean has shape {train_mean.shape}, expected the "
                f"image shape {image_shape}"
            )
        bias = decoder.get_layer("logits").bias
        if bias.shape[0] != train_mean.size:
            # A convolutional output has one bias per channel.
            train_mean = train_mean.reshape(-1, bias.shape[0]).mean(axis=0)
        mean = np.clip(train_mean.reshape(-1), _MEAN_CLIP, 1 - _MEAN_CLIP)
        bias.assign((np.log(mean) - np.log1p(-mean)).astype(bias.dtype))


def _gaussian_mlp(input_shape, latent_dim, hidden, name, input_name):
    """A tanh MLP from `input_shape` to a Gaussian's `(mean, log_var)`."""
    import keras

    from keras_vae.layers import GaussianEncoderHead

    inputs = keras.Input(input_shape, name=input_name)
    h = inputs
    for i, units in enumerate(hidden):
        h = keras.layers.Dense(units, activation="tanh", name=f"hidden_{i}")(h)
    mean, log_var = GaussianEncoderHead(latent_dim, name="gaussian")(h)
    return keras.Model(inputs, [mean, log_var], name=name)


def _with_labels(num_classes, inputs, features):
    """`(inputs, features)`, with a one-hot label input concatenated to the
    features when `num_classes` is set."""
    if num_classes is None:
        return inputs, features
    import keras

    labels = keras.Input((num_classes,), name="labels")
    features = keras.layers.Concatenate(name="with_labels")(
        [features, labels]
    )
    return [inputs, labels], features


def _mlp(image_shape, latent_dim, num_classes=None, hidden=(200, 200)):
    import keras

    from keras_vae.layers import GaussianEncoderHead

    images = keras.Input(image_shape, name="images")
    inputs, h = _with_labels(
        num_classes, images, keras.layers.Flatten()(images)
    )
    for i, units in enumerate(hidden):
        h = keras.layers.Dense(units, activation="tanh", name=f"hidden_{i}")(h)
    mean, log_var = GaussianEncoderHead(latent_dim, name="posterior")(h)
    encoder = keras.Model(inputs, [mean, log_var], name="encoder")

    z = keras.Input((latent_dim,), name="z")
    inputs, h = _with_labels(num_classes, z, z)
    for i, units in enumerate(reversed(hidden)):
        h = keras.layers.Dense(units, activation="tanh", name=f"hidden_{i}")(h)
    logits = keras.layers.Dense(int(np.prod(image_shape)), name="logits")(h)
    logits = keras.layers.Reshape(image_shape)(logits)
    decoder = keras.Model(inputs, logits, name="decoder")
    return encoder, decoder


def _conv(
    image_shape, latent_dim, num_classes=None, filters=(32, 64),
    dense_units=256,
):
    if len(image_shape) != 3 or image_shape[0] % 4 or image_shape[1] % 4:
        raise ValueError(
            "the conv preset needs images of shape (height, width, channels) "
            f"with height and width divisible by 4, got {image_shape}"
        )
    import keras

    from keras_vae.layers import GaussianEncoderHead

    images = keras.Input(image_shape, name="images")
    h = images
    for i, f in enumerate(filters):
        h = keras.layers.Conv2D(
            f, 3, strides=2, padding="same", activation="relu", name=f"conv_{i}"
        )(h)
    inputs, h = _with_labels(num_classes, images, keras.layers.Flatten()(h))
    h = keras.layers.Dense(dense_units, activation="relu", name="dense")(h)
    mean, log_var = GaussianEncoderHead(latent_dim, name="posterior")(h)
    encoder = keras.Model(inputs, [mean, log_var], name="encoder")

    height, width, channels = image_shape
    z = keras.Input((latent_dim,), name="z")
    inputs, h = _with_labels(num_classes, z, z)
    h = keras.layers.Dense(dense_units, activation="relu", name="dense")(h)
    h = keras.layers.Dense(
        (height // 4) * (width // 4) * filters[-1], activation="relu",
        name="dense_to_maps",
    )(h)
    h = keras.layers.Reshape((height // 4, width // 4, filters[-1]))(h)
    for i, f in enumerate(reversed(filters)):
        h = keras.layers.Conv2DTranspose(
            f, 3, strides=2, padding="same", activation="relu",
            name=f"deconv_{i}",
        )(h)
    logits = keras.layers.Conv2D(channels, 3, padding="same", name="logits")(h)
    decoder = keras.Model(inputs, logits, name="decoder")
    return encoder, decoder
