"""Runs a Python program as on a machine without TensorFlow installed.

    python without_tensorflow.py PROGRAM [ARGS...]
    python without_tensorflow.py -m MODULE [ARGS...]

Every meta-path finder is wrapped so that it finds `tensorflow` (and the
packages built on it) nowhere: an import raises the ModuleNotFoundError of
a missing package and `importlib.util.find_spec` returns None, as where it
is not installed. Then PROGRAM runs as `python PROGRAM ARGS` would run it.
At exit the program must not have imported any of them.
"""

import atexit
import runpy
import sys

BLOCKED = ("tensorflow", "tf_keras", "tensorflow_probability", "tensorboard")


class WithoutTensorFlow:
    """A meta-path finder that finds what `finder` finds, except the
    blocked packages."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


def _check_none_imported():
    imported = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if imported:
        print(f"imported without TensorFlow: {imported}", file=sys.stderr)
        sys.stderr.flush()
        import os

        os._exit(3)


sys.meta_path[:] = [WithoutTensorFlow(f) for f in sys.meta_path]
atexit.register(_check_none_imported)
args = sys.argv[1:]
if args[0] == "-m":
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")
