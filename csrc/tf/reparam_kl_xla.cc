// XLA lowerings of both ops: a typed-FFI custom call to the handlers of
// xla/reparam_kl_ffi.h (registered with TensorFlow's XLA in
// reparam_kl_xla_ffi.cc). Glue only: checks at compile time, converts 16-bit
// types to f32 around the call, and holds no math.
//
// This file uses the tf2xla C++ API, which moves between TensorFlow minor
// versions; it is built into a library of its own so that the op still loads
// where this part does not.
#include <string>
#include <vector>

#include "shapes.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/core/framework/kernel_def_builder.h"
#include "tensorflow/core/framework/node_def_util.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/service/hlo.pb.h"
#include "xla/shape_util.h"

namespace keras_vae {
namespace {

namespace tf = ::tensorflow;

// The custom-call targets; the same strings as xla/reparam_kl_ffi.h, which
// this translation unit cannot include (see reparam_kl_xla_ffi.cc).
constexpr char kForwardTarget[] = "keras_vae_reparameterize_kl";
constexpr char kBackwardTarget[] = "keras_vae_reparameterize_kl_grad";

Dims InputDims(tf::XlaOpKernelContext* ctx, int index) {
  const auto sizes = ctx->InputShape(index).dim_sizes();
  return Dims(sizes.begin(), sizes.end());
}

// The shapes both ops share, checked while the graph is compiled against
// the contract of shapes.h; its errors name the argument, as the OpKernels'
// run-time checks do.
absl::Status ParseShapes(tf::XlaOpKernelContext* ctx, ReparamDims* out) {
  const tf::TensorShape seed = ctx->InputShape(2);
  if (seed.dims() != 1 || seed.dim_size(0) != 2) {
    return tf::errors::InvalidArgument("seed must have shape [2], got ",
                                       seed.DebugString());
  }
  int64_t num_samples;
  absl::Status constant = ctx->ConstantInputAsIntScalar(3, &num_samples);
  if (!constant.ok()) {
    return tf::errors::InvalidArgument(
        "num_samples must be a compile-time constant scalar under XLA (it "
        "sets the shape of z): ",
        constant.message());
  }
  const std::string error = reparam_dims(InputDims(ctx, 0), InputDims(ctx, 1),
                                         num_samples, out);
  if (!error.empty()) return tf::errors::InvalidArgument(error);
  return absl::OkStatus();
}

xla::Shape RowMajor(xla::PrimitiveType type, const Dims& dims) {
  return xla::ShapeUtil::MakeShapeWithDescendingLayout(type, dims);
}

// What the handlers compute in: f64 for f64, f32 otherwise.
xla::PrimitiveType ComputeType(xla::PrimitiveType type) {
  return type == xla::F64 ? xla::F64 : xla::F32;
}

// Operands in the handlers' types: parameters as compute type, seed as s64
// (int32 seeds sign-extend, as in TensorFlow's stateless kernels).
std::vector<xla::XlaOp> CallOperands(tf::XlaOpKernelContext* ctx,
                                     const std::vector<int>& float_inputs,
                                     xla::PrimitiveType compute) {
  std::vector<xla::XlaOp> ops;
  for (int i : float_inputs) {
    ops.push_back(i == 2 ? xla::ConvertElementType(ctx->Input(2), xla::S64)
                         : xla::ConvertElementType(ctx->Input(i), compute));
  }
  return ops;
}

// Sets the op's outputs from the tuple the custom call returns.
void SetOutputs(tf::XlaOpKernelContext* ctx, xla::XlaOp call, int count,
                xla::PrimitiveType type) {
  for (int i = 0; i < count; ++i) {
    ctx->SetOutput(i, xla::ConvertElementType(xla::GetTupleElement(call, i),
                                              type));
  }
}

xla::XlaOp TypedFfiCall(tf::XlaOpKernelContext* ctx, const char* target,
                        const std::vector<xla::XlaOp>& operands,
                        const std::vector<xla::Shape>& operand_shapes,
                        const std::vector<xla::Shape>& result_shapes,
                        const std::string& attributes) {
  return xla::CustomCallWithLayout(
      ctx->builder(), target, operands,
      xla::ShapeUtil::MakeTupleShape(result_shapes), operand_shapes,
      /*opaque=*/attributes, /*has_side_effect=*/false,
      /*output_operand_aliasing=*/{}, /*literal=*/nullptr,
      xla::CustomCallSchedule::SCHEDULE_NONE,
      xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
}

class ReparamKlXlaOp : public tf::XlaOpKernel {
 public:
  explicit ReparamKlXlaOp(tf::OpKernelConstruction* ctx) : XlaOpKernel(ctx) {}

  void Compile(tf::XlaOpKernelContext* ctx) override {
    ReparamDims s;
    OP_REQUIRES_OK(ctx, ParseShapes(ctx, &s));
    const xla::PrimitiveType type = ctx->input_xla_type(0);
    const xla::PrimitiveType c = ComputeType(type);
    const xla::Shape params = RowMajor(c, s.params);
    xla::XlaOp call = TypedFfiCall(
        ctx, kForwardTarget, CallOperands(ctx, {0, 1, 2}, c),
        {params, params, RowMajor(xla::S64, {2})},
        {RowMajor(c, s.z), RowMajor(c, s.kl), RowMajor(c, s.log_ratio)}, "");
    SetOutputs(ctx, call, 3, type);
  }
};

class ReparamKlGradXlaOp : public tf::XlaOpKernel {
 public:
  explicit ReparamKlGradXlaOp(tf::OpKernelConstruction* ctx)
      : XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("stop_log_ratio_param_grad", &stop_));
  }

