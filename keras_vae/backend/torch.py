"""The fused kernels on PyTorch: ``torch.library`` custom ops.

``keras_vae::reparameterize_kl`` and ``keras_vae::reparameterize_kl_grad``
call ``keras_vae._kernels``: its NumPy entry on CPU tensors (sharing their
memory) and, in CUDA builds, its CUDA entry on CUDA tensors, on PyTorch's
current stream. Both ops have fake (meta) implementations and the forward
op's autograd formula calls the grad op, so they trace under
``torch.compile`` (``fullgraph=True``) as single nodes.

>>> z, kl, log_ratio = reparameterize_kl(mean, log_var, 5, seed=[1, 2])

Noise contract: for the same inputs and seed the outputs equal those of
``keras_vae.ops.reparameterize_kl`` on TensorFlow bit for bit, since ``eps``
is ``tf.random.stateless_normal([K, *mean.shape], seed)`` drawn by the same
kernels.
"""

import functools

import torch

from keras_vae.backend._checks import (
    check_num_samples,
    check_params,
    check_seed,
    with_sample_axis,
)

__all__ = ["reparameterize_kl", "available"]

_COMPUTE_DTYPES = (torch.float32, torch.float64)


def _kernels():
    from keras_vae import _kernels

    return _kernels


def available():
    """Whether the fused kernels can run here: ``(True, None)`` or
    ``(False, reason)``. Said for the CPU; CUDA tensors need a CUDA build
    (``keras_vae._kernels.build_info()["cuda"]``)."""
    try:
        _kernels()
    except ImportError as e:
        return False, f"keras_vae._kernels is not built: {e}"
    return True, None


def _seed_words(seed):
    """The seed tensor's two int64 words as the uint64s the kernels take.

    ``s % 2**64`` is the two's complement of ``s``: int32 seeds were
    sign-extended when widened to int64, as TensorFlow does.
    """
    return [int(w) % 2**64 for w in seed.tolist()]


def _name(dtype):
    return str(dtype).removeprefix("torch.")


def _cuda_stream(device):
    return torch.cuda.current_stream(device).cuda_stream


@torch.library.custom_op("keras_vae::reparameterize_kl", mutates_args=())
def _forward(
    mean: torch.Tensor,
    log_var: torch.Tensor,
    seed: torch.Tensor,
    num_samples: int,
    stop_log_ratio_param_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, log_var [..., D], seed int64 [2]) -> (z, kl, log_ratio).

    mean and log_var: float16, bfloat16, float32 or float64 (16-bit types
    computed in float32); the outputs have their dtype.

    stop_log_ratio_param_grad changes the gradient only (the autograd
    formula reads it); the values are the same.
    """
    raise NotImplementedError(
        f"keras_vae::reparameterize_kl has no kernel for {mean.device.type} "
        "tensors (CPU, and CUDA in CUDA builds)"
    )


def _in_float32_for_16_bit(kernel):
    """``kernel`` for every float dtype of the op: 16-bit tensors are
    computed in float32 and the outputs rounded once to the input dtype, as
    on TensorFlow, so the real kernels return the dtype the fake ones say."""

    @functools.wraps(kernel)
    def wrapped(mean, *args):
        dtype = mean.dtype
        if dtype in _COMPUTE_DTYPES:
            return kernel(mean, *args)

        def widened(x):
            is_float = isinstance(x, torch.Tensor) and x.dtype == dtype
            return x.float() if is_float else x

        outputs = kernel(widened(mean), *(widened(x) for x in args))
        return tuple(x.to(dtype) for x in outputs)

    return wrapped


def _forward_cpu(mean, log_var, seed, num_samples, stop_log_ratio_param_grad):
    # The kernels' persistent pool, with PyTorch's intra-op thread count.
    outputs = _kernels().cpu_forward(
        mean.detach().numpy(), log_var.detach().numpy(), num_samples,
        *_seed_words(seed), num_threads=torch.get_num_threads(),
    )
    return tuple(torch.from_numpy(x) for x in outputs)


def _cuda_arrays(*tensors):
    """The tensors as the CUDA entry takes them, and its dtype argument:
    bfloat16 has no ``__cuda_array_interface__`` type, so its tensors go as
    2-byte views named ``"bfloat16"``. The CUDA kernels take every float
    dtype natively (16-bit ones computed in float32 and rounded once)."""
    tensors = [t.detach() for t in tensors]
    if tensors[0].dtype == torch.bfloat16:
        return [t.view(torch.int16) for t in tensors], "bfloat16"
    return tensors, ""


def _forward_cuda(mean, log_var, seed, num_samples, stop_log_ratio_param_grad):
    z = mean.new_empty(with_sample_axis(mean.shape, num_samples))
    kl = mean.new_empty(mean.shape[:-1])
    log_ratio = mean.new_empty(with_sample_axis(mean.shape[:-1], num_samples))
    arrays, dtype = _cuda_arrays(mean, log_var, z, kl, log_ratio)
    _kernels().cuda_forward(
        *arrays, num_samples, _seed(seed, mean.device),
        stream=_cuda_stream(mean.device), dtype=dtype,
        device=mean.device.index,
    )
    return z, kl, log_ratio


_forward.register_kernel("cpu", _in_float32_for_16_bit(_forward_cpu))


@_forward.register_fake
def _forward_fake(mean, log_var, seed, num_samples, stop_log_ratio_param_grad):
    return (
        mean.new_empty(with_sample_axis(mean.shape, num_samples)),
        mean.new_empty(mean.shape[:-1]),
        mean.new_empty(with_sample_axis(mean.shape[:-1], num_samples)),
    )


@torch.library.custom_op("keras_vae::reparameterize_kl_grad", mutates_args=())
def _backward(
    mean: torch.Tensor,
    log_var: torch.Tensor,
    seed: torch.Tensor,
    grad_z: torch.Tensor,
    grad_kl: torch.Tensor,
    grad_log_ratio: torch.Tensor,
    stop_log_ratio_param_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of mean and log_var; the noise is regenerated from the
    seed, and K is read from grad_z."""
    raise NotImplementedError(
        f"keras_vae::reparameterize_kl_grad has no kernel for "
        f"{mean.device.type} tensors (CPU, and CUDA in CUDA builds)"
    )


