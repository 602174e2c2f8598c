"""Security properties of the package.

- The op library is loaded from the package's own directory only: not from
  the current directory, not from a path an environment variable names.
- Nothing in the package downloads or evaluates code (a source scan, and a
  run with the network refused), and nothing deserializes lambdas: models
  save without any and load with Keras's safe_mode=True.
"""

import ast
import json
import shutil
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_vae
from helpers import tiny_vae
from helpers.processes import (
    PACKAGE_DIR,
    compiled_libraries,
    copy_package_without_libraries,
    python_env,
    run_python,
)

HELPERS = Path(__file__).resolve().parent / "helpers"

# Variables a loader could be tempted to consult; none may matter.
HOSTILE_PATH_VARIABLES = (
    "LD_LIBRARY_PATH",
    "KERAS_VAE_LIBRARY",
    "KERAS_VAE_LIBRARY_PATH",
    "KERAS_VAE_OP_LIBRARY",
    "TF_LIBRARY_PATH",
)


linux_only = pytest.mark.skipif(
    sys.platform != "linux", reason="reads /proc/self/maps"
)


def _plant(directory, sources):
    """Copies the given libraries into directory (a place they must not be
    loaded from) and returns the environment that points at it."""
    directory.mkdir(exist_ok=True)
    for source in sources:
        shutil.copy2(source, directory / source.name)
    return {name: str(directory) for name in HOSTILE_PATH_VARIABLES}


