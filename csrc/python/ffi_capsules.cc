// keras_vae._kernels.ffi_handlers(): the handlers compiled into this module
// against the FFI headers of the jaxlib present at build time (the C API is
// versioned, and the headers of TensorFlow's XLA may be older or newer).
#include "python/ffi_capsules.h"

#include <stdexcept>

#if KERAS_VAE_WITH_XLA_FFI
#include "xla/reparam_kl_ffi.h"
#endif

namespace py = pybind11;

namespace keras_vae {
namespace {

#if KERAS_VAE_WITH_XLA_FFI
// The capsule name jax.ffi.pycapsule gives; JAX reads the pointer whatever
// the name, but other consumers may check it.
constexpr const char kCapsuleName[] = "xla._CUSTOM_CALL_TARGET";

py::capsule capsule(XLA_FFI_Error* (*handler)(XLA_FFI_CallFrame*)) {
  return py::capsule(reinterpret_cast<void*>(handler), kCapsuleName);
}

py::dict ffi_handlers() {
  py::dict forward, backward;
  forward["cpu"] = capsule(&KerasVaeReparamKlForwardHost);
  backward["cpu"] = capsule(&KerasVaeReparamKlBackwardHost);
#if KERAS_VAE_WITH_CUDA
  forward["cuda"] = capsule(&KerasVaeReparamKlForwardCuda);
  backward["cuda"] = capsule(&KerasVaeReparamKlBackwardCuda);
#endif
  py::dict out;
  out[xla_ffi::kForwardTarget] = forward;
  out[xla_ffi::kBackwardTarget] = backward;
  return out;
}
#else
py::dict ffi_handlers() {
  throw std::runtime_error(
      "keras_vae._kernels was built without the XLA FFI handlers: jax was "
      "not importable by the Python that built it, so its FFI headers were "
      "not found. Rebuild with jax and jaxlib installed.");
}
#endif

}  // namespace

void register_ffi_capsules(py::module_& m) {
  m.def("ffi_handlers", &ffi_handlers,
        "{target name: {platform: PyCapsule}}: the typed-FFI handlers of the "
        "forward and backward kernels, for jax.ffi.register_ffi_target "
        "(api_version=1). Platforms: 'cpu', and 'cuda' in CUDA builds.");
  m.attr("has_ffi_handlers") = static_cast<bool>(KERAS_VAE_WITH_XLA_FFI);
}

}  // namespace keras_vae
