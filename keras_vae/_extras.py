"""Optional dependencies, and the one-line error that names their extra.

keras-vae needs only Keras and NumPy. The rest comes with extras, e.g.
``pip install "keras-vae[jax,datasets,plots]"``:

- ``tensorflow``, ``jax``, ``torch``: the Keras backends;
- ``datasets``: scikit-learn, for the bundled digits;
- ``plots``: matplotlib, for the PNG grids of the command line.

>>> try:
...     import matplotlib
... except ModuleNotFoundError as error:
...     raise MissingExtraError.from_error(error, "plotting") from None
"""

import importlib.util

__all__ = ["EXTRAS", "MissingExtraError", "extra_for", "require"]

# Top-level module -> (distribution, extra that installs it).
EXTRAS = {
    "tensorflow": ("TensorFlow", "tensorflow"),
    "jax": ("JAX", "jax"),
    "jaxlib": ("JAX", "jax"),
    "torch": ("PyTorch", "torch"),
    "sklearn": ("scikit-learn", "datasets"),
    "matplotlib": ("matplotlib", "plots"),
}
_BACKENDS = ("tensorflow", "jax", "torch")


def extra_for(module_name):
    """The ``(distribution, extra)`` that provides a module, or None.

    Args:
        module_name: a module name, dotted or not (``"sklearn.datasets"``).
    """
    if not module_name:
        return None
    return EXTRAS.get(module_name.partition(".")[0])


class MissingExtraError(ImportError):
    """An optional dependency is not installed.

    The message is one line that names the extra to install, e.g.
    ``plotting needs matplotlib, which is not installed: pip install
    "keras-vae[plots]"``.

    Args:
        module_name: the missing module.
        purpose: what needed it, as the start of the sentence.
    """

    def __init__(self, module_name, purpose):
        distribution, extra = extra_for(module_name)
        message = (
            f"{purpose} needs {distribution}, which is not installed: "
            f'pip install "keras-vae[{extra}]"'
        )
        if extra in _BACKENDS:
            message += (
                ", or choose an installed Keras backend with KERAS_BACKEND="
                f"{'|'.join(b for b in _BACKENDS if b != extra)}"
            )
        super().__init__(message, name=module_name)
        self.extra = extra

    @classmethod
    def from_error(cls, error, purpose):
        """The error for a `ModuleNotFoundError`, or None when no extra
        provides the missing module (a broken install, not a missing extra).
        """
        if not isinstance(error, ModuleNotFoundError):
            return None
        if extra_for(error.name) is None:
            return None
        return cls(error.name, purpose)


def require(extra, purpose):
    """Raises `MissingExtraError` unless every module of `extra` is importable.

    Checks without importing, so that asking costs nothing.

    Args:
        extra: an extra's name, e.g. ``"plots"``.
        purpose: what needs it, as the start of the error's sentence.
    """
    for module_name, (_, provided_by) in EXTRAS.items():
        if provided_by == extra and importlib.util.find_spec(module_name) is None:
            raise MissingExtraError(module_name, purpose)
