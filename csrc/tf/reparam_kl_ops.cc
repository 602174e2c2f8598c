// Op definitions and shape functions. Kernels live in reparam_kl_kernels.cc.
#include "shapes.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace keras_vae {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// mean and log_var must agree and have rank >= 1; seed is a [2] vector and
// num_samples a scalar. Sets *params to the merged [..., D] shape.
absl::Status MergeParamShapes(InferenceContext* c, ShapeHandle* params) {
  ShapeHandle mean, log_var, seed, unused;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &mean));
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(1), 1, &log_var));
  TF_RETURN_IF_ERROR(c->Merge(mean, log_var, params));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &seed));
  DimensionHandle seed_len;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(seed, 0), 2, &seed_len));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 0, &unused));
  return absl::OkStatus();
}

// *dims = the dimensions of s, when all are known.
bool KnownDims(InferenceContext* c, ShapeHandle s, Dims* dims) {
  if (!c->FullyDefined(s)) return false;
  dims->clear();
  for (int i = 0; i < c->Rank(s); ++i) dims->push_back(c->Value(c->Dim(s, i)));
  return true;
}

ShapeHandle ShapeOf(InferenceContext* c, const Dims& dims) {
  std::vector<DimensionHandle> handles;
  for (int64_t d : dims) handles.push_back(c->MakeDim(d));
  return c->MakeShape(handles);
}

// With mean, log_var and num_samples all known at graph construction, the
// outputs (and the errors) come from the shape contract of shapes.h, as in
// the kernels; sets *known to whether they were.
absl::Status ContractDims(InferenceContext* c, bool* known,
                          ReparamDims* out) {
  Dims mean, log_var;
  const ::tensorflow::Tensor* k = c->input_tensor(3);
  *known = k != nullptr && k->dims() == 0 &&
           KnownDims(c, c->input(0), &mean) &&
           KnownDims(c, c->input(1), &log_var);
  if (!*known) return absl::OkStatus();
  const std::string error =
      reparam_dims(mean, log_var, k->scalar<int32_t>()(), out);
  if (error.empty()) return absl::OkStatus();
  return ::tensorflow::errors::InvalidArgument(error);
}

}  // namespace

REGISTER_OP("KerasVaeReparameterizeKl")
    .Input("mean: T")
    .Input("log_var: T")
    .Input("seed: Tseed")
    .Input("num_samples: int32")
    .Output("z: T")
    .Output("kl: T")
    .Output("log_ratio: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tseed: {int32, int64} = DT_INT64")
    .Attr("stop_log_ratio_param_grad: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      bool known;
      ReparamDims dims;
      TF_RETURN_IF_ERROR(ContractDims(c, &known, &dims));
      ShapeHandle params;
      TF_RETURN_IF_ERROR(MergeParamShapes(c, &params));
      if (known) {
        c->set_output(0, ShapeOf(c, dims.z));
        c->set_output(1, ShapeOf(c, dims.kl));
        c->set_output(2, ShapeOf(c, dims.log_ratio));
        return absl::OkStatus();
      }
      // Partly known: the same layout, symbolically.
      DimensionHandle k;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(3, &k));
      ShapeHandle batch, sample_axis, z, log_ratio;
      TF_RETURN_IF_ERROR(c->Subshape(params, 0, -1, &batch));
      sample_axis = c->Vector(k);
      TF_RETURN_IF_ERROR(c->Concatenate(sample_axis, params, &z));
      TF_RETURN_IF_ERROR(c->Concatenate(sample_axis, batch, &log_ratio));
      c->set_output(0, z);
      c->set_output(1, batch);
      c->set_output(2, log_ratio);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Draws z = mean + exp(0.5 * log_var) * eps for num_samples samples, eps equal to
tf.random.stateless_normal([num_samples, ..., D], seed), and returns z, the
analytic KL(q || N(0, I)) summed over D, and log q(z|x) - log p(z) per sample.
)doc");

REGISTER_OP("KerasVaeReparameterizeKlGrad")
    .Input("mean: T")
    .Input("log_var: T")
    .Input("seed: Tseed")
    .Input("num_samples: int32")
    .Input("grad_z: T")
    .Input("grad_kl: T")
    .Input("grad_log_ratio: T")
    .Output("grad_mean: T")
    .Output("grad_log_var: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tseed: {int32, int64} = DT_INT64")
    .Attr("stop_log_ratio_param_grad: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      bool known;
      ReparamDims dims;
      TF_RETURN_IF_ERROR(ContractDims(c, &known, &dims));
      ShapeHandle params;
      TF_RETURN_IF_ERROR(MergeParamShapes(c, &params));
      c->set_output(0, params);
      c->set_output(1, params);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of KerasVaeReparameterizeKl with respect to mean and log_var. The
noise is regenerated from the seed instead of being read from memory.
)doc");

}  // namespace keras_vae
