// OpKernel classes of the fused op: validate inputs, allocate outputs, launch.
#include "tf/reparam_kl_kernels.h"

#include "cpu/reparam_kl_cpu.h"
#include "shapes.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/threadpool.h"
#include "tensorflow/core/util/work_sharder.h"

namespace keras_vae {

namespace tf = ::tensorflow;
using CPUDevice = Eigen::ThreadPoolDevice;
using GPUDevice = Eigen::GpuDevice;

namespace {

// The checked view of the inputs every kernel of this op shares.
struct ParsedInputs {
  ReparamDims dims;
  PhiloxStream stream;
  tf::TensorShape z_shape;
  tf::TensorShape batch_shape;
  tf::TensorShape log_ratio_shape;
};

Dims DimsOf(const tf::Tensor& t) {
  const auto sizes = t.shape().dim_sizes();
  return Dims(sizes.begin(), sizes.end());
}

absl::Status ShapeError(const std::string& message) {
  if (message.empty()) return absl::OkStatus();
  return tf::errors::InvalidArgument(message);
}

// The TensorFlow-side checks (seed, num_samples as tensors), then the shape
// contract of shapes.h.
absl::Status ParseInputs(tf::OpKernelContext* ctx, ParsedInputs* out) {
  const tf::Tensor& mean = ctx->input(0);
  const tf::Tensor& log_var = ctx->input(1);
  const tf::Tensor& seed = ctx->input(2);
  const tf::Tensor& num_samples = ctx->input(3);
  if (seed.dims() != 1 || seed.dim_size(0) != 2) {
    return tf::errors::InvalidArgument("seed must have shape [2], got ",
                                       seed.shape().DebugString());
  }
  if (!tf::TensorShapeUtils::IsScalar(num_samples.shape())) {
    return tf::errors::InvalidArgument("num_samples must be a scalar, got ",
                                       num_samples.shape().DebugString());
  }
  TF_RETURN_IF_ERROR(ShapeError(reparam_dims(
      DimsOf(mean), DimsOf(log_var), num_samples.scalar<int32_t>()(),
      &out->dims)));
  uint64_t s0, s1;
  if (seed.dtype() == tf::DT_INT32) {
    // Sign-extended like TensorFlow's stateless kernels.
    s0 = static_cast<uint64_t>(static_cast<int64_t>(seed.vec<int32_t>()(0)));
    s1 = static_cast<uint64_t>(static_cast<int64_t>(seed.vec<int32_t>()(1)));
  } else {
    s0 = static_cast<uint64_t>(seed.vec<int64_t>()(0));
    s1 = static_cast<uint64_t>(seed.vec<int64_t>()(1));
  }
  out->stream = stream_from_seed(s0, s1);
  TF_RETURN_IF_ERROR(
      tf::TensorShapeUtils::MakeShape(out->dims.z, &out->z_shape));
  TF_RETURN_IF_ERROR(
      tf::TensorShapeUtils::MakeShape(out->dims.kl, &out->batch_shape));
  return tf::TensorShapeUtils::MakeShape(out->dims.log_ratio,
                                         &out->log_ratio_shape);
}

template <typename Device, typename T>
class ReparamKlOp : public tf::OpKernel {
 public:
  explicit ReparamKlOp(tf::OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(tf::OpKernelContext* ctx) override {
    ParsedInputs in;
    OP_REQUIRES_OK(ctx, ParseInputs(ctx, &in));
    tf::Tensor *z, *kl, *log_ratio;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, in.z_shape, &z));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, in.batch_shape, &kl));
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output(2, in.log_ratio_shape, &log_ratio));
    if (z->NumElements() == 0 && kl->NumElements() == 0) return;
    ReparamKlLaunch<Device, T>::Forward(
        ctx, in.dims.shape, ctx->input(0).flat<T>().data(),
        ctx->input(1).flat<T>().data(), in.stream, z->flat<T>().data(),
        kl->flat<T>().data(), log_ratio->flat<T>().data());
  }
};

