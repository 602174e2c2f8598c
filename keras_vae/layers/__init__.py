"""Keras layers for variational autoencoders."""

from keras_vae.layers.gaussian_encoder_head import GaussianEncoderHead
from keras_vae.layers.sampling import Sampling

__all__ = ["GaussianEncoderHead", "Sampling"]
