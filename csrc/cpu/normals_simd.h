// Philox4x32-10 and Box-Muller over the lanes of a vector, and exp for the
// scales exp(0.5 * log_var), written once for any vector width. Included only
// by the per-ISA translation units, each of which supplies `V`: a struct of
// static wrappers over its intrinsics, defined in an anonymous namespace so
// that no code compiled for one instruction set can be linked in place of
// another's.
//
// Lane j of a batch is Philox block first + j: the four counter words are four
// vectors (structure of arrays), and the 32x32->64-bit products of a round are
// taken on the even and the odd lanes separately. Box-Muller follows
// reparam_kl.h step by step; log and sincos are Cephes' single-precision
// polynomials (as in Eigen's packet math), which stay within a few float
// rounding errors of the C library's.
#ifndef KERAS_VAE_CSRC_CPU_NORMALS_SIMD_H_
#define KERAS_VAE_CSRC_CPU_NORMALS_SIMD_H_

#include <cstdint>
#include <cstring>

#include "reparam_kl.h"

namespace keras_vae {
namespace cpu {
namespace simd {

template <class V>
struct Kernels {
  using F = typename V::F;
  using I = typename V::I;
  static constexpr int kWidth = V::kWidth;

  // ln(x) for positive normal x (Cephes logf).
  static F log(F x) {
    const I bits = V::as_i(x);
    // x = m * 2^e with m in [0.5, 1).
    F e = V::to_f(V::sub_i(V::template srli<23>(bits), V::set1_i(126)));
    F m = V::as_f(V::or_i(V::and_i(bits, V::set1_i(0x007fffffu)),
                          V::set1_i(0x3f000000u)));
    // Keep m - 1 in [sqrt(0.5) - 1, sqrt(2) - 1): take 2m and e - 1 below.
    const F one = V::set1(1.0f);
    const F sqrt_half = V::set1(0.707106781186547524f);
    e = V::select_lt(m, sqrt_half, V::sub(e, one), e);
    const F r = V::select_lt(m, sqrt_half, V::sub(V::add(m, m), one),
                             V::sub(m, one));
    const F r2 = V::mul(r, r);
    F p = V::set1(7.0376836292e-2f);
    p = V::fmadd(p, r, V::set1(-1.1514610310e-1f));
    p = V::fmadd(p, r, V::set1(1.1676998740e-1f));
    p = V::fmadd(p, r, V::set1(-1.2420140846e-1f));
    p = V::fmadd(p, r, V::set1(1.4249322787e-1f));
    p = V::fmadd(p, r, V::set1(-1.6668057665e-1f));
    p = V::fmadd(p, r, V::set1(2.0000714765e-1f));
    p = V::fmadd(p, r, V::set1(-2.4999993993e-1f));
    p = V::fmadd(p, r, V::set1(3.3333331174e-1f));
    F y = V::mul(V::mul(p, r), r2);
    // ln 2 split in two, so that e * ln2_hi is exact.
    y = V::fmadd(e, V::set1(-2.12194440e-4f), y);
    y = V::fnmadd(V::set1(0.5f), r2, y);
    return V::fmadd(e, V::set1(0.693359375f), V::add(r, y));
  }

  // sin(x), cos(x) for 0 <= x < 8192 (Cephes sinf/cosf).
  static void sincos(F x, F* s, F* c) {
    // Octant j (rounded up to even) and x reduced by j * pi/4, with pi/4 in
    // three parts so that the reduction loses nothing.
    I j = V::to_i(V::mul(x, V::set1(1.27323954473516f)));
    j = V::and_i(V::add_i(j, V::set1_i(1)), V::set1_i(~1u));
    const F y = V::to_f(j);
    x = V::fnmadd(y, V::set1(0.78515625f), x);
    x = V::fnmadd(y, V::set1(2.4187564849853515625e-4f), x);
    x = V::fnmadd(y, V::set1(3.77489497744594108e-8f), x);
    const I sin_sign = V::template slli<29>(V::and_i(j, V::set1_i(4)));
    const I cos_sign = V::template slli<29>(
        V::andnot_i(V::sub_i(j, V::set1_i(2)), V::set1_i(4)));
    const I use_sin_poly = V::and_i(j, V::set1_i(2));  // 0: sin from sin poly
    const F z = V::mul(x, x);
    F pc = V::fmadd(V::set1(2.443315711809948e-5f), z,
                    V::set1(-1.388731625493765e-3f));
    pc = V::fmadd(pc, z, V::set1(4.166664568298827e-2f));
    pc = V::mul(pc, V::mul(z, z));
    pc = V::add(V::fnmadd(V::set1(0.5f), z, pc), V::set1(1.0f));
    F ps = V::fmadd(V::set1(-1.9515295891e-4f), z, V::set1(8.3321608736e-3f));
    ps = V::fmadd(ps, z, V::set1(-1.6666654611e-1f));
    ps = V::fmadd(V::mul(ps, z), x, x);
    *s = V::xor_sign(V::select_ieq0(use_sin_poly, ps, pc), sin_sign);
    *c = V::xor_sign(V::select_ieq0(use_sin_poly, pc, ps), cos_sign);
  }

