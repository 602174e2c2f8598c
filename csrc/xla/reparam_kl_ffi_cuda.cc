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

// The seed stays in device memory: the kernels read its words themselves,
// so a call neither copies to the host nor synchronizes the stream, and XLA
// may capture it in a command buffer (a CUDA graph).
cuda::NoiseSeed device_seed(ffi::AnyBuffer seed) {
  if (seed.element_type() == ffi::DataType::S32) {
    return cuda::NoiseSeed::on_device(data<const int32_t>(seed));
  }
  return cuda::NoiseSeed::on_device(data<const int64_t>(seed));
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
        return cuda_error(
            cuda::reparam_kl_forward<T>(shape, data<T>(mean),
                                        data<T>(log_var), device_seed(seed),
                                        data<T>(*z),
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
        return cuda_error(
            cuda::reparam_kl_backward<T>(
                shape, data<T>(mean), data<T>(log_var), device_seed(seed),
                data<T>(grad_z), data<T>(grad_kl), data<T>(grad_log_ratio),
                stop_params, data<T>(*grad_mean), data<T>(*grad_log_var),
                stream),
            "launching the backward kernel");
      });
}

}  // namespace
}  // namespace xla_ffi
}  // namespace keras_vae

// Command-buffer compatible: a call only launches kernels on XLA's stream
// (the occupancy the launchers need is asked once and cached, outside any
// stream), so replaying a captured call is the call.
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    KerasVaeReparamKlForwardCuda, keras_vae::xla_ffi::forward_cuda,
    keras_vae::xla_ffi::forward_binding<::xla::ffi::PlatformStream<cudaStream_t>>(),
    {::xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    KerasVaeReparamKlBackwardCuda, keras_vae::xla_ffi::backward_cuda,
    keras_vae::xla_ffi::backward_binding<::xla::ffi::PlatformStream<cudaStream_t>>(),
    {::xla::ffi::Traits::kCmdBufferCompatible});
