// The CUDA kernels and their launchers (KVAE_CUDA_SOURCE) compiled by g++
// over the SIMT emulation as a translation unit of their own, for tests that
// reach them as the bindings do: through cuda/reparam_kl_cuda.h.
#include "simt/simt.h"
// clang-format off
#include KVAE_CUDA_SOURCE
// clang-format on
