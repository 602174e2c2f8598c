"""Mixed precision: the layers and the VAE train under `mixed_float16` and
`mixed_bfloat16` without NaN, and the op computes half types in float32.
"""

import keras
import ml_dtypes
import numpy as np
import pytest

import keras_vae
from helpers import tiny_vae

POLICIES = ["mixed_float16", "mixed_bfloat16"]


@pytest.fixture
def policy(request):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("policy", POLICIES, indirect=True)
@pytest.mark.parametrize("objective, estimator", [("elbo", "standard"), ("iwae", "dreg")])
def test_vae_trains_without_nan(policy, objective, estimator):
    model = tiny_vae.build(
        num_samples=3, objective=objective, gradient_estimator=estimator
    )
    model.compile(keras.optimizers.Adam(1e-2))
    if policy == "mixed_float16":
        # Keras wraps the optimizer so the float16 gradients do not underflow.
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(
        tiny_vae.data(), batch_size=8, epochs=4, shuffle=False, verbose=0
    )
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0] - 0.5, losses
    for w in model.weights:
        assert w.dtype != "float16" and w.dtype != "bfloat16", w.path
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(w))), w.path
    # Layers compute in the half type; the bound is reported in float32.
    mean, log_var = model.encoder(tiny_vae.data()[:4])
    dtype = keras.backend.standardize_dtype
    assert dtype(mean.dtype) == policy.split("_")[1]
    elbo = model.elbo(tiny_vae.data()[:4], num_samples=2)
    assert dtype(elbo.dtype) == "float32"


@pytest.mark.parametrize("policy", POLICIES, indirect=True)
def test_functional_vae_with_sampling_trains_without_nan(policy):
    keras.utils.set_random_seed(0)  # the layers' initial weights
    x = keras.Input((tiny_vae.INPUT_DIM,))
    h = keras.layers.Dense(16, activation="tanh")(x)
    mean, log_var = keras_vae.layers.GaussianEncoderHead(2)(h)
    z = keras_vae.layers.Sampling(seed=1, add_kl_loss=True)([mean, log_var])
    assert z.dtype == policy.split("_")[1]
    logits = keras.layers.Dense(tiny_vae.INPUT_DIM, dtype="float32")(z)
    model = keras.Model(x, logits)
    model.compile(
        keras.optimizers.Adam(1e-2),
        loss=lambda y, logits: keras.ops.sum(
            keras.ops.binary_crossentropy(y, logits, from_logits=True),
            axis=-1,
        ),
    )
    data = tiny_vae.data()
    history = model.fit(data, data, batch_size=8, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0] - 0.5, losses


# The NumPy types of the half types, for their units in the last place.
HALF_TYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


@pytest.mark.parametrize("implementation", ["fused", "reference"])
@pytest.mark.parametrize("dtype", list(HALF_TYPES))
def test_op_computes_half_types_in_float32(dtype, implementation):
    """Rounded once from a float32 computation, not step by step.

    mean = 300 in one dimension: z**2 and mean**2 (9e4) overflow float16
    (max 65504) while the KL and the log-ratio (~4.5e4) do not, so float16
    arithmetic inside would give inf. For bfloat16, step-by-step rounding of
    the sums would drift from the single rounding checked here.
    """
    rng = np.random.default_rng(0)
    mean = np.concatenate(
        [np.full((4, 1), 300.0), rng.uniform(-2, 2, (4, 16))], axis=1
    )
    log_var = rng.uniform(-2, 2, (4, 17))
    half = [keras.ops.cast(a, dtype) for a in (mean, log_var)]
    widened = [keras.ops.cast(t, "float32") for t in half]
    got = keras_vae.ops.reparameterize_kl(
        *half, 3, [5, 6], implementation=implementation
    )
    want = keras_vae.ops.reparameterize_kl(
        *widened, 3, [5, 6], implementation=implementation
    )
    for name, g, w in zip(("z", "kl", "log_ratio"), got, want):
        assert keras.backend.standardize_dtype(g.dtype) == dtype, name
        g = keras.ops.convert_to_numpy(keras.ops.cast(g, "float32"))
        assert np.all(np.isfinite(g)), name
        rounded = keras.ops.convert_to_numpy(
            keras.ops.cast(keras.ops.cast(w, dtype), "float32")
        )
        # One rounding of the float32 value; the float32 sums themselves may
        # be ordered differently, so allow one unit in the last place.
        ulp = np.spacing(np.abs(rounded).astype(HALF_TYPES[dtype]))
        np.testing.assert_array_less(
            np.abs(g - rounded), np.asarray(ulp, np.float32) + 1e-30, err_msg=name
        )
