"""The fused op inside XLA: a typed-FFI custom call to the same kernels.

The oracles are the op outside XLA (the same kernels, so the same bits),
`tf.random.stateless_normal` (the noise contract) and the compiled HLO
itself. Loading order, auto-clustering, SavedModels and the fallbacks run in
fresh processes, since each needs a TensorFlow in a state of its own.
"""

import json
import shutil
import textwrap
import warnings

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from helpers.processes import (
    PACKAGE_DIR,
    copy_package_without_libraries,
    python_env,
    run_python,
)
from keras_vae import _kernels, ops
from keras_vae.backend import tensorflow as tf_backend

ALL_DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]

pytestmark = [
    pytest.mark.tensorflow_only("the TF op and its XLA lowering"),
    pytest.mark.skipif(
        not ops.fused_xla_available(),
        reason=f"XLA lowerings not loaded: {ops.build_info()}",
    ),
]


def _params(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    mean = tf.constant(rng.normal(size=shape), dtype)
    log_var = tf.constant(rng.normal(scale=0.5, size=shape), dtype)
    return mean, log_var


def _forward_and_gradients(mean, log_var, stop, num_samples=3):
    """Outputs and the gradients of a loss that weighs every output."""
    with tf.GradientTape() as tape:
        tape.watch([mean, log_var])
        z, kl, log_ratio = ops.reparameterize_kl(
            mean, log_var, num_samples, [11, 12],
            stop_log_ratio_param_grad=stop,
        )
        loss = (
            tf.reduce_sum(tf.cast(z, tf.float32) ** 2)
            + tf.reduce_sum(tf.cast(kl, tf.float32) * 3.0)
            + tf.reduce_sum(tf.cast(log_ratio, tf.float32) * 0.5)
        )
    return (z, kl, log_ratio), tape.gradient(loss, [mean, log_var])


@pytest.mark.parametrize("stop", [False, True])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
def test_xla_equals_the_op_outside_xla_bit_for_bit(dtype, stop):
    """Same kernels, same noise: outputs and gradients agree exactly, for
    every dtype (16-bit types computed in float32 and rounded once, both
    ways)."""
    mean, log_var = _params([5, 37], dtype, seed=1)
    eager = _forward_and_gradients(mean, log_var, stop)
    jit = tf.function(_forward_and_gradients, jit_compile=True)(
        mean, log_var, stop
    )
    for a, b in zip(tf.nest.flatten(eager), tf.nest.flatten(jit)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(
            tf.cast(a, tf.float64).numpy(), tf.cast(b, tf.float64).numpy()
        )


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=lambda d: d.name)
def test_xla_noise_is_stateless_normal(dtype):
    """The noise contract inside XLA: bit for bit on the scalar path and in
    float64, within the documented 1e-5 on the vector paths."""
    shape = [4, 3, 1000]
    zeros = tf.zeros(shape[1:], dtype)

    @tf.function(jit_compile=True)
    def draw(mean, log_var):
        return ops.reparameterize_kl(mean, log_var, shape[0], [-3, 77])[0]

    eps = draw(zeros, zeros).numpy()
    expected = tf.random.stateless_normal(shape, seed=[-3, 77], dtype=dtype)
    exact = dtype == tf.float64 or _kernels.cpu_isa() == "scalar"
    np.testing.assert_allclose(eps, expected.numpy(), rtol=0,
                               atol=0 if exact else 1e-5)


def test_hlo_holds_the_custom_calls_and_no_reference():
    mean, log_var = _params([8, 16], tf.float32, seed=2)
    step = tf.function(
        lambda m, lv: _forward_and_gradients(m, lv, stop=True), jit_compile=True
    )
    hlo = step.experimental_get_compiler_ir(mean, log_var)(stage="hlo")
    assert 'custom_call_target="keras_vae_reparameterize_kl"' in hlo
    assert 'custom_call_target="keras_vae_reparameterize_kl_grad"' in hlo
    assert "API_VERSION_TYPED_FFI" in hlo
    assert "stop_log_ratio_param_grad = true" in hlo
    # The reference would draw with XLA's generator and take logs for the
    # Box-Muller transform; the fused step does neither.
    for reference_op in ("rng-bit-generator", "rng(", " log(", "sine("):
        assert reference_op not in hlo, reference_op


def test_num_samples_must_be_a_compile_time_constant():
    """A tensor argument is specialized on its value; a number drawn inside
    the function is not known when XLA compiles it."""

    @tf.function(jit_compile=True)
    def run(mean, log_var, num_samples):
        return ops.reparameterize_kl(mean, log_var, num_samples, [1, 2])

    z = run(tf.zeros([2, 3]), tf.zeros([2, 3]), tf.constant(5))[0]
    assert z.shape == [5, 2, 3]

    @tf.function(jit_compile=True)
    def run_drawn(mean, log_var):
        k = tf.random.uniform([], 1, 3, dtype=tf.int32)
        return ops.reparameterize_kl(mean, log_var, k, [1, 2])

    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="num_samples must be a compile-time constant"):
        run_drawn(tf.zeros([2, 3]), tf.zeros([2, 3]))


