"""The wheel, installed as a user would: without TensorFlow or a compiler.

`make install-test` builds the wheel and names it in KERAS_VAE_WHEEL; without
it these tests are skipped. Each backend gets a fresh virtual environment
with that one framework, whose PATH holds no compiler. pip installs the
wheel there from binaries only, and the tests run the fused op, a training
step and the command line in it.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
WHEEL = os.environ.get("KERAS_VAE_WHEEL", "")
WHEEL = str(pathlib.Path(WHEEL).resolve()) if WHEEL else ""

# The venvs choose their own backends; TensorFlow, here, is the oracle.
pytestmark = [
    pytest.mark.skipif(
        not WHEEL, reason="needs KERAS_VAE_WHEEL (make install-test builds it)"),
    pytest.mark.backend_independent,
]

# What a compiler-less machine lacks; none may be found on the venv's PATH.
_BUILD_TOOLS = ("cc", "gcc", "c++", "g++", "clang", "cmake", "nvcc")
# Variables kept from this environment: pip's configuration (its indexes
# and links) and the BLAS settings of this machine.
_KEPT_PREFIXES = ("PIP_", "OPENBLAS_")

_OP_SCRIPT = """
import importlib.util, json, sys
import keras
import numpy as np
from keras_vae import ops
mean = np.linspace(-1, 1, 12, dtype="float32").reshape(3, 4)
log_var = np.linspace(-0.5, 0.5, 12, dtype="float32").reshape(3, 4)
z, kl, log_ratio = ops.reparameterize_kl(mean, log_var, num_samples=2,
                                         seed=[1, 2])
print(json.dumps({
    "build_info": ops.build_info(),
    "tensorflow": importlib.util.find_spec("tensorflow") is not None,
    "z": keras.ops.convert_to_numpy(z).tolist(),
    "kl": keras.ops.convert_to_numpy(kl).tolist(),
    "log_ratio": keras.ops.convert_to_numpy(log_ratio).tolist(),
}))
"""

_FIT_SCRIPT = """
import json
import keras
import numpy as np
import keras_vae
from keras_vae import presets
encoder, decoder = presets.build("mlp", (8, 8), latent_dim=2)
model = keras_vae.VAE(encoder, decoder, num_samples=2, seed=0)
model.compile(keras.optimizers.Adam(1e-3))
x = (np.random.default_rng(0).uniform(size=(32, 8, 8)) < 0.5).astype("float32")
before = model.get_weights()
history = model.fit(x, batch_size=32, epochs=1, verbose=0)
changed = any(not np.array_equal(a, b)
              for a, b in zip(before, model.get_weights()))
print(json.dumps({"loss": history.history["loss"][0], "changed": changed}))
"""


class Venv:
    """A fresh virtual environment for one Keras backend."""

    def __init__(self, path, backend):
        self.path = path
        self.backend = backend
        self.env = {k: v for k, v in os.environ.items()
                    if k.startswith(_KEPT_PREFIXES)}
        self.env.update(PATH=str(path / "bin"), HOME=str(path / "home"),
                        KERAS_BACKEND=backend, TMPDIR=str(path / "tmp"))
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        (path / "home").mkdir()
        (path / "tmp").mkdir()

    def run(self, *args, check=True, cwd=None):
        proc = subprocess.run(
            [str(a) for a in args], env=self.env, cwd=cwd or self.path,
            capture_output=True, text=True, timeout=900)
        if check:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    def pip_install(self, *requirements):
        """Installs from wheels only, at the versions the project pins."""
        return self.run(
            self.path / "bin" / "python", "-m", "pip", "install", "-q",
            "--only-binary=:all:", "-c", ROOT / "requirements.txt",
            *requirements)

    def python(self, script):
        proc = self.run(self.path / "bin" / "python", "-c", script)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def keras_vae(self, *args, check=True):
        return self.run(self.path / "bin" / "keras-vae", *args, check=check)

    def size_mb(self):
        total = sum(f.stat().st_size for f in self.path.rglob("*")
                    if f.is_file() and not f.is_symlink())
        return total / 2**20


@pytest.fixture(scope="module", params=["jax", "torch"])
def installed(request, tmp_path_factory):
    """A venv with the wheel and one backend (its extra and `datasets`),
    but not `plots`, which a test adds after checking its absence."""
    backend = request.param
    venv = Venv(tmp_path_factory.mktemp(f"venv-{backend}"), backend)
    start = time.perf_counter()
    venv.pip_install(f"{WHEEL}[{backend},datasets]")
    seconds = time.perf_counter() - start
    print(f"\ninstall-test: {backend}: wheel with [{backend},datasets] "
          f"installed in {seconds:.0f} s, venv {venv.size_mb():.0f} MB")
    return venv


def test_no_tensorflow_and_no_compiler(installed):
    for tool in _BUILD_TOOLS:
        assert shutil.which(tool, path=installed.env["PATH"]) is None, tool
    proc = installed.run(installed.path / "bin" / "python", "-c",
                         "import tensorflow", check=False)
    assert "No module named 'tensorflow'" in proc.stderr


def test_fused_op_runs_the_compiled_kernels(installed):
    import tensorflow as tf

    out = installed.python(_OP_SCRIPT)
    assert not out["tensorflow"]
    info = out["build_info"]
    assert info["backend"] == installed.backend
    assert info["loaded"] and info["cpu"], info
    if installed.backend == "jax":
        # The typed-FFI handlers, built against jaxlib's headers, load into
        # this jaxlib: XLA-compiled functions run the kernels too.
        assert info["ffi_handlers"] and info["xla"], info
    # The noise contract, with TensorFlow (here, not there) as the oracle.
    mean = np.linspace(-1, 1, 12, dtype="float32").reshape(3, 4)
    log_var = np.linspace(-0.5, 0.5, 12, dtype="float32").reshape(3, 4)
    eps = tf.random.stateless_normal([2, 3, 4], seed=[1, 2]).numpy()
    z = mean + np.exp(0.5 * log_var) * eps
    kl = 0.5 * np.sum(np.exp(log_var) + mean**2 - 1 - log_var, axis=-1)
    log_ratio = np.sum(-0.5 * eps**2 - 0.5 * log_var + 0.5 * z**2, axis=-1)
    np.testing.assert_allclose(out["z"], z, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["kl"], kl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["log_ratio"], log_ratio, rtol=1e-5,
                               atol=1e-5)


def test_one_fit_step(installed):
    out = installed.python(_FIT_SCRIPT)
    assert np.isfinite(out["loss"]) and out["changed"], out


def test_command_line_names_the_missing_extra_then_trains(installed, tmp_path):
    run_dir = tmp_path / "run"
    train = ("train", "--dataset", "digits", "--epochs", "1",
             "--batch-size", "100", "--seed", "0", "--verbose", "0",
             "--output", run_dir)
    proc = installed.keras_vae(*train, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "keras-vae train: error: keras-vae train needs matplotlib, which is "
        'not installed: pip install "keras-vae[plots]"'), proc.stderr
    assert not run_dir.exists()

    installed.pip_install(f"{WHEEL}[{installed.backend},datasets,plots]")
    installed.keras_vae(*train)
    assert (run_dir / "model.keras").is_file()
    assert (run_dir / "samples.png").is_file()
    installed.keras_vae("evaluate", run_dir, "--ll-samples", "10",
                        "--iwae-k", "5", "--limit", "100", "--verbose", "0")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics, metrics
    installed.keras_vae("sample", run_dir, "-n", "4", "--seed", "1",
                        "-o", tmp_path / "samples.png")
    assert (tmp_path / "samples.png").stat().st_size > 0
