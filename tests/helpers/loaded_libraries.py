"""Imports keras_vae, runs the op once, and prints as JSON where its
libraries came from: the package directory, whether the op is loaded, every
file of the package's libraries mapped into this process, and the warnings
raised."""

import json
import warnings
from pathlib import Path

from helpers.sys_path_only import drop_editable_import_hooks

drop_editable_import_hooks()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import keras_vae

    keras_vae.ops.reparameterize_kl([[0.5, -0.5]], [[0.1, 0.2]], 2, seed=[1, 2])

names = ("_reparam_kl_ops", "_kernels")
with open("/proc/self/maps") as maps:
    mapped = sorted(
        {line.split()[-1] for line in maps if any(n in line for n in names)}
    )
print(
    json.dumps(
        {
            "package_dir": str(Path(keras_vae.__file__).resolve().parent),
            "fused_available": keras_vae.ops.fused_available(),
            "mapped": mapped,
            "warnings": [
                f"{w.category.__name__}: {w.message}" for w in caught
                if issubclass(w.category, RuntimeWarning)
            ],
        }
    )
)
