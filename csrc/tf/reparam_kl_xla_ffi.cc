// Registers the typed-FFI handlers with the XLA inside TensorFlow. A
// translation unit of its own: the public xla/ffi/api headers and
// TensorFlow's internal XLA headers declare the same namespace differently.
#include "xla/ffi/api/api.h"
#include "xla/ffi/api/ffi.h"
#include "xla/reparam_kl_ffi.h"

// Exported by libtensorflow_framework: the XLA FFI of this TensorFlow.
extern "C" const XLA_FFI_Api* XLA_FFI_GetApi();

namespace keras_vae {
namespace {

using xla_ffi::kBackwardTarget;
using xla_ffi::kForwardTarget;

XLA_FFI_REGISTER_HANDLER(XLA_FFI_GetApi(), kForwardTarget, "Host",
                         KerasVaeReparamKlForwardHost);
XLA_FFI_REGISTER_HANDLER(XLA_FFI_GetApi(), kBackwardTarget, "Host",
                         KerasVaeReparamKlBackwardHost);
#if KERAS_VAE_WITH_CUDA
XLA_FFI_REGISTER_HANDLER(XLA_FFI_GetApi(), kForwardTarget, "CUDA",
                         KerasVaeReparamKlForwardCuda);
XLA_FFI_REGISTER_HANDLER(XLA_FFI_GetApi(), kBackwardTarget, "CUDA",
                         KerasVaeReparamKlBackwardCuda);
#endif

}  // namespace
}  // namespace keras_vae
