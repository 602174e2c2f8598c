// CUDA kernels of the fused reparameterize-and-KL step: raw device pointers,
// sizes and a stream supplied by the caller (TensorFlow's stream, or the one
// a CuPy/PyTorch caller passes to the standalone binding).
//
// T is the storage type: float, double, __half or __nv_bfloat16 (16-bit types
// are computed in float). Every launch is asynchronous on `stream` and never
// waits for the device (no copy to the host, no synchronization), so it may
// be captured in a CUDA graph; the return value reports launch errors only.
#ifndef KERAS_VAE_CSRC_CUDA_REPARAM_KL_CUDA_H_
#define KERAS_VAE_CSRC_CUDA_REPARAM_KL_CUDA_H_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "reparam_kl.h"

namespace keras_vae {
namespace cuda {

// Where a launch finds its noise: a Philox stream made on the host, or the
// seed's two words in device memory (int64, or int32 sign-extended as
// TensorFlow's stateless kernels do), from which every thread derives the
// stream itself. A seed that lives on the device is never copied to the host.
struct NoiseSeed {
  PhiloxStream stream = {};
  const void* device_words = nullptr;  // when set, `stream` is unused
  bool int32_words = false;

  NoiseSeed() = default;
  // Implicit: a host-made stream is a seed (TensorFlow's op reads its seed
  // from host memory).
  NoiseSeed(const PhiloxStream& s) : stream(s) {}  // NOLINT
  static NoiseSeed on_device(const int64_t* words) {
    NoiseSeed seed;
    seed.device_words = words;
    return seed;
  }
  static NoiseSeed on_device(const int32_t* words) {
    NoiseSeed seed;
    seed.device_words = words;
    seed.int32_words = true;
    return seed;
  }
};

// z[k, n, :], log_ratio[k, n] for all k, and kl[n].
template <typename T>
cudaError_t reparam_kl_forward(const ReparamShape& shape, const T* mean,
                               const T* log_var, const NoiseSeed& seed,
                               T* z, T* kl, T* log_ratio,
                               cudaStream_t cuda_stream);

// d mean, d log_var from the upstream gradients of (z, kl, log_ratio); the
// noise is regenerated from the Philox stream.
template <typename T>
cudaError_t reparam_kl_backward(const ReparamShape& shape, const T* mean,
                                const T* log_var, const NoiseSeed& seed,
                                const T* grad_z, const T* grad_kl,
                                const T* grad_log_ratio, bool stop_params,
                                T* grad_mean, T* grad_log_var,
                                cudaStream_t cuda_stream);

}  // namespace cuda
}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_CUDA_REPARAM_KL_CUDA_H_