def _loaded_libraries(cwd, env):
    proc = run_python([str(HELPERS / "loaded_libraries.py")], cwd=cwd, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@linux_only
@pytest.mark.slow
def test_missing_library_is_not_taken_from_cwd_or_environment(tmp_path):
    """A working copy of the op library in the current directory and on
    every path variable is ignored when the package's own copy is missing."""
    libraries = compiled_libraries()
    if not any("_reparam_kl_ops" in p.name for p in libraries):
        pytest.skip("the op library is not built")
    site = copy_package_without_libraries(tmp_path / "site")
    planted = tmp_path / "planted"
    env = python_env(
        PYTHONPATH=f"{site}:{python_env()['PYTHONPATH']}",
        **_plant(planted, libraries),
    )
    report = _loaded_libraries(cwd=planted, env=env)
    assert report["package_dir"] == str(site / "keras_vae")
    assert report["fused_available"] is False
    assert report["mapped"] == []
    assert any("reference implementation" in w for w in report["warnings"])


@linux_only
@pytest.mark.slow
def test_library_is_loaded_from_the_package_directory(tmp_path):
    """With decoy files of the same names in the current directory and on
    every path variable, the mapped libraries are the package's own."""
    libraries = compiled_libraries()
    if not any("_reparam_kl_ops" in p.name for p in libraries):
        pytest.skip("the op library is not built")
    decoys = tmp_path / "decoys"
    decoys.mkdir()
    for library in libraries:
        # Not a shared object: loading it would fail and show.
        (decoys / library.name).write_bytes(b"not a library\n")
    env = python_env(**{name: str(decoys) for name in HOSTILE_PATH_VARIABLES})
    report = _loaded_libraries(cwd=decoys, env=env)
    assert report["package_dir"] == str(PACKAGE_DIR)
    assert report["fused_available"] is True
    assert report["warnings"] == []
    assert report["mapped"], "the op library is not mapped"
    for path in report["mapped"]:
        assert Path(path).parent == PACKAGE_DIR, path


# ---------------------------------------------------------------------------
# The package's source: no network, no dynamic code, no unsafe loading.

NETWORK_MODULES = {
    "urllib", "urllib3", "http", "requests", "socket", "ftplib",
    "httpx", "aiohttp", "pip", "ensurepip",
}
DYNAMIC_CODE_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_ATTRIBUTES = {
    "get_file",  # keras.utils.get_file: fetches any URL
    "load_op_library",  # only the TensorFlow backend's loader may load a library
    "load_library",
    "enable_unsafe_deserialization",
    "Lambda",
}
# The one place allowed to load the op library.
LIBRARY_LOADER = PACKAGE_DIR / "backend" / "tensorflow.py"


def _package_sources():
    return sorted(PACKAGE_DIR.rglob("*.py"))


def _violations(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            names = []
        for name in names:
            if name.split(".")[0] in NETWORK_MODULES | {"pickle", "marshal", "dill", "cloudpickle"}:
                found.append(f"line {node.lineno}: imports {name}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in DYNAMIC_CODE_CALLS:
                found.append(f"line {node.lineno}: calls {node.func.id}()")
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            if not (node.attr == "load_op_library" and path == LIBRARY_LOADER):
                found.append(f"line {node.lineno}: uses .{node.attr}")
        if isinstance(node, ast.keyword) and node.arg == "safe_mode":
            if not (isinstance(node.value, ast.Constant) and node.value.value is True):
                found.append(f"line {node.lineno}: safe_mode other than True")
        if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                found.append(f"line {node.lineno}: allow_pickle other than False")
    return found


def test_package_source_has_no_network_or_dynamic_code():
    sources = _package_sources()
    assert LIBRARY_LOADER in sources
    problems = {
        str(p.relative_to(PACKAGE_DIR)): v for p in sources if (v := _violations(p))
    }
    assert problems == {}


def test_source_scan_catches_what_it_forbids(tmp_path):
    """The scanner itself: each forbidden construct is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import urllib.request\n"
        "from pickle import loads\n"
        "import keras\n"
        "eval('1')\n"
        "keras.utils.get_file('x', 'https://example.com/x')\n"
        "keras.layers.Lambda(lambda x: x)\n"
        "keras.models.load_model('m.keras', safe_mode=False)\n"
        "tf.load_op_library('./x.so')\n"
    )
    lines = {int(v.split(":")[0].split()[1]) for v in _violations(bad)}
    assert lines == {1, 2, 4, 5, 6, 7, 8}


def test_library_loader_looks_only_in_the_package_directory():
    """The loader builds candidate paths from the package directory, with no
    environment or current-directory input."""
    source = LIBRARY_LOADER.read_text()
    tree = ast.parse(source)
    # Every function that names a file to load or read: the library path
    # and the build record beside it.
    for function in ("_library_path", "_version_mismatch"):
        loader = next(
            n for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.name == function
        )
        names = {n.id for n in ast.walk(loader) if isinstance(n, ast.Name)}
        attrs = {n.attr for n in ast.walk(loader) if isinstance(n, ast.Attribute)}
        assert "_PACKAGE_DIR" in names, function
        assert not {"environ", "getenv", "getcwd", "cwd"} & (names | attrs)
    load = next(
        n for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef) and n.name == "_load"
    )
    assert "_library_path" in {n.id for n in ast.walk(load) if isinstance(n, ast.Name)}
    assert "os.environ" not in source and "getenv" not in source


# ---------------------------------------------------------------------------
# Saving and loading under safe_mode=True.


def _class_names(config):
    """Every "class_name" in a serialized config, recursively."""
    if isinstance(config, dict):
        names = [config["class_name"]] if "class_name" in config else []
        return names + [n for v in config.values() for n in _class_names(v)]
    if isinstance(config, list):
        return [n for v in config for n in _class_names(v)]
    return []


def _functional_sampling_model():
    x = keras.Input((tiny_vae.INPUT_DIM,))
    mean, log_var = keras_vae.layers.GaussianEncoderHead(3)(x)
    z = keras_vae.layers.Sampling(num_samples=2, seed=4, add_kl_loss=True)(
        [mean, log_var]
    )
    return keras.Model(x, z)


@pytest.mark.parametrize("kind", ["vae", "vae-schedule", "functional"])
def test_models_load_with_safe_mode_and_no_lambdas(tmp_path, kind):
    if kind == "functional":
        model = _functional_sampling_model()
    else:
        beta = 0.5
        if kind == "vae-schedule":
            beta = keras.optimizers.schedules.PolynomialDecay(0.0, 100, 1.0)
        model = tiny_vae.build(
            num_samples=2, objective="iwae", gradient_estimator="dreg", beta=beta
        )
    x = tiny_vae.data()[:5]
    path = tmp_path / "model.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    names = _class_names(config)
    assert names, "no classes in the saved config"
    assert not {"Lambda", "__lambda__"} & set(names), names
    assert "lambda" not in json.dumps(config).lower()

    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded) is type(model)
    if kind == "functional":
        # The same seed state gives the same draws.
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(loaded(x)),
            keras.ops.convert_to_numpy(model(x)),
        )
    else:
        np.testing.assert_array_equal(
            np.asarray(loaded.elbo(x, num_samples=3, seed=1)),
            np.asarray(model.elbo(x, num_samples=3, seed=1)),
        )


def test_safe_mode_refuses_a_lambda(tmp_path):
    """The guard the tests above rely on: Keras's safe_mode refuses lambda
    deserialization, so a model that needed one could not load."""
    x = keras.Input((2,))
    model = keras.Model(x, keras.layers.Lambda(lambda t: t * 2)(x))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        keras.models.load_model(path, safe_mode=True)


@pytest.mark.slow
def test_package_runs_with_the_network_refused(tmp_path):
    """Import, fit, save and load with every connection refused."""
    proc = run_python(
        [str(HELPERS / "no_network.py"), str(tmp_path / "m.keras")], cwd=tmp_path
    )
    assert proc.stdout.strip().endswith("ok")
