// The CUDA half of keras_vae._kernels, compiled in when CUDA is enabled.
#ifndef KERAS_VAE_CSRC_PYTHON_CUDA_ENTRY_H_
#define KERAS_VAE_CSRC_PYTHON_CUDA_ENTRY_H_

#include <pybind11/pybind11.h>

namespace keras_vae {

// Adds cuda_forward, cuda_backward and cuda_launch_plan to the module.
void register_cuda_entry(pybind11::module_& m);

}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_PYTHON_CUDA_ENTRY_H_
