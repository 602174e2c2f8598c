// The shape contract of the fused op, written once for every binding (the
// TensorFlow kernels and shape function, the NumPy and CUDA entries of
// keras_vae._kernels, the XLA handlers). Header-only and framework-free:
// dimensions go in as std::vector<int64_t> (or pointer and rank), errors come
// out as a message that names the offending argument.
//
//   mean, log_var            [..., D]      (rank >= 1, equal shapes)
//   num_samples              K >= 1
//   z                        [K, ..., D]
//   kl                       [...]
//   log_ratio                [K, ...]
//   grad_mean, grad_log_var  [..., D]      (the backward's outputs)
//   grad_z, grad_kl, grad_log_ratio shaped like z, kl, log_ratio
//
// The kernels see the flat sizes (K, N, D), N the product of the batch dims
// (N may be nonzero when D == 0: kl and log_ratio are then empty sums).
//
// API (every check returns "" when it passes, else the message):
//   std::string reparam_dims(mean, log_var, num_samples, &out[, style])
//       checks the inputs and fills a ReparamDims (the ReparamShape and the
//       dims of every output);
//   std::string expect_dims(name, expected, got[, style])
//       "<name> must have shape <expected>, got <got>";
//   std::string check_forward_outputs(dims, z, kl, log_ratio[, style])
//   std::string check_upstream_grads(dims, grad_z, grad_kl, grad_log_ratio[, style])
//       the three (z, kl, log_ratio)-shaped arrays, named as in the op;
//   std::string format_dims(dims, style)
//       "[2,3]" (DimsStyle::kList, as TensorFlow prints shapes) or
//       "(2, 3)" (DimsStyle::kTuple, as Python prints them).
#ifndef KERAS_VAE_CSRC_SHAPES_H_
#define KERAS_VAE_CSRC_SHAPES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "reparam_kl.h"

namespace keras_vae {

using Dims = std::vector<int64_t>;

enum class DimsStyle { kList, kTuple };

inline Dims make_dims(const int64_t* dims, int rank) {
  return rank > 0 ? Dims(dims, dims + rank) : Dims();
}

inline std::string format_dims(const Dims& dims, DimsStyle style) {
  const bool tuple = style == DimsStyle::kTuple;
  std::string out = tuple ? "(" : "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) out += tuple ? ", " : ",";
    out += std::to_string(dims[i]);
  }
  if (tuple && dims.size() == 1) out += ",";
  return out + (tuple ? ")" : "]");
}

// A checked call: the kernels' sizes and the shape of every array.
struct ReparamDims {
  ReparamShape shape;  // K, N, D
  Dims params;         // mean, log_var, grad_mean, grad_log_var
  Dims z;
  Dims kl;
  Dims log_ratio;
};

namespace shapes_detail {

// *product = the product of dims; false on int64 overflow.
inline bool checked_product(const Dims& dims, int64_t* product) {
  int64_t p = 1;
  for (int64_t d : dims) {
    if (__builtin_mul_overflow(p, d, &p)) return false;
  }
  *product = p;
  return true;
}

}  // namespace shapes_detail

inline std::string reparam_dims(const Dims& mean, const Dims& log_var,
                                int64_t num_samples, ReparamDims* out,
                                DimsStyle style = DimsStyle::kList) {
  if (mean.empty()) {
    return "mean must have rank >= 1 ([..., D]), got shape " +
           format_dims(mean, style);
  }
  if (mean != log_var) {
    return "mean and log_var must have the same shape, got mean " +
           format_dims(mean, style) + " and log_var " +
           format_dims(log_var, style);
  }
  for (int64_t d : mean) {
    if (d < 0) {
      return "mean must have non-negative dimensions, got " +
             format_dims(mean, style);
    }
  }
  if (num_samples < 1) {
    return "num_samples must be >= 1, got " + std::to_string(num_samples);
  }
  ReparamDims r;
  r.params = mean;
  r.kl.assign(mean.begin(), mean.end() - 1);
  r.z = r.params;
  r.z.insert(r.z.begin(), num_samples);
  r.log_ratio = r.kl;
  r.log_ratio.insert(r.log_ratio.begin(), num_samples);
  // The batch product too: with D == 0, z is empty but log_ratio is not.
  int64_t rows = 0, unused = 0;
  if (!shapes_detail::checked_product(r.kl, &rows) ||
      !shapes_detail::checked_product(r.z, &unused) ||
      !shapes_detail::checked_product(r.log_ratio, &unused)) {
    return "z would have more than 2^63 - 1 elements: num_samples " +
           std::to_string(num_samples) + " times mean " +
           format_dims(mean, style);
  }
  r.shape = {num_samples, rows, mean.back()};
  *out = r;
  return "";
}

inline std::string reparam_dims(const int64_t* mean, int mean_rank,
                                const int64_t* log_var, int log_var_rank,
                                int64_t num_samples, ReparamDims* out,
                                DimsStyle style = DimsStyle::kList) {
  return reparam_dims(make_dims(mean, mean_rank),
                      make_dims(log_var, log_var_rank), num_samples, out,
                      style);
}

inline std::string expect_dims(const char* name, const Dims& expected,
                               const Dims& got,
                               DimsStyle style = DimsStyle::kList) {
  if (got == expected) return "";
  return std::string(name) + " must have shape " +
         format_dims(expected, style) + ", got " + format_dims(got, style);
}

namespace shapes_detail {

inline std::string expect_like_outputs(const ReparamDims& dims,
                                       const char* const names[3],
                                       const Dims& z_like, const Dims& kl_like,
                                       const Dims& log_ratio_like,
                                       DimsStyle style) {
  std::string error = expect_dims(names[0], dims.z, z_like, style);
  if (error.empty()) error = expect_dims(names[1], dims.kl, kl_like, style);
  if (error.empty()) {
    error = expect_dims(names[2], dims.log_ratio, log_ratio_like, style);
  }
  return error;
}

}  // namespace shapes_detail

inline std::string check_forward_outputs(const ReparamDims& dims,
                                         const Dims& z, const Dims& kl,
                                         const Dims& log_ratio,
                                         DimsStyle style = DimsStyle::kList) {
  static const char* const kNames[3] = {"z", "kl", "log_ratio"};
  return shapes_detail::expect_like_outputs(dims, kNames, z, kl, log_ratio,
                                            style);
}

inline std::string check_upstream_grads(const ReparamDims& dims,
                                        const Dims& grad_z,
                                        const Dims& grad_kl,
                                        const Dims& grad_log_ratio,
                                        DimsStyle style = DimsStyle::kList) {
  static const char* const kNames[3] = {"grad_z", "grad_kl", "grad_log_ratio"};
  return shapes_detail::expect_like_outputs(dims, kNames, grad_z, grad_kl,
                                            grad_log_ratio, style);
}

}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_SHAPES_H_