def test_shape_errors_at_compile_time_name_the_argument():
    """Shapes unknown when traced are checked when XLA compiles them."""

    @tf.function(
        jit_compile=True,
        input_signature=[tf.TensorSpec([None, 6]), tf.TensorSpec([None, 6])],
    )
    def run(mean, log_var):
        return ops.reparameterize_kl(mean, log_var, 2, [1, 2])

    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"mean and log_var must have the same shape.*"
                             r"\[4,6\].*\[3,6\]"):
        run(tf.zeros([4, 6]), tf.zeros([3, 6]))
    z, kl, log_ratio = run(tf.zeros([4, 6]), tf.zeros([4, 6]))
    assert z.shape == [2, 4, 6] and kl.shape == [4] and log_ratio.shape == [2, 4]


def test_empty_batch_under_xla():
    @tf.function(jit_compile=True)
    def run(mean, log_var):
        return _forward_and_gradients(mean, log_var, stop=False)

    (z, kl, log_ratio), (gm, glv) = run(tf.zeros([0, 4]), tf.zeros([0, 4]))
    assert z.shape == [3, 0, 4] and kl.shape == [0] and log_ratio.shape == [3, 0]
    assert gm.shape == glv.shape == [0, 4]


# ---------------------------------------------------------------------------
# Fresh processes.

_EAGER_AND_JIT_FIRST = """
import tensorflow as tf
tf.constant(1.0) + 1.0  # eager: XLA's JIT kernels are created here
tf.function(lambda x: x * 2, jit_compile=True)(tf.constant(1.0))
import keras_vae  # loaded after both
"""

_CHECK_LOWERED = """
mean, log_var = tf.ones([3, 5]), tf.zeros([3, 5])
f = tf.function(lambda m, lv: keras_vae.ops.reparameterize_kl(m, lv, 4, [1, 2]),
                jit_compile=True)
hlo = f.experimental_get_compiler_ir(mean, log_var)(stage="hlo")
assert 'custom_call_target="keras_vae_reparameterize_kl"' in hlo, hlo
z = f(mean, log_var)[0]
expected = 1.0 + tf.random.stateless_normal([4, 3, 5], seed=[1, 2])
assert float(tf.reduce_max(tf.abs(z - expected))) <= 1e-5
print("lowered")
"""


def test_loading_after_eager_ops_and_jit_still_lowers():
    proc = run_python(["-c", _EAGER_AND_JIT_FIRST + _CHECK_LOWERED])
    assert "lowered" in proc.stdout


def test_auto_clustering_picks_the_op_up(tmp_path):
    script = textwrap.dedent("""
        import tensorflow as tf, keras_vae

        @tf.function
        def step(mean, log_var):
            z, kl, _ = keras_vae.ops.reparameterize_kl(mean, log_var, 3, [1, 2])
            return tf.reduce_sum(z * 2.0) + tf.reduce_sum(kl)

        print(float(step(tf.ones([4, 5]), tf.zeros([4, 5]))))
    """)
    env = python_env(
        TF_XLA_FLAGS="--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit "
        "--tf_xla_min_cluster_size=1 --tf_xla_clustering_debug",
        TF_DUMP_GRAPH_PREFIX=str(tmp_path),
    )
    run_python(["-c", script], env=env)
    clustered = []
    for path in tmp_path.glob("mark_for_compilation*.pbtxt"):
        if "annotated" in path.name:
            continue
        graph = text_format.Parse(path.read_text(), tf.compat.v1.GraphDef())
        clustered += [
            "_XlaCluster" in node.attr
            for node in graph.node
            if node.op == "KerasVaeReparameterizeKl"
        ]
    assert clustered and all(clustered), clustered


