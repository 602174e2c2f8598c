// CPU kernels of the fused reparameterize-and-KL step: raw pointers, sizes and
// a parallel-for supplied by the caller (TensorFlow's intra-op pool, or a
// plain loop in the standalone binding).
//
// T is the storage type (float, double, or a 16-bit float that converts to
// and from float); C is the compute type (double for double, float otherwise).
#ifndef KERAS_VAE_CSRC_CPU_REPARAM_KL_CPU_H_
#define KERAS_VAE_CSRC_CPU_REPARAM_KL_CPU_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <vector>

#include "cpu/normals.h"
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

// Cycle estimates per element, for the pool's shard sizing (small totals run
// on the calling thread). The vector generators are several times cheaper
// than the scalar one, which float64 always uses.
template <typename C>
inline int64_t forward_cycles_per_element() {
  const bool vector = std::is_same<C, float>::value &&
                      active_cpu_isa() != CpuIsa::kScalar;
  return vector ? 8 : 60;
}
template <typename C>
inline int64_t backward_cycles_per_element() {
  const bool vector = std::is_same<C, float>::value &&
                      active_cpu_isa() != CpuIsa::kScalar;
  return vector ? 10 : 75;
}

// Elements per chunk of noise: the working set of a chunk (noise, mean,
// log_var, scale) stays in the L1 cache.
constexpr int64_t kChunkElements = 1024;

// The Philox blocks first_block, first_block + 1, ... as normals of type C:
// float goes to the vector generator, double stays scalar.
inline void normal_blocks(const PhiloxStream& stream, uint64_t first_block,
                          int64_t num_blocks, float* out) {
  normal_blocks_f32(stream, first_block, num_blocks, out);
}
inline void normal_blocks(const PhiloxStream& stream, uint64_t first_block,
                          int64_t num_blocks, double* out) {
  for (int64_t b = 0; b < num_blocks; ++b) {
    NormalsPerBlock<double>::fill(stream.block(first_block + b),
                                  out + NormalsPerBlock<double>::kCount * b);
  }
}

// scale[i] = exp(0.5 * log_var[i]): float on the vector paths too.
inline void scales_from_log_var(const float* log_var, int64_t n,
                                float* scale) {
  scales_from_log_var_f32(log_var, n, scale);
}
inline void scales_from_log_var(const double* log_var, int64_t n,
                                double* scale) {
  for (int64_t i = 0; i < n; ++i) scale[i] = std::exp(0.5 * log_var[i]);
}

// The normals at flat indices [first, first + count) of the stream, with
// count <= the capacity given at construction. The range may start and end
// inside a Philox block.
template <typename C>
class NoiseChunk {
 public:
  explicit NoiseChunk(int64_t capacity) : buffer_(capacity + 2 * kCount) {}

  const C* fill(const PhiloxStream& stream, uint64_t first, int64_t count) {
    const int lane = static_cast<int>(first % kCount);
    normal_blocks(stream, first / kCount, (lane + count + kCount - 1) / kCount,
                  buffer_.data());
    return buffer_.data() + lane;
  }

 private:
  static constexpr int kCount = NormalsPerBlock<C>::kCount;
  std::vector<C> buffer_;
};

// Calls fn(row, d, i, len) for each piece of the flat range
// [first, first + count) of a row-major [rows, D] array that lies in one row:
// element i of the range is (row, d), and the piece is len elements long.
template <typename Fn>
inline void for_each_row_piece(int64_t first, int64_t count, int64_t D,
                               Fn&& fn) {
  int64_t row = first / D;
  int64_t d = first - row * D;
  for (int64_t i = 0; i < count; ++row, d = 0) {
    const int64_t len = std::min(D - d, count - i);
    fn(row, d, i, len);
    i += len;
  }
}

