"""Running Python in a fresh process, and a copy of the package to run there.

Subprocesses give a test what one process cannot: a TensorFlow configured
before it starts (logical devices, several workers), a process that may be
killed, or a package imported without its compiled libraries.
"""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import keras_vae

PACKAGE_DIR = Path(keras_vae.__file__).resolve().parent
SCRIPTS_DIR = Path(__file__).resolve().parent


def python_env(**overrides):
    """os.environ for a child Python: quiet, CPU-only, on the backend under
    test, and with the tests' helpers importable; `overrides` (None removes a
    variable) on top."""
    env = dict(os.environ)
    env.update(
        TF_CPP_MIN_LOG_LEVEL="2",
        KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "tensorflow"),
        CUDA_VISIBLE_DEVICES="-1",
        PYTHONPATH=os.pathsep.join(
            p for p in (str(SCRIPTS_DIR.parent), env.get("PYTHONPATH")) if p
        ),
    )
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_python(args, *, cwd=None, env=None, timeout=300, check=True):
    """Runs `python args...` and returns the CompletedProcess (text output).

    With check, a non-zero exit fails with the child's output in the message.
    """
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env or python_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"python {' '.join(map(str, args))} exited with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def start_python(args, *, cwd=None, env=None):
    """Starts `python args...` with stdout and stderr together in a pipe."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=env or python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_all(procs, timeout=300):
    """Waits for processes from start_python; returns (exit code, output) of
    each. Any still running when this returns or raises is killed."""
    try:
        results = []
        for p in procs:
            output = p.communicate(timeout=timeout)[0]
            results.append((p.returncode, output))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def copy_package_without_libraries(dest):
    """Copies the keras_vae package, less its compiled libraries, to
    dest/keras_vae; returns dest, the directory to put first on sys.path."""
    shutil.copytree(
        PACKAGE_DIR,
        Path(dest) / "keras_vae",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.dylib", "__pycache__"),
    )
    return Path(dest)


def compiled_libraries():
    """The compiled libraries in the package directory."""
    return sorted(p for p in PACKAGE_DIR.iterdir() if p.suffix in (".so", ".pyd", ".dylib"))


def free_ports(count):
    """`count` distinct TCP ports on 127.0.0.1 that are free right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