  void Compile(tf::XlaOpKernelContext* ctx) override {
    ReparamDims s;
    OP_REQUIRES_OK(ctx, ParseShapes(ctx, &s));
    const std::string error = check_upstream_grads(
        s, InputDims(ctx, 4), InputDims(ctx, 5), InputDims(ctx, 6));
    OP_REQUIRES(ctx, error.empty(), tf::errors::InvalidArgument(error));
    const xla::PrimitiveType type = ctx->input_xla_type(0);
    const xla::PrimitiveType c = ComputeType(type);
    const xla::Shape params = RowMajor(c, s.params);
    xla::XlaOp call = TypedFfiCall(
        ctx, kBackwardTarget, CallOperands(ctx, {0, 1, 2, 4, 5, 6}, c),
        {params, params, RowMajor(xla::S64, {2}), RowMajor(c, s.z),
         RowMajor(c, s.kl), RowMajor(c, s.log_ratio)},
        {params, params},
        // The handlers read attributes from an MLIR dictionary.
        std::string("{stop_log_ratio_param_grad = ") +
            (stop_ ? "true" : "false") + "}");
    SetOutputs(ctx, call, 2, type);
  }

 private:
  bool stop_;
};

// CUDA handlers exist only in CUDA builds; elsewhere XLA:GPU has no target
// for the call, so the lowering is offered to XLA:CPU alone.
#if KERAS_VAE_WITH_CUDA
const std::vector<const char*> kJitDevices = {tf::DEVICE_CPU_XLA_JIT,
                                              tf::DEVICE_GPU_XLA_JIT};
#else
const std::vector<const char*> kJitDevices = {tf::DEVICE_CPU_XLA_JIT};
#endif

template <typename Op>
tf::OpKernel* Create(tf::OpKernelConstruction* ctx) {
  return new Op(ctx);
}

struct Lowering {
  const char* op;
  const char* class_name;
  tf::OpKernel* (*create)(tf::OpKernelConstruction*);
};
const Lowering kLowerings[] = {
    {"KerasVaeReparameterizeKl", "ReparamKlXlaOp", &Create<ReparamKlXlaOp>},
    {"KerasVaeReparameterizeKlGrad", "ReparamKlGradXlaOp",
     &Create<ReparamKlGradXlaOp>},
};

// XlaOpRegistry creates the JIT devices' kernels once, at the first eager op
// or tf.function call of the process, from what REGISTER_XLA_OP recorded by
// then. Loaded before that, the registrations below are picked up with the
// rest; loaded after, they would be ignored, so the kernels are registered
// on the JIT devices directly.
bool JitKernelsAlreadyCreated(const char* device) {
  tf::NodeDef probe;
  probe.set_name("keras_vae_probe");
  probe.set_op("Identity");
  tf::AddNodeAttr("T", tf::DT_FLOAT, &probe);
  return tf::FindKernelDef(tf::DeviceType(device), probe, nullptr, nullptr)
      .ok();
}

bool RegisterLowerings() {
  for (const Lowering& l : kLowerings) {
    // Records the op for XLA (its compile-time constant input among others)
    // in every case; creates JIT kernels only when the registry does so.
    auto builder = tf::XlaOpRegistrationBuilder::Name(l.op);
    builder.Device(absl::Span<const absl::string_view>(
        std::vector<absl::string_view>(kJitDevices.begin(),
                                       kJitDevices.end())));
    builder.CompileTimeConstantInput("num_samples");
    new tf::XlaOpRegistrar(builder.Build(l.create));
    for (const char* device : kJitDevices) {
      if (!JitKernelsAlreadyCreated(device)) continue;
      const tf::KernelDef* def =
          tf::KernelDefBuilder(l.op)
              .Device(device)
              .TypeConstraint("T", {tf::DT_HALF, tf::DT_BFLOAT16,
                                    tf::DT_FLOAT, tf::DT_DOUBLE})
              .TypeConstraint("Tseed", {tf::DT_INT32, tf::DT_INT64})
              .Build();
      new tf::kernel_factory::OpKernelRegistrar(def, l.class_name, l.create);
    }
  }
  return true;
}

[[maybe_unused]] const bool registered = RegisterLowerings();

}  // namespace
}  // namespace keras_vae
