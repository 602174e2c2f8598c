import os

# Quiet TensorFlow's C++ logging before it is imported by any test module.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _clear_keras_session():
    yield
    import keras

    keras.backend.clear_session()
