"""Builds keras-vae's compiled parts with CMake, against the installed TensorFlow.

TensorFlow must already be importable in the build environment, since the op
is compiled against its headers and ABI: install with
``pip install --no-build-isolation .``.
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """One CMake build produces every extension; later calls find it done."""

    def build_extension(self, ext):
        if getattr(self, "_cmake_done", False):
            return
        self._cmake_done = True
        output_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        config = [
            f"-S{Path(__file__).parent.resolve()}",
            f"-B{build_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DKERAS_VAE_OUTPUT_DIR={output_dir}",
        ]
        jobs = str(os.cpu_count() or 1)
        subprocess.run(["cmake", *config], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)


setup(
    packages=find_packages(include=["keras_vae", "keras_vae.*"]),
    # PEP 561: the package's type hints are for users' type checkers too.
    package_data={"keras_vae": ["py.typed"]},
    ext_modules=[
        CMakeExtension("keras_vae._reparam_kl_ops"),
        CMakeExtension("keras_vae._reparam_kl_xla"),
        CMakeExtension("keras_vae._kernels"),
    ],
    cmdclass={"build_ext": CMakeBuild},
)
