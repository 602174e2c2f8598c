// Run-time choice of the float normal generator, and the portable one.
#include "cpu/normals.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

// The vector generators exist on x86-64 only.
#if defined(__x86_64__) || defined(_M_X64)
#define KERAS_VAE_X86_SIMD 1
#else
#define KERAS_VAE_X86_SIMD 0
#endif

namespace keras_vae {
namespace cpu {
namespace {

constexpr const char* kIsaNames[] = {"scalar", "avx2", "avx512"};

CpuIsa widest_supported_isa() {
  if (cpu_isa_supported(CpuIsa::kAvx512)) return CpuIsa::kAvx512;
  if (cpu_isa_supported(CpuIsa::kAvx2)) return CpuIsa::kAvx2;
  return CpuIsa::kScalar;
}

// The widest supported generator, no wider than KERAS_VAE_CPU_ISA names.
CpuIsa initial_isa() {
  CpuIsa isa = widest_supported_isa();
  CpuIsa cap;
  const char* requested = std::getenv("KERAS_VAE_CPU_ISA");
  if (requested != nullptr && parse_cpu_isa(requested, &cap)) {
    while (static_cast<int>(isa) > static_cast<int>(cap) ||
           !cpu_isa_supported(isa)) {
      isa = static_cast<CpuIsa>(static_cast<int>(isa) - 1);
    }
  }
  return isa;
}

std::atomic<int>& selected_isa() {
  static std::atomic<int> isa{static_cast<int>(initial_isa())};
  return isa;
}

void normal_blocks_f32_scalar(const PhiloxStream& stream, uint64_t first_block,
                              int64_t num_blocks, float* out) {
  for (int64_t b = 0; b < num_blocks; ++b) {
    NormalsPerBlock<float>::fill(stream.block(first_block + b), out + 4 * b);
  }
}

}  // namespace

bool cpu_isa_supported(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return true;
    case CpuIsa::kAvx2:
#if KERAS_VAE_X86_SIMD
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
      return false;
#endif
    case CpuIsa::kAvx512:
#if KERAS_VAE_X86_SIMD
      return __builtin_cpu_supports("avx512f");
#else
      return false;
#endif
  }
  return false;
}

CpuIsa active_cpu_isa() {
  return static_cast<CpuIsa>(selected_isa().load(std::memory_order_relaxed));
}

bool set_cpu_isa(CpuIsa isa) {
  if (!cpu_isa_supported(isa)) return false;
  selected_isa().store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

const char* cpu_isa_name(CpuIsa isa) {
  return kIsaNames[static_cast<int>(isa)];
}

bool parse_cpu_isa(const char* name, CpuIsa* isa) {
  for (int i = 0; i < 3; ++i) {
    if (std::strcmp(name, kIsaNames[i]) == 0) {
      *isa = static_cast<CpuIsa>(i);
      return true;
    }
  }
  return false;
}

void normal_blocks_f32(const PhiloxStream& stream, uint64_t first_block,
                       int64_t num_blocks, float* out) {
  switch (active_cpu_isa()) {
#if KERAS_VAE_X86_SIMD
    case CpuIsa::kAvx512:
      return detail::normal_blocks_f32_avx512(
          stream.key, philox_skip(stream.counter, first_block), num_blocks,
          out);
    case CpuIsa::kAvx2:
      return detail::normal_blocks_f32_avx2(
          stream.key, philox_skip(stream.counter, first_block), num_blocks,
          out);
#endif
    default:
      return normal_blocks_f32_scalar(stream, first_block, num_blocks, out);
  }
}

void scales_from_log_var_f32(const float* log_var, int64_t n, float* scale) {
  switch (active_cpu_isa()) {
#if KERAS_VAE_X86_SIMD
    case CpuIsa::kAvx512:
      return detail::scales_from_log_var_f32_avx512(log_var, n, scale);
    case CpuIsa::kAvx2:
      return detail::scales_from_log_var_f32_avx2(log_var, n, scale);
#endif
    default:
      for (int64_t i = 0; i < n; ++i) scale[i] = std::exp(0.5f * log_var[i]);
  }
}

}  // namespace cpu
}  // namespace keras_vae
