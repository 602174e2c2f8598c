// The GPU launch of the fused op: TensorFlow's stream and tensors handed to
// the framework-free CUDA launchers in csrc/cuda/. No kernels live here.
#if KERAS_VAE_WITH_CUDA

#define EIGEN_USE_GPU

#include "cuda/reparam_kl_cuda.h"
#include "tf/reparam_kl_kernels.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace keras_vae {

namespace tf = ::tensorflow;
using GPUDevice = Eigen::GpuDevice;

namespace {

// TensorFlow's 16-bit types have the bit layout of CUDA's.
template <typename T>
struct CudaType {
  using type = T;
};
template <>
struct CudaType<Eigen::half> {
  using type = __half;
};
template <>
struct CudaType<Eigen::bfloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
const typename CudaType<T>::type* as_cuda(const T* p) {
  static_assert(sizeof(typename CudaType<T>::type) == sizeof(T), "layout");
  return reinterpret_cast<const typename CudaType<T>::type*>(p);
}
template <typename T>
typename CudaType<T>::type* as_cuda(T* p) {
  return reinterpret_cast<typename CudaType<T>::type*>(p);
}

void CheckLaunch(tf::OpKernelContext* ctx, cudaError_t err) {
  if (err != cudaSuccess) {
    ctx->SetStatus(tf::errors::Internal("keras_vae CUDA launch failed: ",
                                        cudaGetErrorString(err)));
  }
}

}  // namespace

template <typename T>
struct ReparamKlLaunch<GPUDevice, T> {
  static void Forward(tf::OpKernelContext* ctx, const ReparamShape& shape,
                      const T* mean, const T* log_var,
                      const PhiloxStream& stream, T* z, T* kl, T* log_ratio) {
    CheckLaunch(ctx, cuda::reparam_kl_forward(
                         shape, as_cuda(mean), as_cuda(log_var), stream,
                         as_cuda(z), as_cuda(kl), as_cuda(log_ratio),
                         ctx->eigen_device<GPUDevice>().stream()));
  }
  static void Backward(tf::OpKernelContext* ctx, const ReparamShape& shape,
                       const T* mean, const T* log_var,
                       const PhiloxStream& stream, const T* grad_z,
                       const T* grad_kl, const T* grad_log_ratio,
                       bool stop_params, T* grad_mean, T* grad_log_var) {
    CheckLaunch(ctx, cuda::reparam_kl_backward(
                         shape, as_cuda(mean), as_cuda(log_var), stream,
                         as_cuda(grad_z), as_cuda(grad_kl),
                         as_cuda(grad_log_ratio), stop_params,
                         as_cuda(grad_mean), as_cuda(grad_log_var),
                         ctx->eigen_device<GPUDevice>().stream()));
  }
};

template struct ReparamKlLaunch<GPUDevice, Eigen::half>;
template struct ReparamKlLaunch<GPUDevice, Eigen::bfloat16>;
template struct ReparamKlLaunch<GPUDevice, float>;
template struct ReparamKlLaunch<GPUDevice, double>;

}  // namespace keras_vae

#endif  // KERAS_VAE_WITH_CUDA