// z = mu + sd * eps over one piece of a row; returns its log-ratio sum.
template <typename C, typename T>
inline C sample_piece(const C* mu, const C* lv, const C* sd, const C* eps,
                      int64_t len, T* z) {
  C lr_sum = 0;
#pragma omp simd reduction(+ : lr_sum)
  for (int64_t i = 0; i < len; ++i) {
    const C zz = mu[i] + sd[i] * eps[i];
    z[i] = static_cast<T>(zz);
    lr_sum += log_ratio_term(zz, eps[i], lv[i]);
  }
  return lr_sum;
}

// One sample's gradient over one piece of a row, added to d_mu, d_lv.
template <bool kStopParams, typename C, typename T>
inline void sample_grad_piece(const T* g_z, C g_lr, const C* mu, const C* sd,
                              const C* eps, int64_t len, C* d_mu, C* d_lv) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const C zz = mu[i] + sd[i] * eps[i];
    sample_grad(static_cast<C>(g_z[i]), g_lr, zz, eps[i], sd[i], kStopParams,
                &d_mu[i], &d_lv[i]);
  }
}

// z[k, n, :], log_ratio[k, n] for all k, and kl[n], in one pass.
//
// The work unit is (tile, k) in tile-major order, a tile being the rows
// n0 .. n0 + rows_per_tile - 1: a shard loads mean and log_var of a tile and
// takes exp(0.5 * lv) once, then draws all its samples. For one k the noise
// of a tile is one contiguous range of the stream, drawn in chunks of whole
// vectors whatever D is.
template <typename T>
void reparam_kl_forward(const ReparamShape& shape, const T* mean,
                        const T* log_var, const PhiloxStream& stream, T* z,
                        T* kl, T* log_ratio, const ParallelFor& parallel_for) {
  using C = typename ComputeType<T>::type;
  const int64_t K = shape.num_samples, N = shape.rows, D = shape.dim;
  if (D == 0) {  // empty sums
    for (int64_t n = 0; n < N; ++n) kl[n] = static_cast<T>(0);
    for (int64_t r = 0; r < K * N; ++r) log_ratio[r] = static_cast<T>(0);
    return;
  }
  const int64_t rows_per_tile = std::max<int64_t>(1, kChunkElements / D);
  const int64_t num_tiles = (N + rows_per_tile - 1) / rows_per_tile;
  auto shard = [&](int64_t begin, int64_t end) {
    const int64_t tile_capacity = rows_per_tile * D;
    std::vector<C> mu(tile_capacity), lv(tile_capacity), sd(tile_capacity);
    const int64_t chunk = std::min(tile_capacity, kChunkElements);
    NoiseChunk<C> noise(chunk);
    int64_t loaded = -1;
    for (int64_t u = begin; u < end; ++u) {
      const int64_t tile = u / K;
      const int64_t k = u - tile * K;
      const int64_t n0 = tile * rows_per_tile;
      const int64_t tile_size = std::min(rows_per_tile, N - n0) * D;
      if (tile != loaded) {
        for (int64_t j = 0; j < tile_size; ++j) {
          mu[j] = static_cast<C>(mean[n0 * D + j]);
          lv[j] = static_cast<C>(log_var[n0 * D + j]);
        }
        scales_from_log_var(lv.data(), tile_size, sd.data());
        for (int64_t r = 0; r * D < tile_size; ++r) {
          C kl_sum = 0;
          for (int64_t j = r * D; j < (r + 1) * D; ++j) {
            kl_sum += kl_term(mu[j], lv[j], sd[j]);
          }
          // The shard that holds (tile, 0) writes kl; it loads there.
          if (k == 0) kl[n0 + r] = static_cast<T>(kl_sum);
        }
        loaded = tile;
      }
      const int64_t base = (k * N + n0) * D;  // flat z index of the tile
      C lr_sum = 0;
      for (int64_t pos = 0; pos < tile_size; pos += chunk) {
        const int64_t count = std::min(chunk, tile_size - pos);
        const C* eps = noise.fill(stream, static_cast<uint64_t>(base + pos),
                                  count);
        for_each_row_piece(
            base + pos, count, D,
            [&](int64_t row, int64_t d, int64_t i, int64_t len) {
              if (d == 0) lr_sum = 0;
              lr_sum += sample_piece(mu.data() + pos + i, lv.data() + pos + i,
                                     sd.data() + pos + i, eps + i, len,
                                     z + base + pos + i);
              if (d + len == D) log_ratio[row] = static_cast<T>(lr_sum);
            });
      }
    }
  };
  parallel_for(num_tiles * K,
               rows_per_tile * D * forward_cycles_per_element<C>(), shard);
}

