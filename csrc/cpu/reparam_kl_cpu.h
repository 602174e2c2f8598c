// CPU kernels of the fused reparameterize-and-KL step: raw pointers, sizes and
// a parallel-for supplied by the caller (TensorFlow's intra-op pool, or a
// plain loop in the standalone binding).
//
// T is the storage type (float, double, or a 16-bit float that converts to
// and from float); C is the compute type (double for double, float otherwise).
#ifndef KERAS_VAE_CSRC_CPU_REPARAM_KL_CPU_H_
#define KERAS_VAE_CSRC_CPU_REPARAM_KL_CPU_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "reparam_kl.h"

namespace keras_vae {
namespace cpu {

// Runs fn(begin, end) over a partition of [0, total). cost_per_unit is an
// estimate in cycles, used by pools that size their shards from it.
using ParallelFor = std::function<void(
    int64_t total, int64_t cost_per_unit,
    const std::function<void(int64_t, int64_t)>& fn)>;

// A parallel-for that runs everything on the calling thread.
inline void serial_for(int64_t total, int64_t /*cost_per_unit*/,
                       const std::function<void(int64_t, int64_t)>& fn) {
  if (total > 0) fn(0, total);
}

template <typename T>
struct ComputeType {
  using type = float;
};
template <>
struct ComputeType<double> {
  using type = double;
};

// Cycle estimates per element, for the pool's shard sizing.
constexpr int64_t kForwardCyclesPerElement = 60;
constexpr int64_t kBackwardCyclesPerElement = 75;

// z[k, n, :], log_ratio[k, n] for all k, and kl[n], in one pass.
//
// The work unit is a row (n, k) in n-major order, so a shard loads mean and
// log_var of row n and takes exp(0.5 * lv) once, then draws all its samples.
template <typename T>
void reparam_kl_forward(const ReparamShape& shape, const T* mean,
                        const T* log_var, const PhiloxStream& stream, T* z,
                        T* kl, T* log_ratio, const ParallelFor& parallel_for) {
  using C = typename ComputeType<T>::type;
  const int64_t K = shape.num_samples, N = shape.rows, D = shape.dim;
  auto shard = [&](int64_t begin, int64_t end) {
    std::vector<C> mu(D), lv(D), sd(D);
    int64_t loaded = -1;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / K;
      const int64_t k = r - n * K;
      if (n != loaded) {
        C kl_sum = 0;
        for (int64_t d = 0; d < D; ++d) {
          mu[d] = static_cast<C>(mean[n * D + d]);
          lv[d] = static_cast<C>(log_var[n * D + d]);
          sd[d] = std::exp(C(0.5) * lv[d]);
          kl_sum += kl_term(mu[d], lv[d], sd[d]);
        }
        if (k == 0) kl[n] = static_cast<T>(kl_sum);
        loaded = n;
      }
      const int64_t row = k * N + n;
      NormalCursor<C> eps_at(&stream, static_cast<uint64_t>(row * D));
      T* z_row = z + row * D;
      C lr_sum = 0;
      for (int64_t d = 0; d < D; ++d) {
        const C eps = eps_at.next();
        const C zz = mu[d] + sd[d] * eps;
        z_row[d] = static_cast<T>(zz);
        lr_sum += log_ratio_term(zz, eps, lv[d]);
      }
      log_ratio[row] = static_cast<T>(lr_sum);
    }
  };
  parallel_for(N * K, D * kForwardCyclesPerElement, shard);
}

// d mean, d log_var from the upstream gradients of (z, kl, log_ratio).
// The noise is regenerated from the stream, never read from memory.
template <typename T>
void reparam_kl_backward(const ReparamShape& shape, const T* mean,
                         const T* log_var, const PhiloxStream& stream,
                         const T* grad_z, const T* grad_kl,
                         const T* grad_log_ratio, bool stop_params,
                         T* grad_mean, T* grad_log_var,
                         const ParallelFor& parallel_for) {
  using C = typename ComputeType<T>::type;
  const int64_t K = shape.num_samples, N = shape.rows, D = shape.dim;
  auto shard = [&](int64_t begin, int64_t end) {
    std::vector<C> mu(D), sd(D), d_mu(D), d_lv(D);
    for (int64_t n = begin; n < end; ++n) {
      const C g_kl = static_cast<C>(grad_kl[n]);
      for (int64_t d = 0; d < D; ++d) {
        mu[d] = static_cast<C>(mean[n * D + d]);
        sd[d] = std::exp(C(0.5) * static_cast<C>(log_var[n * D + d]));
        kl_grad(g_kl, mu[d], sd[d], &d_mu[d], &d_lv[d]);
      }
      for (int64_t k = 0; k < K; ++k) {
        const int64_t row = k * N + n;
        const C g_lr = static_cast<C>(grad_log_ratio[row]);
        const T* g_z_row = grad_z + row * D;
        NormalCursor<C> eps_at(&stream, static_cast<uint64_t>(row * D));
        for (int64_t d = 0; d < D; ++d) {
          const C eps = eps_at.next();
          const C zz = mu[d] + sd[d] * eps;
          sample_grad(static_cast<C>(g_z_row[d]), g_lr, zz, eps, sd[d],
                      stop_params, &d_mu[d], &d_lv[d]);
        }
      }
      for (int64_t d = 0; d < D; ++d) {
        grad_mean[n * D + d] = static_cast<T>(d_mu[d]);
        grad_log_var[n * D + d] = static_cast<T>(d_lv[d]);
      }
    }
  };
  parallel_for(N, K * D * kBackwardCyclesPerElement, shard);
}

}  // namespace cpu
}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_CPU_REPARAM_KL_CPU_H_