def test_saved_model_of_a_jit_function_runs_in_a_fresh_process(tmp_path):
    class Sampler(tf.Module):
        @tf.function(
            jit_compile=True,
            input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None, 4])],
        )
        def __call__(self, mean, log_var):
            return ops.reparameterize_kl(mean, log_var, 2, [5, 6])

    mean, log_var = _params([3, 4], tf.float32, seed=3)
    expected = [t.numpy() for t in Sampler()(mean, log_var)]
    tf.saved_model.save(Sampler(), str(tmp_path / "sampler"))
    np.savez(tmp_path / "inputs.npz", mean=mean.numpy(), log_var=log_var.numpy())
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        import keras_vae
        loaded = tf.saved_model.load({str(tmp_path / "sampler")!r})
        inputs = np.load({str(tmp_path / "inputs.npz")!r})
        out = loaded(tf.constant(inputs["mean"]), tf.constant(inputs["log_var"]))
        np.savez({str(tmp_path / "out.npz")!r}, *[t.numpy() for t in out])
    """)
    run_python(["-c", script])
    with np.load(tmp_path / "out.npz") as got:
        for i, want in enumerate(expected):
            np.testing.assert_array_equal(got[f"arr_{i}"], want)


_REFERENCE_IN_XLA = """
import warnings
import numpy as np, tensorflow as tf
import keras_vae
print("info", keras_vae.ops.build_info())
f = tf.function(lambda m, lv: keras_vae.ops.reparameterize_kl(m, lv, 2, [1, 2]),
                jit_compile=True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(2):
        hlo = f.experimental_get_compiler_ir(tf.ones([3, 5]), tf.zeros([3, 5]))(stage="hlo")
        f(tf.ones([3, 5]), tf.zeros([3, 5]))
assert "keras_vae_reparameterize_kl" not in hlo
for w in caught:
    if issubclass(w.category, RuntimeWarning):
        print("RuntimeWarning:", w.message)
"""


def _runtime_warnings(stdout):
    return [l for l in stdout.splitlines() if l.startswith("RuntimeWarning:")]


def test_without_the_xla_library_the_reference_runs_with_one_warning(tmp_path):
    """A TensorFlow whose tf2xla pieces the lowering library cannot use:
    the op still loads, and XLA functions run the reference."""
    site = copy_package_without_libraries(tmp_path / "site")
    for library in PACKAGE_DIR.glob("_reparam_kl_ops*"):
        shutil.copy(library, site / "keras_vae")
    env = python_env(PYTHONPATH=f"{site}")
    proc = run_python(["-c", _REFERENCE_IN_XLA], env=env, cwd=tmp_path)
    assert "'loaded': True" in proc.stdout and "'xla': False" in proc.stdout
    warned = _runtime_warnings(proc.stdout)
    assert len(warned) == 1, proc.stdout
    assert "XLA lowerings are not loaded" in warned[0]
    assert "_reparam_kl_xla" in warned[0]


def test_library_built_for_another_tensorflow_is_not_loaded(tmp_path):
    site = copy_package_without_libraries(tmp_path / "site")
    for library in PACKAGE_DIR.glob("_*.so"):
        shutil.copy(library, site / "keras_vae")
    (site / "keras_vae" / "_build_config.json").write_text(
        json.dumps({"tensorflow": "2.0.0"})
    )
    env = python_env(PYTHONPATH=f"{site}")
    proc = run_python(["-c", _REFERENCE_IN_XLA], env=env, cwd=tmp_path)
    assert "'loaded': False" in proc.stdout
    warned = _runtime_warnings(proc.stdout)
    assert len(warned) == 1, proc.stdout
    assert "built against TensorFlow 2.0.0" in warned[0]
    assert f"TensorFlow {tf.__version__} is installed" in warned[0]


# ---------------------------------------------------------------------------
# The in-process switches.


@pytest.fixture
def xla_library_unloaded(monkeypatch):
    monkeypatch.setattr(tf_backend, "_xla_library", None)
    monkeypatch.setattr(tf_backend, "_xla_load_error", "libxla.so: undefined symbol.")
    monkeypatch.setattr(tf_backend, "_warned_xla_fallback", False)


def test_fused_in_xla_without_lowerings_raises_naming_why(xla_library_unloaded):
    @tf.function(jit_compile=True)
    def run(mean, log_var):
        return ops.reparameterize_kl(
            mean, log_var, 1, [1, 2], implementation="fused"
        )

    with pytest.raises(ValueError, match="libxla.so: undefined symbol"):
        run(tf.zeros([2, 3]), tf.zeros([2, 3]))


def test_auto_in_xla_without_lowerings_falls_back_once(xla_library_unloaded):
    @tf.function(jit_compile=True)
    def run(mean, log_var):
        return ops.reparameterize_kl(mean, log_var, 2, [1, 2])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(tf.zeros([2, 3]), tf.zeros([2, 3]))
        run(tf.zeros([4, 3]), tf.zeros([4, 3]))  # a second trace
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1
    graph = run.get_concrete_function(tf.zeros([2, 3]), tf.zeros([2, 3])).graph
    assert "KerasVaeReparameterizeKl" not in {op.type for op in graph.get_operations()}


@pytest.mark.gpu
@pytest.mark.skipif(
    not (tf.config.list_physical_devices("GPU") and ops.build_info()["cuda"]),
    reason="needs a GPU that TensorFlow sees and a CUDA build",
)
@pytest.mark.parametrize("stop", [False, True])
def test_xla_on_the_gpu_matches_the_cpu_kernels(stop):
    """The CUDA handlers under XLA:GPU: the same noise as the CPU kernels,
    to the device's float rounding (its exp, log and sincos differ)."""
    mean, log_var = _params([64, 37], tf.float32, seed=4)
    with tf.device("CPU:0"):
        expected = _forward_and_gradients(mean, log_var, stop)
    with tf.device("GPU:0"):
        got = tf.function(_forward_and_gradients, jit_compile=True)(
            mean, log_var, stop
        )
    for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(expected)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
