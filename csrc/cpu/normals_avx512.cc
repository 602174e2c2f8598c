// The float normal generator on 16 lanes of AVX-512F. The code is compiled
// for that instruction set by the target pragma below, whatever the
// build's flags; the dispatcher calls it only where the CPU has it.
#include "cpu/normals.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

// Only what follows is compiled for avx512f: the shared headers above are
// not, so no inline function of theirs can be emitted with these
// instructions and picked by the linker for a caller on another CPU.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f")
// GCC 12's AVX-512 intrinsics read a deliberately undefined source operand
// (_mm512_undefined_*), which -W[maybe-]uninitialized reports.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "cpu/normals_simd.h"

namespace keras_vae {
namespace cpu {
namespace {

struct Avx512 {
  static constexpr int kWidth = 16;
  using F = __m512;
  using I = __m512i;

  static F set1(float x) { return _mm512_set1_ps(x); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F round(F a) {
    return _mm512_roundscale_ps(a,
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static F loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, F a) { _mm512_storeu_ps(p, a); }
  static F select_nan(F a, F if_nan, F otherwise) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q),
                                otherwise, if_nan);
  }
  static F sqrt(F a) { return _mm512_sqrt_ps(a); }
  static F select_lt(F a, F b, F if_lt, F otherwise) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ),
                                otherwise, if_lt);
  }
  static F select_ieq0(I a, F if_zero, F otherwise) {
    return _mm512_mask_blend_ps(_mm512_test_epi32_mask(a, a), if_zero,
                                otherwise);
  }
  static F xor_sign(F a, I sign) {
    return _mm512_castsi512_ps(
        _mm512_xor_si512(_mm512_castps_si512(a), sign));
  }
  // float(2 * pi * x) with the product taken in double, as TensorFlow does.
  static F two_pi_times(F x) {
    const __m512d two_pi = _mm512_set1_pd(2.0 * M_PI);
    const __m256 lo = _mm512_castps512_ps256(x);
    const __m256 hi =
        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
    const __m256 rlo =
        _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtps_pd(lo), two_pi));
    const __m256 rhi =
        _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtps_pd(hi), two_pi));
    return _mm512_castpd_ps(
        _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(rlo)),
                           _mm256_castps_pd(rhi), 1));
  }

  static I set1_i(uint32_t x) {
    return _mm512_set1_epi32(static_cast<int>(x));
  }
  static I iota() {
    return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                             15);
  }
  static I load_i(const uint32_t* p) { return _mm512_load_si512(p); }
  static I add_i(I a, I b) { return _mm512_add_epi32(a, b); }
  static I sub_i(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I and_i(I a, I b) { return _mm512_and_si512(a, b); }
  static I andnot_i(I a, I b) { return _mm512_andnot_si512(a, b); }
  static I or_i(I a, I b) { return _mm512_or_si512(a, b); }
  static I xor_i(I a, I b) { return _mm512_xor_si512(a, b); }
  template <int kBits>
  static I slli(I a) { return _mm512_slli_epi32(a, kBits); }
  template <int kBits>
  static I srli(I a) { return _mm512_srli_epi32(a, kBits); }
  static F as_f(I a) { return _mm512_castsi512_ps(a); }
  static I as_i(F a) { return _mm512_castps_si512(a); }
  static F to_f(I a) { return _mm512_cvtepi32_ps(a); }
  static I to_i(F a) { return _mm512_cvttps_epi32(a); }

  // The 64-bit products a * m, split into high and low words per lane.
  static void mul_hi_lo(I a, uint32_t m, I* hi, I* lo) {
    const I mv = set1_i(m);
    const I even = _mm512_mul_epu32(a, mv);
    const I odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), mv);
    *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
    *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  }

  // Lane j of n0..n3 are the four normals of block j: out[4j + 0..3].
  static void store_blocks(F n0, F n1, F n2, F n3, float* out) {
    const F a = _mm512_unpacklo_ps(n0, n1), b = _mm512_unpackhi_ps(n0, n1);
    const F c = _mm512_unpacklo_ps(n2, n3), d = _mm512_unpackhi_ps(n2, n3);
    // Each 128-bit lane i of u_k holds block 4i + k.
    const F u0 = _mm512_castpd_ps(
        _mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
    const F u1 = _mm512_castpd_ps(
        _mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
    const F u2 = _mm512_castpd_ps(
        _mm512_unpacklo_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
    const F u3 = _mm512_castpd_ps(
        _mm512_unpackhi_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
    const F t0 = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(1, 0, 1, 0));
    const F t1 = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(1, 0, 1, 0));
    const F t2 = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(3, 2, 3, 2));
    const F t3 = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(3, 2, 3, 2));
    _mm512_storeu_ps(out,
                     _mm512_shuffle_f32x4(t0, t1, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_storeu_ps(out + 16,
                     _mm512_shuffle_f32x4(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)));
    _mm512_storeu_ps(out + 32,
                     _mm512_shuffle_f32x4(t2, t3, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_storeu_ps(out + 48,
                     _mm512_shuffle_f32x4(t2, t3, _MM_SHUFFLE(3, 1, 3, 1)));
  }
};

}  // namespace

namespace detail {
void normal_blocks_f32_avx512(const PhiloxKey& key, const PhiloxBlock& first,
                              int64_t num_blocks, float* out) {
  simd::Kernels<Avx512>::generate(key, first, num_blocks, out);
}
void scales_from_log_var_f32_avx512(const float* log_var, int64_t n,
                          float* scale) {
  simd::Kernels<Avx512>::scales(log_var, n, scale);
}
}  // namespace detail

}  // namespace cpu
}  // namespace keras_vae

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#endif  // x86-64