def _backward_cpu(mean, log_var, seed, grad_z, grad_kl, grad_log_ratio,
                  stop_log_ratio_param_grad):
    grads = _kernels().cpu_backward(
        mean.detach().numpy(), log_var.detach().numpy(), grad_z.shape[0],
        *_seed_words(seed), grad_z.detach().numpy(), grad_kl.detach().numpy(),
        grad_log_ratio.detach().numpy(), stop_log_ratio_param_grad,
        num_threads=torch.get_num_threads(),
    )
    return tuple(torch.from_numpy(g) for g in grads)


def _backward_cuda(mean, log_var, seed, grad_z, grad_kl, grad_log_ratio,
                   stop_log_ratio_param_grad):
    grad_mean, grad_log_var = torch.empty_like(mean), torch.empty_like(log_var)
    arrays, dtype = _cuda_arrays(mean, log_var, grad_z, grad_kl,
                                 grad_log_ratio, grad_mean, grad_log_var)
    _kernels().cuda_backward(
        *arrays, grad_z.shape[0], _seed(seed, mean.device),
        stop_params=stop_log_ratio_param_grad,
        stream=_cuda_stream(mean.device), dtype=dtype,
        device=mean.device.index,
    )
    return grad_mean, grad_log_var


_backward.register_kernel("cpu", _in_float32_for_16_bit(_backward_cpu))


@_backward.register_fake
def _backward_fake(mean, log_var, seed, grad_z, grad_kl, grad_log_ratio,
                   stop_log_ratio_param_grad):
    return torch.empty_like(mean), torch.empty_like(log_var)


def _register_cuda_kernels():
    """CUDA kernels exist only in CUDA builds; elsewhere CUDA tensors get
    the default's error."""
    try:
        cuda = _kernels().build_info()["cuda"]
    except ImportError:
        return
    if cuda:
        _forward.register_kernel("cuda", _forward_cuda)
        _backward.register_kernel("cuda", _backward_cuda)


_register_cuda_kernels()


def _setup_context(ctx, inputs, output):
    mean, log_var, seed, _, stop = inputs
    ctx.save_for_backward(mean, log_var, seed)
    ctx.stop = stop


