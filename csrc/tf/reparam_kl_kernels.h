// What a device must provide to run the fused op: a forward and a backward
// launch over raw pointers. The OpKernel classes in reparam_kl_kernels.cc
// validate, allocate and call these; they hold no math.
#ifndef KERAS_VAE_CSRC_TF_REPARAM_KL_KERNELS_H_
#define KERAS_VAE_CSRC_TF_REPARAM_KL_KERNELS_H_

#include "reparam_kl.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace keras_vae {

template <typename Device, typename T>
struct ReparamKlLaunch {
  static void Forward(::tensorflow::OpKernelContext* ctx,
                      const ReparamShape& shape, const T* mean,
                      const T* log_var, const PhiloxStream& stream, T* z,
                      T* kl, T* log_ratio);
  static void Backward(::tensorflow::OpKernelContext* ctx,
                       const ReparamShape& shape, const T* mean,
                       const T* log_var, const PhiloxStream& stream,
                       const T* grad_z, const T* grad_kl,
                       const T* grad_log_ratio, bool stop_params,
                       T* grad_mean, T* grad_log_var);
};

}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_TF_REPARAM_KL_KERNELS_H_
