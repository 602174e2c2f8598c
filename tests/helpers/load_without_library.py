"""Loads .keras files in a process whose keras_vae has no compiled library
(the caller puts a copy of the package without it first on sys.path), and
runs them.

    python load_without_library.py DIR

DIR holds sampling.keras (a Functional model with a Sampling layer),
vae.keras and x.npy; writes DIR/without_library.npz with both models'
outputs and prints the RuntimeWarnings raised, one a line.
"""

import sys
import warnings
from pathlib import Path

import keras
import numpy as np

from helpers.sys_path_only import drop_editable_import_hooks

drop_editable_import_hooks()
import keras_vae  # noqa: E402

directory = Path(sys.argv[1])
assert not keras_vae.ops.fused_available(), keras_vae.ops.build_info()
x = np.load(directory / "x.npy")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    sampling_model = keras.models.load_model(
        directory / "sampling.keras", safe_mode=True
    )
    vae = keras.models.load_model(directory / "vae.keras", safe_mode=True)
    z = keras.ops.convert_to_numpy(sampling_model(x))
    elbo = keras.ops.convert_to_numpy(vae.elbo(x, num_samples=3, seed=5))
np.savez(directory / "without_library.npz", z=z, elbo=elbo)
for w in caught:
    if issubclass(w.category, RuntimeWarning):
        print(f"RuntimeWarning: {w.message}")
