"""`load_model`: `keras.models.load_model` with errors that say what is wrong."""

from __future__ import annotations

import os
import zipfile

import keras


def load_model(path: "str | os.PathLike", **kwargs) -> keras.Model:
    """Loads a `.keras` file saved from a model built with keras_vae.

    As `keras.models.load_model(path, **kwargs)`, with keras_vae's classes
    registered, and clear errors where Keras's mislead: a truncated or
    corrupt file gives a ValueError saying so (Keras reports "File not
    found" for a file that exists), a missing one a FileNotFoundError.

    Example:

    >>> vae = keras_vae.load_model("runs/demo/model.keras")
    """
    import keras_vae

    keras_vae._register()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such model file: {path}")
    if path.endswith(".keras"):
        problem = _archive_problem(path)
        if problem:
            raise ValueError(
                f"{path} is truncated or corrupt ({problem}); save the "
                "model again"
            )
    try:
        return keras.models.load_model(path, **kwargs)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(
            f"{path} is truncated or corrupt ({error}); save the model again"
        ) from error


def _archive_problem(path):
    """Why `path` is not an intact zip archive, or None."""
    if not zipfile.is_zipfile(path):
        return "not a complete zip archive"
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return str(error)
    if damaged is not None:
        return f"bad checksum of {damaged}"
    return None
