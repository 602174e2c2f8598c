"""JAX and PyTorch users need no TensorFlow: the model, `fit`, the
datasets, evaluation and the command line run with its import blocked.

`make test` runs this directory under KERAS_BACKEND=tensorflow, jax and
torch; these tests are for JAX and PyTorch (on TensorFlow there is nothing
to prove). Each runs a fresh process through
`tests/helpers/without_tensorflow.py`, which answers any import of
TensorFlow (or of tf_keras, TensorFlow Probability, TensorBoard) as a
missing package does, and fails the process if one was imported.
"""

import json

import keras
import numpy as np
import pytest

from helpers.processes import SCRIPTS_DIR, python_env, run_python

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(
    BACKEND == "tensorflow", reason="runs the JAX and PyTorch backends")
RUNNER = str(SCRIPTS_DIR / "without_tensorflow.py")

PROGRAM = '''
import sys
import numpy as np
import keras
import keras_vae
from keras_vae import datasets
from helpers import tiny_vae

try:
    import tensorflow  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    sys.exit("tensorflow imported")

data = datasets.load("digits", batch_size=50, limit=200)
assert isinstance(data.train, datasets.ArrayBatches)
first = [np.array(data.train[0])]
data.train.on_epoch_end()
second = np.array(data.train[0])
# Dynamic binarization: binary pixels, drawn afresh each epoch.
assert set(np.unique(second)) <= {0.0, 1.0}
assert not np.array_equal(first[0], second)

vae = tiny_vae.build(num_samples=2)
vae.compile(keras.optimizers.Adam(1e-3))
history = vae.fit(tiny_vae.data(), epochs=2, batch_size=8, verbose=0)
assert np.all(np.isfinite(history.history["loss"]))
log_px = vae.log_likelihood(tiny_vae.data()[:4], num_samples=10, verbose=0)
print("log_likelihood", float(np.mean(log_px)))
vae.save(sys.argv[1])
loaded = keras.models.load_model(sys.argv[1])
np.testing.assert_array_equal(np.asarray(loaded.sample(3, seed=1)),
                              np.asarray(vae.sample(3, seed=1)))
try:
    vae.export(sys.argv[1] + ".savedmodel")
except ImportError as e:
    print("export:", e)
from keras_vae.callbacks import ImageGrids
try:
    ImageGrids(log_dir="logs")
except ImportError as e:
    print("ImageGrids:", e)
'''


def without_tensorflow(args, cwd):
    return run_python([RUNNER, *args], env=python_env(), cwd=cwd)


def test_fit_datasets_and_saving_without_tensorflow(tmp_path):
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    result = without_tensorflow(
        [str(program), str(tmp_path / "vae.keras")], cwd=tmp_path)
    assert "log_likelihood" in result.stdout
    # What truly needs TensorFlow says so, in one line.
    assert ("export: VAE.export writes a TensorFlow SavedModel, which needs "
            "TensorFlow installed (pip install tensorflow), on any backend"
            in result.stdout), result.stdout
    assert ("ImageGrids: ImageGrids(log_dir=...) writes TensorBoard images "
            "with tf.summary, which needs TensorFlow installed (pip install "
            "tensorflow); directory= needs none" in result.stdout)


def test_command_line_without_tensorflow(tmp_path):
    run = tmp_path / "run"
    for args in (
        ["train", "--dataset", "digits", "--epochs", "1", "--limit", "100",
         "--plot-every", "1", "--output", str(run)],
        ["sample", str(run), "--num", "4", "--output",
         str(tmp_path / "samples.png")],
        ["evaluate", str(run), "--limit", "10", "--ll-samples", "8",
         "--iwae-k", "2", "--verbose", "0"],
    ):
        without_tensorflow(["-m", "keras_vae", *args], cwd=tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["evaluation"]["log_likelihood"]["mean"])
    assert (tmp_path / "samples.png").is_file()
    assert (run / "images" / "samples-epoch1.png").is_file()
