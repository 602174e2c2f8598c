"""Imports of keras_vae from sys.path alone, for the subprocesses that put a
copy of the package first on it (`processes.copy_package_without_libraries`).

An editable install adds an import hook that resolves the package's
submodules in the source tree; for a copy without the compiled libraries it
would find them there, which an installed copy never could.
"""

import sys
from importlib.machinery import PathFinder


def drop_editable_import_hooks():
    """Removes the editable install's import hooks when a keras_vae is on
    sys.path (else the hook is how the package is found, and stays)."""
    if PathFinder.find_spec("keras_vae") is None:
        return
    sys.meta_path[:] = [
        finder for finder in sys.meta_path
        if "__editable__" not in getattr(finder, "__module__", "")
    ]