// d mean, d log_var from the upstream gradients of (z, kl, log_ratio).
// The noise is regenerated from the stream, never read from memory.
//
// The work unit is a run of kGradUnit elements of the flat [N, D] parameter
// array, whatever the row boundaries: for one k, the noise of such a run is
// one contiguous range of the stream, and the run's gradients sum over k in
// registers and L1. Splitting the parameters rather than the rows keeps the
// pool busy when N is small.
template <typename T>
void reparam_kl_backward(const ReparamShape& shape, const T* mean,
                         const T* log_var, const PhiloxStream& stream,
                         const T* grad_z, const T* grad_kl,
                         const T* grad_log_ratio, bool stop_params,
                         T* grad_mean, T* grad_log_var,
                         const ParallelFor& parallel_for) {
  using C = typename ComputeType<T>::type;
  constexpr int64_t kGradUnit = 64;
  const int64_t K = shape.num_samples, N = shape.rows, D = shape.dim;
  const int64_t P = N * D;
  auto shard = [&](int64_t begin, int64_t end) {
    const int64_t p_begin = begin * kGradUnit;
    const int64_t p_end = std::min(P, end * kGradUnit);
    const int64_t chunk = std::min(p_end - p_begin, kChunkElements);
    std::vector<C> mu(chunk), lv(chunk), sd(chunk), d_mu(chunk), d_lv(chunk);
    NoiseChunk<C> noise(chunk);
    for (int64_t p0 = p_begin; p0 < p_end; p0 += chunk) {
      const int64_t count = std::min(chunk, p_end - p0);
      for (int64_t j = 0; j < count; ++j) {
        mu[j] = static_cast<C>(mean[p0 + j]);
        lv[j] = static_cast<C>(log_var[p0 + j]);
      }
      scales_from_log_var(lv.data(), count, sd.data());
      for_each_row_piece(
          p0, count, D, [&](int64_t n, int64_t, int64_t i, int64_t len) {
            const C g_kl = static_cast<C>(grad_kl[n]);
            for (int64_t j = i; j < i + len; ++j) {
              kl_grad(g_kl, mu[j], sd[j], &d_mu[j], &d_lv[j]);
            }
          });
      for (int64_t k = 0; k < K; ++k) {
        const C* eps =
            noise.fill(stream, static_cast<uint64_t>(k * P + p0), count);
        const T* g_z = grad_z + k * P + p0;
        const T* g_lr = grad_log_ratio + k * N;
        for_each_row_piece(
            p0, count, D, [&](int64_t n, int64_t, int64_t i, int64_t len) {
              const C g = static_cast<C>(g_lr[n]);
              if (stop_params) {
                sample_grad_piece<true>(g_z + i, g, mu.data() + i,
                                        sd.data() + i, eps + i, len,
                                        d_mu.data() + i, d_lv.data() + i);
              } else {
                sample_grad_piece<false>(g_z + i, g, mu.data() + i,
                                         sd.data() + i, eps + i, len,
                                         d_mu.data() + i, d_lv.data() + i);
              }
            });
      }
      for (int64_t j = 0; j < count; ++j) {
        grad_mean[p0 + j] = static_cast<T>(d_mu[j]);
        grad_log_var[p0 + j] = static_cast<T>(d_lv[j]);
      }
    }
  };
  parallel_for((P + kGradUnit - 1) / kGradUnit,
               kGradUnit * K * backward_cycles_per_element<C>(), shard);
}

}  // namespace cpu
}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_CPU_REPARAM_KL_CPU_H_
