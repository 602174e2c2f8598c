// Blocks of the Philox/Box-Muller float normals of reparam_kl.h, generated
// many blocks at a time with the widest vector instructions the CPU has.
//
// The vector paths (AVX2+FMA, AVX-512) live in their own translation units,
// compiled with per-file target flags; this interface is plain C++ and picks
// one at run time from the CPU's features. Every path implements the contract
// of NormalsPerBlock<float>: the numbers of block g are the ones its scalar
// fill() gives (and tf.random.stateless_normal), bit for bit on the scalar
// path and to |difference| <= 1e-5 on the vector paths, whose log and sincos
// are polynomials rather than the C library's (measured: at most 4.8e-7, one
// float ulp at |eps| in [4, 8), over 1e7 draws).
#ifndef KERAS_VAE_CSRC_CPU_NORMALS_H_
#define KERAS_VAE_CSRC_CPU_NORMALS_H_

#include <cstdint>

#include "reparam_kl.h"

namespace keras_vae {
namespace cpu {

// The instruction sets a float normal generator exists for, narrowest first.
enum class CpuIsa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// Writes the 4 * num_blocks float normals of Philox blocks first_block,
// first_block + 1, ... of the stream to out, in the order of the scalar
// NormalsPerBlock<float>::fill.
void normal_blocks_f32(const PhiloxStream& stream, uint64_t first_block,
                       int64_t num_blocks, float* out);

// scale[i] = exp(0.5 * log_var[i]) for i < n, on the same instruction set
// (within a float rounding error or two of std::exp).
void scales_from_log_var_f32(const float* log_var, int64_t n, float* scale);

// The generator in use. At first use it is the widest one the CPU supports,
// capped by the environment variable KERAS_VAE_CPU_ISA ("scalar", "avx2",
// "avx512") when that is set.
CpuIsa active_cpu_isa();

// Whether this build and this CPU can run `isa`.
bool cpu_isa_supported(CpuIsa isa);

// Selects the generator; returns false (and changes nothing) when `isa` is not
// supported. Meant for tests and measurements: it affects every later call
// in this library.
bool set_cpu_isa(CpuIsa isa);

// "scalar", "avx2", "avx512".
const char* cpu_isa_name(CpuIsa isa);

// Parses a name of cpu_isa_name(); returns false for any other string.
bool parse_cpu_isa(const char* name, CpuIsa* isa);

namespace detail {
// The vector generators: `first` is the counter of the first block.
void normal_blocks_f32_avx2(const PhiloxKey& key, const PhiloxBlock& first,
                            int64_t num_blocks, float* out);
void normal_blocks_f32_avx512(const PhiloxKey& key, const PhiloxBlock& first,
                              int64_t num_blocks, float* out);
void scales_from_log_var_f32_avx2(const float* log_var, int64_t n,
                                  float* scale);
void scales_from_log_var_f32_avx512(const float* log_var, int64_t n,
                                    float* scale);
}  // namespace detail

}  // namespace cpu
}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_CPU_NORMALS_H_
