"""keras-vae: variational autoencoders for Keras 3 on a fused TensorFlow op.

The package imports lazily: `import keras_vae` alone imports no framework, so
that the command line answers `--help` at once. Each submodule is imported on
first use (`keras_vae.layers`, `keras_vae.datasets`, ...). The serializable
classes that `keras.models.load_model` looks up by name (the layers, the
likelihoods, the models) are registered when `keras_vae` is imported after
Keras (`import keras` first, as usual), on first use of a model class, or by
`keras_vae.load_model`.
"""

import importlib
import os
import sys

__version__ = "0.1.0"

_LEGACY_KERAS_VALUES = ("1", "true", "yes", "on")
if os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in (
    _LEGACY_KERAS_VALUES
):
    # Under tf_keras, Keras 3 layers turn into TFOpLambda layers whose seed
    # is fixed when they are built: every call would draw the same noise.
    raise ImportError(
        "keras_vae needs Keras 3, but TF_USE_LEGACY_KERAS="
        f"{os.environ['TF_USE_LEGACY_KERAS']!r} selects tf_keras (Keras 2). "
        "Unset TF_USE_LEGACY_KERAS (or set it to 0) to use keras_vae."
    )

_SUBMODULES = (
    "bounds",
    "callbacks",
    "checks",
    "data_files",
    "datasets",
    "evaluation",
    "layers",
    "likelihoods",
    "ops",
    "plotting",
    "presets",
    "seeding",
)
_ATTRIBUTES = {
    "VAE": "keras_vae.model",
    "HierarchicalVAE": "keras_vae.hierarchical_vae",
    "ConditionalVAE": "keras_vae.conditional_vae",
    "load_model": "keras_vae.saving",
}
__all__ = [
    "VAE", "HierarchicalVAE", "ConditionalVAE", "load_model", *_SUBMODULES
]
_registered = False


def _register():
    """Imports the modules whose classes Keras deserializes by name."""
    global _registered
    if _registered:
        return
    import keras

    if not keras.__version__.startswith("3."):
        raise ImportError(
            f"keras_vae needs Keras 3, found keras {keras.__version__}"
        )
    _registered = True
    for module in (
        "layers", "likelihoods", "model", "hierarchical_vae", "conditional_vae"
    ):
        importlib.import_module(f"keras_vae.{module}")


def __getattr__(name):
    if name in _ATTRIBUTES:
        _register()
        return getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    if name in _SUBMODULES:
        # No registration here: the package's own modules import each other
        # through this path, and must not re-enter a half-imported module.
        return importlib.import_module(f"keras_vae.{name}")
    raise AttributeError(f"module 'keras_vae' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


if "keras" in sys.modules:
    _register()