  // e^x (Cephes expf), with e^+-inf = inf, 0 and NaN kept.
  static F exp(F x) {
    // Past these bounds e^x is inf or rounds to 0 anyway.
    const F clamped = V::min(V::max(x, V::set1(-104.0f)), V::set1(88.75f));
    const F n = V::round(V::mul(clamped, V::set1(1.44269504088896341f)));
    F r = V::fnmadd(n, V::set1(0.693359375f), clamped);
    r = V::fnmadd(n, V::set1(-2.12194440e-4f), r);
    F p = V::fmadd(V::set1(1.9875691500e-4f), r, V::set1(1.3981999507e-3f));
    p = V::fmadd(p, r, V::set1(8.3334519073e-3f));
    p = V::fmadd(p, r, V::set1(4.1665795894e-2f));
    p = V::fmadd(p, r, V::set1(1.6666665459e-1f));
    p = V::fmadd(p, r, V::set1(5.0000001201e-1f));
    p = V::add(V::fmadd(p, V::mul(r, r), r), V::set1(1.0f));
    // p * 2^n in two factors, each a normal float for n in [-150, 128].
    const I n_half = V::to_i(V::mul(n, V::set1(0.5f)));
    const I n_rest = V::sub_i(V::to_i(n), n_half);
    const F y = V::mul(V::mul(p, pow2(n_half)), pow2(n_rest));
    return V::select_nan(x, x, y);
  }

  // 2^k for integer k in [-126, 127].
  static F pow2(I k) {
    return V::as_f(V::template slli<23>(V::add_i(k, V::set1_i(127))));
  }

  // scale[i] = exp(0.5 * log_var[i]) for i < n.
  static void scales(const float* log_var, int64_t n, float* scale) {
    const F half = V::set1(0.5f);
    int64_t i = 0;
    for (; i + kWidth <= n; i += kWidth) {
      V::storeu(scale + i, exp(V::mul(half, V::loadu(log_var + i))));
    }
    if (i < n) {
      alignas(64) float tail[kWidth] = {};
      std::memcpy(tail, log_var + i, sizeof(float) * (n - i));
      V::storeu(tail, exp(V::mul(half, V::loadu(tail))));
      std::memcpy(scale + i, tail, sizeof(float) * (n - i));
    }
  }

  // A float in [0, 1) from the low 23 bits of x (uint32_to_unit_float).
  static F unit_float(I x) {
    return V::sub(V::as_f(V::or_i(V::and_i(x, V::set1_i(0x007fffffu)),
                                  V::set1_i(0x3f800000u))),
                  V::set1(1.0f));
  }

  // box_muller(x0, x1, f0, f1) of reparam_kl.h on every lane.
  static void box_muller(I x0, I x1, F* f0, F* f1) {
    const F u1 = V::max(unit_float(x0), V::set1(1.0e-7f));
    const F angle = V::two_pi_times(unit_float(x1));
    const F radius = V::sqrt(V::mul(V::set1(-2.0f), log(u1)));
    F s, c;
    sincos(angle, &s, &c);
    *f0 = V::mul(s, radius);
    *f1 = V::mul(c, radius);
  }

  // The 128-bit counter + 1 (philox_skip by one).
  static void increment(PhiloxBlock* c) {
    if (++c->v[0] == 0 && ++c->v[1] == 0 && ++c->v[2] == 0) ++c->v[3];
  }

  static void generate(const PhiloxKey& key, const PhiloxBlock& first,
                       int64_t num_blocks, float* out) {
    I round_key0[10], round_key1[10];
    for (int r = 0; r < 10; ++r) {
      round_key0[r] = V::set1_i(key.v[0] + r * philox_detail::kKeyStepA);
      round_key1[r] = V::set1_i(key.v[1] + r * philox_detail::kKeyStepB);
    }
    PhiloxBlock next = first;  // counter of the batch's lane 0
    alignas(64) float partial[4 * kWidth];
    for (int64_t b = 0; b < num_blocks; b += kWidth) {
      I c0, c1, c2, c3;
      if (next.v[0] <= 0xffffffffu - (kWidth - 1)) {
        // No carry out of the low word inside the batch.
        c0 = V::add_i(V::set1_i(next.v[0]), V::iota());
        c1 = V::set1_i(next.v[1]);
        c2 = V::set1_i(next.v[2]);
        c3 = V::set1_i(next.v[3]);
        next.v[0] += kWidth;
        if (next.v[0] < kWidth) increment_high(&next);
      } else {
        alignas(64) uint32_t words[4][kWidth];
        for (int j = 0; j < kWidth; ++j) {
          for (int w = 0; w < 4; ++w) words[w][j] = next.v[w];
          increment(&next);
        }
        c0 = V::load_i(words[0]);
        c1 = V::load_i(words[1]);
        c2 = V::load_i(words[2]);
        c3 = V::load_i(words[3]);
      }
      for (int r = 0; r < 10; ++r) {
        I hi0, lo0, hi1, lo1;
        V::mul_hi_lo(c0, philox_detail::kRoundMulA, &hi0, &lo0);
        V::mul_hi_lo(c2, philox_detail::kRoundMulB, &hi1, &lo1);
        c0 = V::xor_i(V::xor_i(hi1, c1), round_key0[r]);
        c1 = lo1;
        c2 = V::xor_i(V::xor_i(hi0, c3), round_key1[r]);
        c3 = lo0;
      }
      F n0, n1, n2, n3;
      box_muller(c0, c1, &n0, &n1);
      box_muller(c2, c3, &n2, &n3);
      const int64_t left = num_blocks - b;
      if (left >= kWidth) {
        V::store_blocks(n0, n1, n2, n3, out + 4 * b);
      } else {
        V::store_blocks(n0, n1, n2, n3, partial);
        std::memcpy(out + 4 * b, partial, sizeof(float) * 4 * left);
      }
    }
  }

  // Carries a wrapped low word into the upper three.
  static void increment_high(PhiloxBlock* c) {
    if (++c->v[1] == 0 && ++c->v[2] == 0) ++c->v[3];
  }
};

}  // namespace simd
}  // namespace cpu
}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_CPU_NORMALS_SIMD_H_
