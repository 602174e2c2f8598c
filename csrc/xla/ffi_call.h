// What the Host and CUDA handlers share: the buffer checks of the call
// contract in reparam_kl_ffi.h and the dispatch on the element type. Holds no
// math; the handlers call the framework-free kernels.
#ifndef KERAS_VAE_CSRC_XLA_FFI_CALL_H_
#define KERAS_VAE_CSRC_XLA_FFI_CALL_H_

#include <cstdint>
#include <string>

#include "reparam_kl.h"
#include "shapes.h"
#include "xla/ffi/api/ffi.h"
#include "xla/reparam_kl_ffi.h"

namespace keras_vae {
namespace xla_ffi {

namespace ffi = ::xla::ffi;

inline Dims dims_of(ffi::AnyBuffer b) {
  const auto d = b.dimensions();
  return Dims(d.begin(), d.end());
}

// Checks a call against the shape contract (shapes.h) and the handlers'
// types. `z_like` is z for the forward and grad_z for the backward, whose
// leading axis gives K; `upstream` names the three as the backward's.
inline ffi::Error check_call(ffi::AnyBuffer mean, ffi::AnyBuffer log_var,
                             ffi::AnyBuffer seed, ffi::AnyBuffer z_like,
                             ffi::AnyBuffer kl_like,
                             ffi::AnyBuffer log_ratio_like, bool upstream,
                             ReparamShape* shape) {
  const Dims z = dims_of(z_like);
  ReparamDims dims;
  std::string error = reparam_dims(dims_of(mean), dims_of(log_var),
                                   z.empty() ? 0 : z[0], &dims);
  if (error.empty()) {
    error = upstream ? check_upstream_grads(dims, z, dims_of(kl_like),
                                            dims_of(log_ratio_like))
                     : check_forward_outputs(dims, z, dims_of(kl_like),
                                             dims_of(log_ratio_like));
  }
  if (!error.empty()) return ffi::Error::InvalidArgument(error);
  if (mean.element_type() != ffi::DataType::F32 &&
      mean.element_type() != ffi::DataType::F64) {
    return ffi::Error::InvalidArgument(
        "mean must be f32 or f64 (16-bit types are converted by the caller)");
  }
  for (ffi::AnyBuffer b : {log_var, z_like, kl_like, log_ratio_like}) {
    if (b.element_type() != mean.element_type()) {
      return ffi::Error::InvalidArgument(
          "log_var and the z, kl and log_ratio buffers must have the dtype "
          "of mean");
    }
  }
  if ((seed.element_type() != ffi::DataType::S64 &&
       seed.element_type() != ffi::DataType::S32) ||
      dims_of(seed) != Dims{2}) {
    return ffi::Error::InvalidArgument("seed must be s64[2] or s32[2], got " +
                                       format_dims(dims_of(seed),
                                                   DimsStyle::kList));
  }
  *shape = dims.shape;
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

// A forward call: checked, then launch(T(), shape) with T the storage type,
// unless there is nothing to write (z and kl both empty).
template <typename Launch>
ffi::Error forward_call(ffi::AnyBuffer mean, ffi::AnyBuffer log_var,
                        ffi::AnyBuffer seed, ffi::AnyBuffer z,
                        ffi::AnyBuffer kl, ffi::AnyBuffer log_ratio,
                        Launch&& launch) {
  ReparamShape shape;
  if (auto e = check_call(mean, log_var, seed, z, kl, log_ratio,
                          /*upstream=*/false, &shape);
      e.failure())
    return e;
  if (z.element_count() == 0 && kl.element_count() == 0) {
    return ffi::Error::Success();
  }
  return with_float_type(mean.element_type(),
                         [&](auto tag) { return launch(tag, shape); });
}

// A backward call, likewise; nothing to write when mean is empty.
template <typename Launch>
ffi::Error backward_call(ffi::AnyBuffer mean, ffi::AnyBuffer log_var,
                         ffi::AnyBuffer seed, ffi::AnyBuffer grad_z,
                         ffi::AnyBuffer grad_kl, ffi::AnyBuffer grad_log_ratio,
                         Launch&& launch) {
  ReparamShape shape;
  if (auto e = check_call(mean, log_var, seed, grad_z, grad_kl,
                          grad_log_ratio, /*upstream=*/true, &shape);
      e.failure())
    return e;
  if (mean.element_count() == 0) return ffi::Error::Success();
  return with_float_type(mean.element_type(),
                         [&](auto tag) { return launch(tag, shape); });
}

// The call contract of reparam_kl_ffi.h as bindings, for handlers whose
// context (a thread pool, a stream) is Ctx.
template <typename Ctx>
auto forward_binding() {
  return ffi::Ffi::Bind()
      .Ctx<Ctx>()
      .template Arg<ffi::AnyBuffer>()  // mean
      .template Arg<ffi::AnyBuffer>()  // log_var
      .template Arg<ffi::AnyBuffer>()  // seed
      .template Ret<ffi::AnyBuffer>()  // z
      .template Ret<ffi::AnyBuffer>()  // kl
      .template Ret<ffi::AnyBuffer>();  // log_ratio
}

template <typename Ctx>
auto backward_binding() {
  return ffi::Ffi::Bind()
      .Ctx<Ctx>()
      .template Arg<ffi::AnyBuffer>()  // mean
      .template Arg<ffi::AnyBuffer>()  // log_var
      .template Arg<ffi::AnyBuffer>()  // seed
      .template Arg<ffi::AnyBuffer>()  // grad_z
      .template Arg<ffi::AnyBuffer>()  // grad_kl
      .template Arg<ffi::AnyBuffer>()  // grad_log_ratio
      .template Attr<bool>(kStopAttr)
      .template Ret<ffi::AnyBuffer>()  // grad_mean
      .template Ret<ffi::AnyBuffer>();  // grad_log_var
}

template <typename T>
T* data(ffi::AnyBuffer b) {
  return static_cast<T*>(b.untyped_data());
}

}  // namespace xla_ffi
}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_XLA_FFI_CALL_H_
