// XLA typed-FFI handlers of the fused op: one set of C symbols that any XLA
// frontend registers under its own names (TensorFlow's XLA in
// tf/reparam_kl_xla.cc, JAX through the capsules of the _kernels module).
//
// Call contract (every frontend lowers to exactly this):
//   forward:  operands (mean [..., D], log_var [..., D], seed s64[2] or
//             s32[2], sign-extended)
//             results  (z [K, ..., D], kl [...], log_ratio [K, ...])
//   backward: operands (mean, log_var, seed, grad_z, grad_kl, grad_log_ratio)
//             results  (grad_mean, grad_log_var), both [..., D]
//             attribute stop_log_ratio_param_grad: bool
// f32 or f64, all of one type, row-major. K is read from the shape of z
// (grad_z). Frontends convert 16-bit types to f32 around the call, which is
// what the kernels compute in anyway.
#ifndef KERAS_VAE_CSRC_XLA_REPARAM_KL_FFI_H_
#define KERAS_VAE_CSRC_XLA_REPARAM_KL_FFI_H_

#include "xla/ffi/api/c_api.h"

extern "C" {
XLA_FFI_Error* KerasVaeReparamKlForwardHost(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* KerasVaeReparamKlBackwardHost(XLA_FFI_CallFrame* call_frame);
#if KERAS_VAE_WITH_CUDA
XLA_FFI_Error* KerasVaeReparamKlForwardCuda(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* KerasVaeReparamKlBackwardCuda(XLA_FFI_CallFrame* call_frame);
#endif
}

namespace keras_vae {
namespace xla_ffi {

// The custom-call target names the frontends register the handlers under.
constexpr const char kForwardTarget[] = "keras_vae_reparameterize_kl";
constexpr const char kBackwardTarget[] = "keras_vae_reparameterize_kl_grad";
constexpr const char kStopAttr[] = "stop_log_ratio_param_grad";

}  // namespace xla_ffi
}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_XLA_REPARAM_KL_FFI_H_
