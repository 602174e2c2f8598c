"""keras-vae: variational autoencoders for Keras 3 on a fused TensorFlow op."""

from keras_vae import ops
from keras_vae import bounds, datasets, layers, likelihoods, presets
from keras_vae.model import VAE

__version__ = "0.1.0"