def _autograd_backward(ctx, grad_z, grad_kl, grad_log_ratio):
    mean, log_var, seed = ctx.saved_tensors
    grad_mean, grad_log_var = _backward(
        mean, log_var, seed, grad_z.contiguous(), grad_kl.contiguous(),
        grad_log_ratio.contiguous(), ctx.stop,
    )
    return grad_mean, grad_log_var, None, None, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _seed(seed, device="cpu"):
    """seed as an int64 [2] tensor on ``device`` (int32 words sign-extended).

    On mean's device, so that the ops dispatch on it alone; a CUDA seed for
    CUDA tensors stays there (the kernels read it on the device, so the call
    can be captured in a CUDA graph). The CUDA kernels call this too, for a
    seed given to the raw op on another device.
    """
    if not isinstance(seed, torch.Tensor):
        try:
            seed = torch.tensor(seed, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(
                f"seed must be a pair of ints or an int tensor, got {seed!r}"
            ) from e
    check_seed(_name(seed.dtype), seed.shape)
    # To a CUDA device without blocking (a blocking copy synchronizes).
    to_cuda = torch.device(device).type == "cuda"
    return seed.to(device=device, dtype=torch.int64, non_blocking=to_cuda)


def _check(mean, log_var):
    if not isinstance(mean, torch.Tensor) or not isinstance(log_var, torch.Tensor):
        raise TypeError(
            "mean and log_var must be torch tensors, got "
            f"{type(mean).__name__} and {type(log_var).__name__}"
        )
    check_params(_name(mean.dtype), _name(log_var.dtype), mean.shape,
                 log_var.shape)
    if log_var.device != mean.device:
        raise ValueError(
            f"log_var must be on the device of mean, got mean on {mean.device} "
            f"and log_var on {log_var.device}"
        )


def reparameterize_kl(
    mean, log_var, num_samples, seed, stop_log_ratio_param_grad=False
):
    """Reparameterized samples of N(mean, exp(log_var)), KL and log-ratio.

    Differentiable (the backward kernel regenerates the noise from the
    seed) and traceable by ``torch.compile`` with ``fullgraph=True``.

    Args:
        mean: tensor ``[..., D]`` on the CPU (or CUDA, in CUDA builds):
            float16, bfloat16, float32 or float64. 16-bit types are computed
            in float32 and rounded once, as on TensorFlow.
        log_var: tensor of the shape, dtype and device of ``mean``.
        num_samples: K, a Python int >= 1.
        seed: a pair of Python ints or an int32/int64 tensor of shape
            ``[2]`` (on any device; it is moved to the device of ``mean``,
            where the CUDA kernels read it: a CUDA seed costs no
            synchronization). Words are sign-extended to 64 bits, so
            ``[-1, 2]`` draws what TensorFlow draws from ``[-1, 2]``. It gets
            no gradient. Under ``torch.compile`` pass a tensor: a new tensor
            value reuses the compiled graph, where new Python ints recompile
            it (once, before PyTorch makes them dynamic).
        stop_log_ratio_param_grad: a Python bool: stop the gradient through
            ``mean`` and ``log_var`` inside ``log_ratio``'s log q term, keeping
            the path through ``z`` (the STL and DReG estimators).

    Returns:
        ``(z, kl, log_ratio)`` in the dtype of ``mean``: ``z`` ``[K, ..., D]``,
        ``kl`` ``[...]``, ``log_ratio`` ``[K, ...]``, as
        ``keras_vae.ops.reparameterize_kl``.

    Raises:
        ValueError, TypeError: naming the bad argument.
    """
    _check(mean, log_var)
    num_samples = check_num_samples(num_samples)
    seed = _seed(seed, mean.device)
    return _forward(
        mean.contiguous(), log_var.contiguous(), seed, num_samples,
        bool(stop_log_ratio_param_grad),
    )


def reference_normal(shape, seed, dtype):
    """Standard normal noise for the reference implementation, from
    PyTorch's generator seeded by the seed's words: not the kernels'
    stream."""
    words = _seed_words(_seed(seed))
    generator = torch.Generator().manual_seed((words[0] ^ words[1] * 0x9E3779B97F4A7C15) % 2**63)
    if isinstance(dtype, str):
        # keras.ops names dtypes; torch.randn takes torch's.
        dtype = getattr(torch, dtype)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype)
