"""What the installed package carries and asks for: its type hints (PEP 561),
its dependencies and extras, and the one-line error for a missing extra."""

import inspect
import pathlib
import subprocess
import sys
import tomllib

import pytest

import keras_vae
from keras_vae import _extras
from keras_vae import cli

pytestmark = pytest.mark.backend_independent

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_py_typed_is_shipped():
    assert (pathlib.Path(keras_vae.__file__).parent / "py.typed").is_file()
    # The wheel holds the package directory's files that git tracks.
    assert PYPROJECT["tool"]["scikit-build"]["wheel"]["packages"] == [
        "keras_vae"]
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "keras_vae/py.typed"],
        cwd=ROOT, capture_output=True)
    assert tracked.returncode == 0


def _names(requirements):
    return {r.split(";")[0].split("[")[0].split("=")[0].split(">")[0]
            .split("<")[0].strip() for r in requirements}


def test_core_needs_only_keras_and_numpy():
    assert _names(PYPROJECT["project"]["dependencies"]) == {"keras", "numpy"}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert _names(extras["tensorflow"]) == {"tensorflow"}
    assert _names(extras["jax"]) == {"jax", "jaxlib"}
    assert _names(extras["torch"]) == {"torch"}
    assert _names(extras["datasets"]) == {"scikit-learn"}
    assert _names(extras["plots"]) == {"matplotlib"}
    assert "pytest" in _names(extras["test"])
    # Building needs no framework: the TensorFlow op and the FFI handlers
    # are built when the build's Python has TensorFlow or jax.
    assert _names(PYPROJECT["build-system"]["requires"]) == {
        "scikit-build-core", "pybind11"}


def test_every_extra_module_is_installed_by_its_extra():
    extras = PYPROJECT["project"]["optional-dependencies"]
    distributions = {"tensorflow": "tensorflow", "jax": "jax",
                     "jaxlib": "jaxlib", "torch": "torch",
                     "sklearn": "scikit-learn", "matplotlib": "matplotlib"}
    assert set(_extras.EXTRAS) == set(distributions)
    for module, (_, extra) in _extras.EXTRAS.items():
        assert distributions[module] in _names(extras[extra]), module


def test_missing_extra_error_is_one_line_naming_the_extra():
    error = _extras.MissingExtraError("matplotlib", "plotting")
    assert str(error) == (
        'plotting needs matplotlib, which is not installed: '
        'pip install "keras-vae[plots]"')
    assert isinstance(error, ImportError) and error.extra == "plots"
    backend = _extras.MissingExtraError("jax.numpy", "this command")
    assert str(backend) == (
        'this command needs JAX, which is not installed: pip install '
        '"keras-vae[jax]", or choose an installed Keras backend with '
        'KERAS_BACKEND=tensorflow|torch')
    from_error = _extras.MissingExtraError.from_error(
        ModuleNotFoundError("No module named 'sklearn'", name="sklearn"),
        "the digits")
    assert from_error.extra == "datasets"
    # A module no extra provides is a broken install: no advice to give.
    assert _extras.MissingExtraError.from_error(
        ModuleNotFoundError("x", name="absl"), "x") is None
    assert _extras.MissingExtraError.from_error(ImportError("x"), "x") is None


def test_require_checks_without_importing(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(_extras.MissingExtraError, match=r"keras-vae\[plots\]"):
        _extras.require("plots", "plotting")
    _extras.require("datasets", "the digits")


def test_cli_names_a_missing_plots_extra_before_training(
        monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status = cli.main(["train", "--epochs", "1", "--output", str(tmp_path / "r")])
    assert status == 2
    assert capsys.readouterr().err == (
        "keras-vae train: error: keras-vae train needs matplotlib, which is "
        'not installed: pip install "keras-vae[plots]"\n')
    assert not (tmp_path / "r").exists()


def test_cli_names_a_missing_datasets_extra(monkeypatch, capsys, tmp_path):
    # Both names: an import finds a submodule already loaded by an earlier
    # test without looking at its package.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    status = cli.main(["train", "--dataset", "digits", "--epochs", "1",
                       "--output", str(tmp_path / "r")])
    assert status == 2
    assert capsys.readouterr().err == (
        "keras-vae train: error: this command needs scikit-learn, which is "
        'not installed: pip install "keras-vae[datasets]"\n')


@pytest.mark.tensorflow_only("the TensorFlow op's version check")
def test_op_is_refused_by_another_tensorflow_minor_version(
        monkeypatch, tmp_path):
    import tensorflow as tf

    from keras_vae.backend import tensorflow as tf_backend

    (tmp_path / "_build_config.json").write_text('{"tensorflow": "2.21.0"}')
    monkeypatch.setattr(tf_backend, "_PACKAGE_DIR", str(tmp_path))
    # Another patch release of the same minor version: the op loads.
    monkeypatch.setattr(tf, "__version__", "2.21.3")
    assert tf_backend._version_mismatch() is None
    monkeypatch.setattr(tf, "__version__", "2.22.0")
    message = tf_backend._version_mismatch()
    assert "built against TensorFlow 2.21.0" in message
    assert "TensorFlow 2.22.0 is installed" in message
    assert 'Install TensorFlow 2.21.* (pip install "keras-vae[tensorflow]")' in (
        message)


def test_public_functions_have_type_hints():
    from keras_vae import evaluation, saving, seeding

    for function in (
        keras_vae.VAE.log_likelihood,
        keras_vae.VAE.sample,
        keras_vae.VAE.reconstruct,
        keras_vae.VAE.elbo,
        keras_vae.VAE.iwae_bound,
        keras_vae.VAE.check_data,
        evaluation.evaluate_arrays,
        saving.load_model,
        seeding.normalize_seed,
        seeding.seed_generator,
    ):
        hints = inspect.signature(function)
        annotated = [p for p in hints.parameters.values()
                     if p.name != "self" and p.annotation is not p.empty]
        assert annotated or hints.return_annotation is not hints.empty, (
            function.__qualname__)
