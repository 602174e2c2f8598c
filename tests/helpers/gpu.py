"""What the GPU tests share: where no GPU (or no CUDA build) is there they
skip, unless KERAS_VAE_REQUIRE_GPU=1, which makes every such skip a failure,
so that a run on a GPU machine cannot pass by skipping. Imports no
framework."""

import os

import pytest

REQUIRE_GPU = os.environ.get("KERAS_VAE_REQUIRE_GPU", "") not in ("", "0")


def unavailable(reason, allow_module_level=False):
    """Skips (or, with KERAS_VAE_REQUIRE_GPU=1, fails) saying why."""
    if REQUIRE_GPU:
        pytest.fail(f"KERAS_VAE_REQUIRE_GPU=1, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


def cuda_torch():
    """torch, with a CUDA device visible to it."""
    try:
        import torch
    except ImportError:
        unavailable("PyTorch is not installed")
    if not torch.cuda.is_available():
        unavailable("no CUDA device visible to PyTorch")
    return torch


def cuda_jax():
    """(jax, its first GPU device)."""
    try:
        import jax
    except ImportError:
        unavailable("JAX is not installed")
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if not gpus:
        unavailable("no GPU device visible to JAX")
    return jax, gpus[0]


def signed_seed(seed):
    """Two uint64 seed words as the int64 words of the same bits."""
    return [w - 2**64 if w >= 2**63 else w for w in seed]
