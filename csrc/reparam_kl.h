// The math of the fused reparameterize-and-KL step, shared by every kernel.
//
// Nothing here knows about TensorFlow, pybind11 or CUDA streams: the CPU
// kernels, the CUDA kernels and the standalone binding all include this file,
// so the noise layout and the per-element formulas exist exactly once.
//
// Noise contract. For a seed (s0, s1) and an output of M = K*N*D elements,
// element i of z uses the normal number that
// tf.random.stateless_normal([K, ..., D], seed=(s0, s1)) puts at flat index i
// (outside XLA, CPU, default algorithm = Philox):
//   * the seed is scrambled into a Philox4x32-10 key and counter by one Philox
//     call (TensorFlow's GenerateKey);
//   * element i is lane i % P of block i / P, where block g is the Philox
//     output for counter + g and P = 4 normals per block for float (two
//     Box-Muller pairs), P = 2 for double (one pair from four 32-bit words).
#ifndef KERAS_VAE_CSRC_REPARAM_KL_H_
#define KERAS_VAE_CSRC_REPARAM_KL_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define KVAE_HD __host__ __device__ __forceinline__
#else
#define KVAE_HD inline
#endif

namespace keras_vae {

// ---------------------------------------------------------------------------
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").

struct PhiloxBlock {
  uint32_t v[4];
};

struct PhiloxKey {
  uint32_t v[2];
};

namespace philox_detail {
constexpr uint32_t kRoundMulA = 0xD2511F53u;
constexpr uint32_t kRoundMulB = 0xCD9E8D57u;
constexpr uint32_t kKeyStepA = 0x9E3779B9u;
constexpr uint32_t kKeyStepB = 0xBB67AE85u;

KVAE_HD void mul_hi_lo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  *lo = static_cast<uint32_t>(product);
  *hi = static_cast<uint32_t>(product >> 32);
}

KVAE_HD PhiloxBlock round(const PhiloxBlock& c, const PhiloxKey& k) {
  uint32_t hi0, lo0, hi1, lo1;
  mul_hi_lo(kRoundMulA, c.v[0], &hi0, &lo0);
  mul_hi_lo(kRoundMulB, c.v[2], &hi1, &lo1);
  PhiloxBlock r;
  r.v[0] = hi1 ^ c.v[1] ^ k.v[0];
  r.v[1] = lo1;
  r.v[2] = hi0 ^ c.v[3] ^ k.v[1];
  r.v[3] = lo0;
  return r;
}
}  // namespace philox_detail

// The ten-round Philox bijection of one 128-bit counter.
KVAE_HD PhiloxBlock philox4x32_10(PhiloxBlock counter, PhiloxKey key) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    counter = philox_detail::round(counter, key);
    key.v[0] += philox_detail::kKeyStepA;
    key.v[1] += philox_detail::kKeyStepB;
  }
  return counter;
}

// counter + n as a 128-bit integer (TensorFlow's PhiloxRandom::Skip).
KVAE_HD PhiloxBlock philox_skip(PhiloxBlock c, uint64_t n) {
  const uint32_t lo = static_cast<uint32_t>(n);
  uint32_t hi = static_cast<uint32_t>(n >> 32);
  c.v[0] += lo;
  if (c.v[0] < lo) ++hi;
  c.v[1] += hi;
  if (c.v[1] < hi) {
    if (++c.v[2] == 0) ++c.v[3];
  }
  return c;
}

// The stream a stateless seed selects: a key and the counter of block 0.
struct PhiloxStream {
  PhiloxKey key;
  PhiloxBlock counter;

  KVAE_HD PhiloxBlock block(uint64_t g) const {
    return philox4x32_10(philox_skip(counter, g), key);
  }
};

// Scrambles a user seed as TensorFlow's stateless kernels do, so that both
// halves of the seed matter equally.
KVAE_HD PhiloxStream stream_from_seed(uint64_t seed0, uint64_t seed1) {
  PhiloxKey key = {{0x3ec8f720u, 0x02461e29u}};
  PhiloxBlock counter = {{static_cast<uint32_t>(seed0),
                          static_cast<uint32_t>(seed0 >> 32),
                          static_cast<uint32_t>(seed1),
                          static_cast<uint32_t>(seed1 >> 32)}};
  const PhiloxBlock mix = philox4x32_10(counter, key);
  PhiloxStream s;
  s.key.v[0] = mix.v[0];
  s.key.v[1] = mix.v[1];
  s.counter.v[0] = 0;
  s.counter.v[1] = 0;
  s.counter.v[2] = mix.v[2];
  s.counter.v[3] = mix.v[3];
  return s;
}

// ---------------------------------------------------------------------------
// Uniform and normal numbers from Philox words (TensorFlow's distributions).

KVAE_HD float uint32_to_unit_float(uint32_t x) {
  const uint32_t bits = (127u << 23) | (x & 0x7fffffu);  // [1, 2)
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f - 1.0f;
}

KVAE_HD double uint64_to_unit_double(uint32_t hi, uint32_t lo) {
  const uint64_t bits = (static_cast<uint64_t>(1023) << 52) |
                        (static_cast<uint64_t>(hi & 0xfffffu) << 32) | lo;
  double d;
  memcpy(&d, &bits, sizeof(d));
  return d - 1.0;
}

