import os

# Quiet TensorFlow's C++ logging before it is imported by any test module.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import sys  # noqa: E402

import pytest  # noqa: E402


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
