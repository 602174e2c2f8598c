"""The README's Python blocks run as written, in order, in one namespace.

The block marked `<!-- readme-test: data -->` loads a full dataset; here it
is replaced by a few random binary images of the same shape, so that the
other blocks, unchanged, run in seconds. The blocks run on every backend but
the one about TensorFlow's own machinery (`tf.distribute`), which runs on
TensorFlow only.
"""

import pathlib
import re

import keras
import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
DATA_MARK = "<!-- readme-test: data -->"
SMALL_DATA = """
import keras
import numpy as np
import keras_vae

rng = np.random.default_rng(0)
x_train = (rng.uniform(size=(64, 28, 28, 1)) < 0.3).astype("float32")
x_test = (rng.uniform(size=(3, 28, 28, 1)) < 0.3).astype("float32")
y_train, y_test = np.arange(64) % 10, np.arange(3)
latent_dim = 2
"""
# What marks a block about TensorFlow's machinery.
TENSORFLOW_MACHINERY = "tf.distribute."


def readme_blocks():
    """(is the data block, code) of each ```python block, in order."""
    text = README.read_text()
    pattern = re.compile(r"(<!-- readme-test: data -->\n)?```python\n(.*?)```",
                         re.S)
    return [(bool(m.group(1)), m.group(2)) for m in pattern.finditer(text)]


def test_readme_blocks_run(tmp_path, monkeypatch):
    blocks = readme_blocks()
    assert len(blocks) >= 4 and sum(is_data for is_data, _ in blocks) == 1
    about_tensorflow = [code for _, code in blocks
                        if TENSORFLOW_MACHINERY in code]
    assert len(about_tensorflow) == 1
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for is_data, code in blocks:
        if (code in about_tensorflow
                and keras.backend.backend() != "tensorflow"):
            continue
        if is_data:
            # The real block, at least, is the data it claims to be.
            assert 'datasets.load("fashion_mnist"' in code
            code = SMALL_DATA
        exec(compile(code, str(README), "exec"), namespace)
    log_px = np.asarray(namespace["log_px"])
    assert log_px.shape == (3,) and np.all(np.isfinite(log_px))
    assert np.all(log_px < 0)
    for name in ("encoder.keras", "decoder.keras", "vae.keras", "classes.png"):
        assert (tmp_path / name).is_file()
    assert np.asarray(namespace["bags"]).shape == (8, 28, 28, 1)
    assert np.asarray(namespace["log_px_given_c"]).shape == (3,)
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == sorted(
        f"{kind}-epoch{e}.png" for kind in ("samples", "reconstructions")
        for e in (1, 2, 3))
    # What the README says of the example's own VAE class: it does not save
    # as a whole.
    with pytest.raises(Exception):
        namespace["example"].save(tmp_path / "example.keras")
        keras.models.load_model(tmp_path / "example.keras")