KVAE_HD void box_muller(uint32_t x0, uint32_t x1, float* f0, float* f1) {
  const float kEpsilon = 1.0e-7f;  // keeps log() finite
  float u1 = uint32_to_unit_float(x0);
  if (u1 < kEpsilon) u1 = kEpsilon;
  // The angle is formed in double and rounded once, as TensorFlow does.
  const float v1 =
      static_cast<float>(2.0f * M_PI * uint32_to_unit_float(x1));
  const float u2 = sqrtf(-2.0f * logf(u1));
  sincosf(v1, f0, f1);
  *f0 *= u2;
  *f1 *= u2;
}

KVAE_HD void box_muller(uint32_t x0, uint32_t x1, uint32_t x2, uint32_t x3,
                        double* d0, double* d1) {
  const double kEpsilon = 1.0e-7;
  double u1 = uint64_to_unit_double(x0, x1);
  if (u1 < kEpsilon) u1 = kEpsilon;
  const double v1 = 2 * M_PI * uint64_to_unit_double(x2, x3);
  const double u2 = sqrt(-2.0 * log(u1));
  sincos(v1, d0, d1);
  *d0 *= u2;
  *d1 *= u2;
}

// How many normals of compute type C one Philox block yields, and which.
template <typename C>
struct NormalsPerBlock;

template <>
struct NormalsPerBlock<float> {
  static constexpr int kCount = 4;
  KVAE_HD static void fill(const PhiloxBlock& b, float* out) {
    box_muller(b.v[0], b.v[1], &out[0], &out[1]);
    box_muller(b.v[2], b.v[3], &out[2], &out[3]);
  }
};

template <>
struct NormalsPerBlock<double> {
  static constexpr int kCount = 2;
  KVAE_HD static void fill(const PhiloxBlock& b, double* out) {
    box_muller(b.v[0], b.v[1], b.v[2], b.v[3], &out[0], &out[1]);
  }
};

// Sequential reader of the normals at flat indices i, i+1, ...: one block is
// generated per kCount elements and the position needs no division per step.
template <typename C>
struct NormalCursor {
  static constexpr int kCount = NormalsPerBlock<C>::kCount;
  const PhiloxStream* stream;
  uint64_t next_block;
  int lane;
  C buf[kCount];

  KVAE_HD NormalCursor(const PhiloxStream* s, uint64_t flat_index)
      : stream(s), next_block(flat_index / kCount),
        lane(static_cast<int>(flat_index % kCount)) {
    refill();
  }
  KVAE_HD void refill() {
    NormalsPerBlock<C>::fill(stream->block(next_block++), buf);
  }
  KVAE_HD C next() {
    if (lane == kCount) {
      refill();
      lane = 0;
    }
    return buf[lane++];
  }
};

// ---------------------------------------------------------------------------
// Per-element formulas. s = exp(0.5 * lv) is computed once per (n, d).

// Analytic KL(N(mu, s^2) || N(0, 1)) for one dimension.
template <typename C>
KVAE_HD C kl_term(C mu, C lv, C s) {
  return C(0.5) * (s * s + mu * mu - C(1) - lv);
}

// log q(z|x) - log p(z) for one dimension, z = mu + s * eps.
template <typename C>
KVAE_HD C log_ratio_term(C z, C eps, C lv) {
  return C(0.5) * (z * z - eps * eps - lv);
}

// Gradient of KL with respect to (mu, lv), scaled by the upstream g_kl.
template <typename C>
KVAE_HD void kl_grad(C g_kl, C mu, C s, C* d_mu, C* d_lv) {
  *d_mu = g_kl * mu;
  *d_lv = g_kl * C(0.5) * (s * s - C(1));
}

// Gradient of one sample's (z, log_ratio) contribution with respect to
// (mu, lv), accumulated into d_mu, d_lv.
//   dz/dmu = 1, dz/dlv = 0.5 s eps.
//   d log_ratio / dmu = z                       (full gradient)
//                     = z - eps / s             (parameters stopped inside
//                                                log q, the path through z stays)
//   d log_ratio / dlv = 0.5 z s eps - 0.5       (full)
//                     = 0.5 z s eps - 0.5 eps^2 (stopped)
template <typename C>
KVAE_HD void sample_grad(C g_z, C g_lr, C z, C eps, C s, bool stop_params,
                         C* d_mu, C* d_lv) {
  const C dz_dlv = C(0.5) * s * eps;
  *d_mu += g_z + g_lr * (stop_params ? z - eps / s : z);
  *d_lv += (g_z + g_lr * z) * dz_dlv -
           C(0.5) * g_lr * (stop_params ? eps * eps : C(1));
}

// Sizes of one call. Inputs are [N, D] (N = product of the batch dims),
// z is [K, N, D], kl is [N], log_ratio is [K, N]. 64-bit throughout.
struct ReparamShape {
  int64_t num_samples;  // K
  int64_t rows;         // N
  int64_t dim;          // D
};

}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_REPARAM_KL_H_
