// The float normal generator on 8 lanes of AVX2 with FMA. The code is
// compiled for that instruction set by the target pragma below, whatever
// the build's flags; the dispatcher calls it only where the CPU has both.
#include "cpu/normals.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

// Only what follows is compiled for avx2,fma: the shared headers above are
// not, so no inline function of theirs can be emitted with these
// instructions and picked by the linker for a caller on another CPU.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#include "cpu/normals_simd.h"

namespace keras_vae {
namespace cpu {
namespace {

struct Avx2 {
  static constexpr int kWidth = 8;
  using F = __m256;
  using I = __m256i;

  static F set1(float x) { return _mm256_set1_ps(x); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F round(F a) {
    return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static F loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void storeu(float* p, F a) { _mm256_storeu_ps(p, a); }
  static F select_nan(F a, F if_nan, F otherwise) {
    return _mm256_blendv_ps(otherwise, if_nan,
                            _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
  static F sqrt(F a) { return _mm256_sqrt_ps(a); }
  static F select_lt(F a, F b, F if_lt, F otherwise) {
    return _mm256_blendv_ps(otherwise, if_lt,
                            _mm256_cmp_ps(a, b, _CMP_LT_OQ));
  }
  static F select_ieq0(I a, F if_zero, F otherwise) {
    const I zero = _mm256_cmpeq_epi32(a, _mm256_setzero_si256());
    return _mm256_blendv_ps(otherwise, if_zero, _mm256_castsi256_ps(zero));
  }
  static F xor_sign(F a, I sign) {
    return _mm256_xor_ps(a, _mm256_castsi256_ps(sign));
  }
  // float(2 * pi * x) with the product taken in double, as TensorFlow does.
  static F two_pi_times(F x) {
    const __m256d two_pi = _mm256_set1_pd(2.0 * M_PI);
    const __m128 lo = _mm256_cvtpd_ps(
        _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)), two_pi));
    const __m128 hi = _mm256_cvtpd_ps(
        _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)), two_pi));
    return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
  }

  static I set1_i(uint32_t x) {
    return _mm256_set1_epi32(static_cast<int>(x));
  }
  static I iota() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
  static I load_i(const uint32_t* p) {
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
  }
  static I add_i(I a, I b) { return _mm256_add_epi32(a, b); }
  static I sub_i(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I and_i(I a, I b) { return _mm256_and_si256(a, b); }
  static I andnot_i(I a, I b) { return _mm256_andnot_si256(a, b); }
  static I or_i(I a, I b) { return _mm256_or_si256(a, b); }
  static I xor_i(I a, I b) { return _mm256_xor_si256(a, b); }
  template <int kBits>
  static I slli(I a) { return _mm256_slli_epi32(a, kBits); }
  template <int kBits>
  static I srli(I a) { return _mm256_srli_epi32(a, kBits); }
  static F as_f(I a) { return _mm256_castsi256_ps(a); }
  static I as_i(F a) { return _mm256_castps_si256(a); }
  static F to_f(I a) { return _mm256_cvtepi32_ps(a); }
  static I to_i(F a) { return _mm256_cvttps_epi32(a); }

  // The 64-bit products a * m, split into high and low words per lane.
  static void mul_hi_lo(I a, uint32_t m, I* hi, I* lo) {
    const I mv = set1_i(m);
    const I even = _mm256_mul_epu32(a, mv);
    const I odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), mv);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  }

  // Lane j of n0..n3 are the four normals of block j: out[4j + 0..3].
  static void store_blocks(F n0, F n1, F n2, F n3, float* out) {
    const F a = _mm256_unpacklo_ps(n0, n1), b = _mm256_unpackhi_ps(n0, n1);
    const F c = _mm256_unpacklo_ps(n2, n3), d = _mm256_unpackhi_ps(n2, n3);
    // Each 128-bit lane i of u_k holds block 4i + k.
    const F u0 = _mm256_castpd_ps(
        _mm256_unpacklo_pd(_mm256_castps_pd(a), _mm256_castps_pd(c)));
    const F u1 = _mm256_castpd_ps(
        _mm256_unpackhi_pd(_mm256_castps_pd(a), _mm256_castps_pd(c)));
    const F u2 = _mm256_castpd_ps(
        _mm256_unpacklo_pd(_mm256_castps_pd(b), _mm256_castps_pd(d)));
    const F u3 = _mm256_castpd_ps(
        _mm256_unpackhi_pd(_mm256_castps_pd(b), _mm256_castps_pd(d)));
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(u0, u1, 0x20));
    _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
    _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
  }
};

}  // namespace

namespace detail {
void normal_blocks_f32_avx2(const PhiloxKey& key, const PhiloxBlock& first,
                            int64_t num_blocks, float* out) {
  simd::Kernels<Avx2>::generate(key, first, num_blocks, out);
}
void scales_from_log_var_f32_avx2(const float* log_var, int64_t n,
                          float* scale) {
  simd::Kernels<Avx2>::scales(log_var, n, scale);
}
}  // namespace detail

}  // namespace cpu
}  // namespace keras_vae

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // x86-64
