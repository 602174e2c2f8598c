"""The suite runs once per Keras backend: `KERAS_BACKEND=jax pytest tests`.

Two markers narrow what runs where:
- `tensorflow_only(reason)`: the test is about TensorFlow machinery
  (tf.distribute, SavedModel export, the TF op's graph and XLA registration,
  tf.data specifics) and is deselected on the other backends.
- `backend_independent`: the test never reaches a Keras backend (the
  framework-free kernels, the benchmark harness, subprocesses that choose
  their own backends), so it runs in one backend's run only, TensorFlow's.
"""

import os

# Quiet TensorFlow's C++ logging before it is imported by any test module.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BACKEND = os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import sys  # noqa: E402

import pytest  # noqa: E402

# The backend whose run also takes the backend-independent tests.
HOME_BACKEND = "tensorflow"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "tensorflow_only(reason): about TensorFlow machinery; deselected on "
        "the other backends",
    )
    config.addinivalue_line(
        "markers",
        "backend_independent: reaches no Keras backend; runs in the "
        f"{HOME_BACKEND} run only",
    )


def _runs_here(item):
    tf_only = item.get_closest_marker("tensorflow_only")
    if tf_only is not None:
        if not tf_only.args:
            raise pytest.UsageError(
                f"{item.nodeid}: tensorflow_only needs a reason"
            )
        return BACKEND == "tensorflow"
    if item.get_closest_marker("backend_independent") is not None:
        return BACKEND == HOME_BACKEND
    return True


def pytest_collection_modifyitems(config, items):
    kept, deselected = [], []
    for item in items:
        (kept if _runs_here(item) else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_report_header(config):
    return f"keras backend: {BACKEND}"


@pytest.fixture(autouse=True)
def _clear_keras_session():
    """Resets Keras's global state (names, seeds) between tests that used it.

    free_memory=False skips the full garbage collection, which would cost
    about half a second per test.
    """
    yield
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.backend.clear_session(free_memory=False)
