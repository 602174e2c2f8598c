"""What the installed package carries: its type hints (PEP 561)."""

import inspect
import pathlib
import tomllib

import pytest

import keras_vae

pytestmark = pytest.mark.backend_independent

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_py_typed_is_shipped():
    assert (pathlib.Path(keras_vae.__file__).parent / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"][
        "keras_vae"]
    assert '"py.typed"' in (ROOT / "setup.py").read_text()


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
