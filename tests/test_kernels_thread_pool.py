"""keras_vae._kernels' thread pool: its threads start once, not per call;
each call uses the threads it is given (PyTorch passes its own setting),
and the result does not depend on how many."""

import os

import numpy as np
import pytest

_kernels = pytest.importorskip("keras_vae._kernels")
pytestmark = pytest.mark.backend_independent

# Large enough to be split over threads (K * B * D elements).
K, B, D = 64, 100, 50


def arrays():
    rng = np.random.default_rng(0)
    mean = rng.standard_normal((B, D)).astype("float32")
    log_var = rng.standard_normal((B, D)).astype("float32")
    grads = (
        rng.standard_normal((K, B, D)).astype("float32"),
        rng.standard_normal((B,)).astype("float32"),
        rng.standard_normal((K, B)).astype("float32"),
    )
    return mean, log_var, grads


def run(num_threads):
    mean, log_var, grads = arrays()
    forward = _kernels.cpu_forward(mean, log_var, K, 3, 4,
                                   num_threads=num_threads)
    backward = _kernels.cpu_backward(mean, log_var, K, 3, 4, *grads,
                                     num_threads=num_threads)
    return forward + backward


def threads_alive():
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"),
                    reason="counts threads in /proc")
def test_calls_reuse_the_pools_threads():
    run(4)  # starts the pool
    before = threads_alive()
    for _ in range(20):
        run(4)
    assert threads_alive() == before


@pytest.mark.parametrize("num_threads", [1, 2, 3, 0])
def test_the_result_does_not_depend_on_the_threads(num_threads):
    for a, b in zip(run(num_threads), run(1)):
        np.testing.assert_array_equal(a, b)


def test_the_default_thread_count_is_settable():
    previous = _kernels.get_num_threads()
    try:
        _kernels.set_num_threads(2)
        assert _kernels.get_num_threads() == 2
        for a, b in zip(run(0), run(1)):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(ValueError, match="num_threads"):
            _kernels.set_num_threads(-1)
    finally:
        _kernels.set_num_threads(previous)