template <typename Device, typename T>
class ReparamKlGradOp : public tf::OpKernel {
 public:
  explicit ReparamKlGradOp(tf::OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("stop_log_ratio_param_grad", &stop_));
  }

  void Compute(tf::OpKernelContext* ctx) override {
    ParsedInputs in;
    OP_REQUIRES_OK(ctx, ParseInputs(ctx, &in));
    const tf::Tensor& grad_z = ctx->input(4);
    const tf::Tensor& grad_kl = ctx->input(5);
    const tf::Tensor& grad_log_ratio = ctx->input(6);
    OP_REQUIRES_OK(ctx, ShapeError(check_upstream_grads(
                            in.dims, DimsOf(grad_z), DimsOf(grad_kl),
                            DimsOf(grad_log_ratio))));
    const tf::Tensor& mean = ctx->input(0);
    tf::Tensor *grad_mean, *grad_log_var;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, mean.shape(), &grad_mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, mean.shape(), &grad_log_var));
    if (mean.NumElements() == 0) return;
    ReparamKlLaunch<Device, T>::Backward(
        ctx, in.dims.shape, mean.flat<T>().data(),
        ctx->input(1).flat<T>().data(), in.stream, grad_z.flat<T>().data(),
        grad_kl.flat<T>().data(), grad_log_ratio.flat<T>().data(), stop_,
        grad_mean->flat<T>().data(), grad_log_var->flat<T>().data());
  }

 private:
  bool stop_;
};

// TensorFlow's intra-op thread pool as the CPU kernels' parallel-for.
cpu::ParallelFor IntraOpPool(tf::OpKernelContext* ctx) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  return [workers](int64_t total, int64_t cost,
                   const std::function<void(int64_t, int64_t)>& fn) {
    workers->ParallelFor(total, cost, fn);
  };
}

}  // namespace

template <typename T>
struct ReparamKlLaunch<CPUDevice, T> {
  static void Forward(tf::OpKernelContext* ctx, const ReparamShape& shape,
                      const T* mean, const T* log_var,
                      const PhiloxStream& stream, T* z, T* kl, T* log_ratio) {
    cpu::reparam_kl_forward(shape, mean, log_var, stream, z, kl, log_ratio,
                            IntraOpPool(ctx));
  }
  static void Backward(tf::OpKernelContext* ctx, const ReparamShape& shape,
                       const T* mean, const T* log_var,
                       const PhiloxStream& stream, const T* grad_z,
                       const T* grad_kl, const T* grad_log_ratio,
                       bool stop_params, T* grad_mean, T* grad_log_var) {
    cpu::reparam_kl_backward(shape, mean, log_var, stream, grad_z, grad_kl,
                             grad_log_ratio, stop_params, grad_mean,
                             grad_log_var, IntraOpPool(ctx));
  }
};

#define KVAE_REGISTER(DEVICE_TYPE, DeviceT, T)                          \
  REGISTER_KERNEL_BUILDER(Name("KerasVaeReparameterizeKl")             \
                              .Device(DEVICE_TYPE)                     \
                              .HostMemory("seed")                      \
                              .HostMemory("num_samples")               \
                              .TypeConstraint<T>("T"),                 \
                          ReparamKlOp<DeviceT, T>);                     \
  REGISTER_KERNEL_BUILDER(Name("KerasVaeReparameterizeKlGrad")         \
                              .Device(DEVICE_TYPE)                     \
                              .HostMemory("seed")                      \
                              .HostMemory("num_samples")               \
                              .TypeConstraint<T>("T"),                 \
                          ReparamKlGradOp<DeviceT, T>);

#define KVAE_REGISTER_CPU(T) KVAE_REGISTER(tf::DEVICE_CPU, CPUDevice, T)
KVAE_REGISTER_CPU(Eigen::half)
KVAE_REGISTER_CPU(Eigen::bfloat16)
KVAE_REGISTER_CPU(float)
KVAE_REGISTER_CPU(double)

#if KERAS_VAE_WITH_CUDA
#define KVAE_REGISTER_GPU(T) KVAE_REGISTER(tf::DEVICE_GPU, GPUDevice, T)
KVAE_REGISTER_GPU(Eigen::half)
KVAE_REGISTER_GPU(Eigen::bfloat16)
KVAE_REGISTER_GPU(float)
KVAE_REGISTER_GPU(double)
#endif

}  // namespace keras_vae
