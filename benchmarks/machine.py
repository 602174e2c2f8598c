"""What the benchmarks ran on: CPU, cores, versions, how the op was built."""

import importlib.metadata
import os
import platform
import subprocess

import keras_vae

PACKAGES = ("tensorflow", "keras", "numpy", "tensorflow-probability")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16")


def _cpuinfo():
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit():
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_isa():
    """The vector instruction set the CPU kernels run on, if reported."""
    try:
        from keras_vae import _kernels

        return _kernels.cpu_isa()
    except (ImportError, AttributeError):
        return None


def describe():
    """A JSON-ready dict describing this machine and software."""
    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in PACKAGES},
        "keras_vae": keras_vae.__version__,
        "build_info": keras_vae.ops.build_info(),
        "kernel_cpu_isa": _cpu_isa(),
        "git_commit": _git_commit(),
    }
