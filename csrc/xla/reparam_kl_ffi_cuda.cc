// The CUDA handlers: the CUDA kernels on the stream of the XLA call.
#include <cuda_runtime_api.h>

#include "cuda/reparam_kl_cuda.h"
#include "xla/ffi_call.h"
#include "xla/reparam_kl_ffi.h"

namespace keras_vae {
namespace xla_ffi {
namespace {

ffi::Error cuda_error(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string(what) + ": " +
                              cudaGetErrorString(status));
}

// The seed lives in device memory under XLA; the kernels take the Philox
// stream by value, so its 16 bytes are read back first (in stream order).
ffi::Error read_seed(cudaStream_t stream, ffi::AnyBuffer seed,
                     PhiloxStream* out) {
  int64_t host[2];  // room for two words of either type
  if (auto e = cuda_error(cudaMemcpyAsync(host, seed.untyped_data(),
                                          seed.size_bytes(),
                                          cudaMemcpyDeviceToHost, stream),
                          "copying the seed");
      e.failure())
    return e;
  if (auto e = cuda_error(cudaStreamSynchronize(stream), "copying the seed");
      e.failure())
    return e;
  *out = stream_from_seed_words(seed.element_type(), host);
  return ffi::Error::Success();
}

ffi::Error forward_cuda(cudaStream_t stream, ffi::AnyBuffer mean,
                        ffi::AnyBuffer log_var, ffi::AnyBuffer seed,
                        ffi::Result<ffi::AnyBuffer> z,
                        ffi::Result<ffi::AnyBuffer> kl,
                        ffi::Result<ffi::AnyBuffer> log_ratio) {
  return forward_call(
      mean, log_var, seed, *z, *kl, *log_ratio,
      [&](auto tag, const ReparamShape& shape) {
        using T = decltype(tag);
        PhiloxStream noise;
        if (auto e = read_seed(stream, seed, &noise); e.failure()) return e;
        return cuda_error(
            cuda::reparam_kl_forward<T>(shape, data<T>(mean),
                                        data<T>(log_var), noise, data<T>(*z),
                                        data<T>(*kl), data<T>(*log_ratio),
                                        stream),
            "launching the forward kernel");
      });
}

ffi::Error backward_cuda(cudaStream_t stream, ffi::AnyBuffer mean,
                         ffi::AnyBuffer log_var, ffi::AnyBuffer seed,
                         ffi::AnyBuffer grad_z, ffi::AnyBuffer grad_kl,
                         ffi::AnyBuffer grad_log_ratio, bool stop_params,
                         ffi::Result<ffi::AnyBuffer> grad_mean,
                         ffi::Result<ffi::AnyBuffer> grad_log_var) {
  return backward_call(
      mean, log_var, seed, grad_z, grad_kl, grad_log_ratio,
      [&](auto tag, const ReparamShape& shape) {
        using T = decltype(tag);
        PhiloxStream noise;
        if (auto e = read_seed(stream, seed, &noise); e.failure()) return e;
        return cuda_error(
            cuda::reparam_kl_backward<T>(
                shape, data<T>(mean), data<T>(log_var), noise,
                data<T>(grad_z), data<T>(grad_kl), data<T>(grad_log_ratio),
                stop_params, data<T>(*grad_mean), data<T>(*grad_log_var),
                stream),
            "launching the backward kernel");
      });
}

}  // namespace
}  // namespace xla_ffi
}  // namespace keras_vae

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    KerasVaeReparamKlForwardCuda, keras_vae::xla_ffi::forward_cuda,
    keras_vae::xla_ffi::forward_binding<::xla::ffi::PlatformStream<cudaStream_t>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    KerasVaeReparamKlBackwardCuda, keras_vae::xla_ffi::backward_cuda,
    keras_vae::xla_ffi::backward_binding<::xla::ffi::PlatformStream<cudaStream_t>>());
