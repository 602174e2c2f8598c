// The typed-FFI handlers of xla/ as PyCapsules, for frontends that register
// them by pointer (JAX's jax.ffi.register_ffi_target).
#ifndef KERAS_VAE_CSRC_PYTHON_FFI_CAPSULES_H_
#define KERAS_VAE_CSRC_PYTHON_FFI_CAPSULES_H_

#include <pybind11/pybind11.h>

namespace keras_vae {

// Adds ffi_handlers() to the module. Without the FFI headers at build time
// (KERAS_VAE_WITH_XLA_FFI=0) it raises, saying so.
void register_ffi_capsules(pybind11::module_& m);

}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_PYTHON_FFI_CAPSULES_H_
