"""Keras callbacks that show a VAE learning: image grids during training."""

from __future__ import annotations

import os
from typing import Optional

import keras
import numpy as np

from keras_vae import plotting

__all__ = ["ImageGrids"]


class ImageGrids(keras.callbacks.Callback):
    """Writes grids of prior samples and reconstructions every N epochs.

    After every `every`-th epoch (and after the last epoch trained, when
    that was not one of them) it decodes `num_samples` draws from the prior
    (with a fixed seed, so the grids of successive epochs show the same
    codes) and reconstructs `x`, and writes them:

    - as PNG files `samples-epoch{E}.png` and `reconstructions-epoch{E}.png`
      in `directory`, when given;
    - as TensorBoard images `samples` and `reconstructions` at step E, under
      `log_dir`, when given (for example the `log_dir` of a
      `keras.callbacks.TensorBoard` callback).

    Args:
        x: inputs to reconstruct, `[B, ...]` (a few, e.g. 8), or `None` for
            no reconstructions.
        directory: where to write the PNG files, or `None`.
        log_dir: a TensorBoard log directory, or `None`. TensorBoard's
            images are written with `tf.summary`: TensorFlow must be
            installed, on any backend.
        every: epochs between grids, an int >= 1.
        num_samples: prior samples per grid.
        seed: seed of the prior samples and of the reconstructions' noise.

    Example:

    >>> vae.fit(x_train, epochs=20, callbacks=[
    ...     keras_vae.callbacks.ImageGrids(x_test[:8], directory="grids",
    ...                                    log_dir="logs", every=5)])
    """

    def __init__(
        self,
        x: Optional[np.ndarray] = None,
        directory: Optional[str] = None,
        log_dir: Optional[str] = None,
        every: int = 1,
        num_samples: int = 64,
        seed: int = 0,
    ):
        super().__init__()
        from keras_vae.checks import check_count

        if directory is None and log_dir is None:
            raise ValueError("ImageGrids needs directory=, log_dir= or both")
        if log_dir is not None:
            try:
                import tensorflow  # noqa: F401
            except ImportError as e:
                raise ImportError(
                    "ImageGrids(log_dir=...) writes TensorBoard images with "
                    "tf.summary, which needs TensorFlow installed (pip "
                    "install tensorflow); directory= needs none"
                ) from e
        self.x = None if x is None else np.asarray(x)
        self.directory = directory
        self.log_dir = log_dir
        self.every = check_count(every, "every")
        self.num_samples = check_count(num_samples, "num_samples")
        self.seed = seed
        self._writer = None
        self._written_epoch = None
        self._last_epoch = None

    def grids(self):
        """`{"samples": [n, *event], "reconstructions": [2B, *event]}`:
        prior samples, and each input above its reconstruction."""
        out = {
            "samples": np.asarray(
                self.model.sample(self.num_samples, seed=self.seed)
            )
        }
        if self.x is not None:
            recon = np.asarray(
                self.model.reconstruct(self.x, num_samples=1, seed=self.seed)
            )[0]
            out["reconstructions"] = np.concatenate([self.x, recon])
        return out

    def write(self, epoch: int):
        """Writes the grids for `epoch` (counted from 1)."""
        columns = {
            "samples": int(np.ceil(np.sqrt(self.num_samples))),
            "reconstructions": None if self.x is None else len(self.x),
        }
        titles = {
            "samples": f"prior samples, epoch {epoch}",
            "reconstructions": f"inputs (top) and reconstructions, "
            f"epoch {epoch}",
        }
        for name, images in self.grids().items():
            if self.directory is not None:
                os.makedirs(self.directory, exist_ok=True)
                plotting.save_grid(
                    os.path.join(self.directory, f"{name}-epoch{epoch}.png"),
                    images,
                    columns=columns[name],
                    title=titles[name],
                )
            if self.log_dir is not None:
                self._summary(name, images, columns[name], epoch)
        self._written_epoch = epoch

    def _summary(self, name, images, columns, epoch):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, "images")
            )
        rows = -(-len(images) // columns)
        canvas = plotting.tile(np.clip(images, 0.0, 1.0), rows, columns)
        if canvas.ndim == 2:
            canvas = canvas[..., None]
        with self._writer.as_default():
            tf.summary.image(name, canvas[None], step=epoch)
        self._writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch + 1
        if (epoch + 1) % self.every == 0:
            self.write(epoch + 1)

    def on_train_end(self, logs=None):
        last = self._last_epoch
        if last is not None and self._written_epoch != last:
            self.write(last)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
