// What the Host and CUDA handlers share: the buffer checks of the call
// contract in reparam_kl_ffi.h and the dispatch on the element type. Holds no
// math; the handlers call the framework-free kernels.
#ifndef KERAS_VAE_CSRC_XLA_FFI_CALL_H_
#define KERAS_VAE_CSRC_XLA_FFI_CALL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "reparam_kl.h"
#include "xla/ffi/api/ffi.h"

namespace keras_vae {
namespace xla_ffi {

namespace ffi = ::xla::ffi;

inline std::string dims_string(ffi::AnyBuffer::Dimensions dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

inline bool dims_equal(ffi::AnyBuffer::Dimensions dims,
                       const std::vector<int64_t>& expected) {
  if (dims.size() != expected.size()) return false;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (dims[i] != expected[i]) return false;
  }
  return true;
}

// mean [..., D] and the K of `samples` ([K, ...]) -> the kernels' shape.
inline ffi::Error parse_shape(ffi::AnyBuffer mean, ffi::AnyBuffer log_var,
                              ffi::AnyBuffer seed, ffi::AnyBuffer samples,
                              const char* samples_name, ReparamShape* shape) {
  const auto md = mean.dimensions();
  if (md.size() < 1) {
    return ffi::Error::InvalidArgument("mean must have rank >= 1 ([..., D])");
  }
  if (!dims_equal(log_var.dimensions(),
                  std::vector<int64_t>(md.begin(), md.end()))) {
    return ffi::Error::InvalidArgument(
        "mean and log_var must have the same shape, got mean " +
        dims_string(md) + " and log_var " + dims_string(log_var.dimensions()));
  }
  if (log_var.element_type() != mean.element_type()) {
    return ffi::Error::InvalidArgument("log_var must have the dtype of mean");
  }
  if (mean.element_type() != ffi::DataType::F32 &&
      mean.element_type() != ffi::DataType::F64) {
    return ffi::Error::InvalidArgument(
        "mean must be f32 or f64 (16-bit types are converted by the caller)");
  }
  if ((seed.element_type() != ffi::DataType::S64 &&
       seed.element_type() != ffi::DataType::S32) ||
      !dims_equal(seed.dimensions(), {2})) {
    return ffi::Error::InvalidArgument("seed must be s64[2] or s32[2], got " +
                                       dims_string(seed.dimensions()));
  }
  if (samples.dimensions().size() < 1 || samples.dimensions()[0] < 1) {
    return ffi::Error::InvalidArgument(
        std::string(samples_name) + " must have a sample axis of size >= 1");
  }
  const int64_t d = md[md.size() - 1];
  int64_t n = 1;
  for (size_t i = 0; i + 1 < md.size(); ++i) n *= md[i];
  *shape = {samples.dimensions()[0], n, d};
  return ffi::Error::Success();
}

// The shapes of z (or grad_z), kl and log_ratio for mean's [..., D] and K.
inline ffi::Error check_outputs(ffi::AnyBuffer mean, int64_t k,
                                ffi::AnyBuffer z, const char* z_name,
                                ffi::AnyBuffer kl, const char* kl_name,
                                ffi::AnyBuffer log_ratio,
                                const char* log_ratio_name) {
  const auto md = mean.dimensions();
  std::vector<int64_t> z_dims{k};
  z_dims.insert(z_dims.end(), md.begin(), md.end());
  const std::vector<int64_t> kl_dims(md.begin(), md.end() - 1);
  const std::vector<int64_t> lr_dims(z_dims.begin(), z_dims.end() - 1);
  const std::pair<ffi::AnyBuffer, const char*> bufs[] = {
      {z, z_name}, {kl, kl_name}, {log_ratio, log_ratio_name}};
  const std::vector<int64_t>* expected[] = {&z_dims, &kl_dims, &lr_dims};
  for (int i = 0; i < 3; ++i) {
    if (bufs[i].first.element_type() != mean.element_type() ||
        !dims_equal(bufs[i].first.dimensions(), *expected[i])) {
      return ffi::Error::InvalidArgument(
          std::string(bufs[i].second) + " must have the dtype of mean and " +
          "shape " + dims_string(ffi::AnyBuffer::Dimensions(
                         expected[i]->data(), expected[i]->size())) +
          ", got " + dims_string(bufs[i].first.dimensions()));
    }
  }
  return ffi::Error::Success();
}

// The seed's two words, sign-extended from s32 as TensorFlow's stateless
// kernels do (s32 serves frontends without 64-bit integers, such as JAX by
// default). `words` is host memory holding the seed buffer's contents.
inline PhiloxStream stream_from_seed_words(ffi::DataType type,
                                           const void* words) {
  int64_t w[2];
  for (int i = 0; i < 2; ++i) {
    w[i] = type == ffi::DataType::S32 ? static_cast<const int32_t*>(words)[i]
                                      : static_cast<const int64_t*>(words)[i];
  }
  return stream_from_seed(static_cast<uint64_t>(w[0]),
                          static_cast<uint64_t>(w[1]));
}

// Calls f(T()) with T the storage type of `type` (checked by parse_shape).
template <typename F>
ffi::Error with_float_type(ffi::DataType type, F&& f) {
  if (type == ffi::DataType::F64) return f(double());
  return f(float());
}

template <typename T>
T* data(ffi::AnyBuffer b) {
  return static_cast<T*>(b.untyped_data());
}

}  // namespace xla_ffi
}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_XLA_FFI_CALL_H_
