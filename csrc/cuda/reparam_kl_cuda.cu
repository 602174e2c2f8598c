// CUDA kernels of the fused reparameterize-and-KL step. The noise and every
// per-element formula come from reparam_kl.h, as in the CPU kernels, so the
// same seed gives the same eps on both.
//
// Forward: a group of G lanes (G a power of two, see launch_plan.h) owns one
// row (k, n) of z; each lane takes one Philox block's worth of the row at a
// time, and the row's log_ratio (and kl for k == 0) is reduced over the group
// with xor shuffles, in a fixed order, so results are bitwise reproducible.
// Rows are visited n-major (k fastest) so the groups of a warp share mean and
// log_var rows in L1.
// Backward: a group of G lanes (launch_plan.h) owns one (n, Philox-block-
// sized chunk of d); lane j loops over k = j, j + G, ..., reading grad_z
// coalesced along d across the groups of a warp and regenerating eps, and the
// group's partial gradients are reduced with xor shuffles, in a fixed order.
// Both kernels derive the Philox stream from the seed themselves when its
// words are in device memory, so a launch never waits for the device.
#include <atomic>
#include <cstdint>

#include "cuda/launch_plan.h"
#include "cuda/reparam_kl_cuda.h"
#include "reparam_kl.h"

// Every launch goes through this macro, so that this file also compiles as
// plain C++ for the tests' CPU emulation of CUDA (csrc/tests/simt), which
// defines it first.
#ifndef KVAE_LAUNCH
#define KVAE_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  kernel<<<grid, block, shared_bytes, stream>>>(__VA_ARGS__)
#endif

namespace keras_vae {
namespace cuda {
namespace {

// Storage type T <-> compute type C (float for the 16-bit types).
template <typename T>
struct Storage {
  using C = T;
  __device__ static C load(T x) { return x; }
  __device__ static T store(C x) { return x; }
};
template <>
struct Storage<__half> {
  using C = float;
  __device__ static C load(__half x) { return __half2float(x); }
  __device__ static __half store(C x) { return __float2half_rn(x); }
};
template <>
struct Storage<__nv_bfloat16> {
  using C = float;
  __device__ static C load(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 store(C x) { return __float2bfloat16_rn(x); }
};

__device__ __forceinline__ float exp_of(float x) { return expf(x); }
__device__ __forceinline__ double exp_of(double x) { return exp(x); }

// The P elements one Philox block covers, as one vector access.
template <typename T, int P>
struct alignas(sizeof(T) * P) Chunk {
  T v[P];
};

template <typename T>
constexpr int kNormalsPerBlock = NormalsPerBlock<typename Storage<T>::C>::kCount;

// The Philox stream of a launch: one Philox call per thread when the seed's
// words are in device memory (all threads read the same 16 bytes).
__device__ __forceinline__ PhiloxStream noise_stream(const NoiseSeed& seed) {
  if (seed.device_words == nullptr) return seed.stream;
  int64_t w0, w1;
  if (seed.int32_words) {
    const int32_t* w = static_cast<const int32_t*>(seed.device_words);
    w0 = w[0];
    w1 = w[1];
  } else {
    const int64_t* w = static_cast<const int64_t*>(seed.device_words);
    w0 = w[0];
    w1 = w[1];
  }
  return stream_from_seed(static_cast<uint64_t>(w0), static_cast<uint64_t>(w1));
}

// A lane's place in the layout both kernels share: each warp takes
// kWarpSize / group_width consecutive items at a time, one per group of
// group_width lanes, and strides over the grid's warps. The loop bound is
// uniform across a warp, so every lane reaches the group's shuffles; lanes
// past the last item contribute zeros.
struct GroupLanes {
  int lane, group_lane;
  int64_t per_warp, first, stride;

  __device__ explicit GroupLanes(int group_width)
      : lane(threadIdx.x % kWarpSize),
        group_lane(lane & (group_width - 1)),
        per_warp(kWarpSize / group_width),
        first((static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) /
              kWarpSize * per_warp),
        stride(static_cast<int64_t>(gridDim.x) * blockDim.x / kWarpSize *
               per_warp) {}
  // The item of this lane's group in the warp's batch starting at `first`.
  __device__ int64_t item(int64_t first_of_batch, int group_width) const {
    return first_of_batch + lane / group_width;
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_kernel(ReparamShape shape, const T* __restrict__ mean,
                   const T* __restrict__ log_var, NoiseSeed seed,
                   T* __restrict__ z, T* __restrict__ kl,
                   T* __restrict__ log_ratio, int group_width,
                   bool vectorized) {
  using S = Storage<T>;
  using C = typename S::C;
  constexpr int P = kNormalsPerBlock<T>;
  const PhiloxStream stream = noise_stream(seed);
  const int64_t K = shape.num_samples, N = shape.rows, D = shape.dim;
  const int64_t items = K * N;
  const GroupLanes lanes(group_width);
  const int group_lane = lanes.group_lane;
  const int64_t d_step = static_cast<int64_t>(group_width) * P;

  for (int64_t first = lanes.first; first < items; first += lanes.stride) {
    const int64_t item = lanes.item(first, group_width);
    const bool active = item < items;
    const int64_t n = active ? item / K : 0;
    const int64_t k = active ? item - n * K : 0;
    const int64_t row = k * N + n;
    C lr_sum = 0, kl_sum = 0;
    for (int64_t d0 = group_lane * P; active && d0 < D; d0 += d_step) {
      const int64_t in_at = n * D + d0;
      const int64_t out_at = row * D + d0;
      if (vectorized) {
        const auto mu_c = *reinterpret_cast<const Chunk<T, P>*>(mean + in_at);
        const auto lv_c =
            *reinterpret_cast<const Chunk<T, P>*>(log_var + in_at);
        C eps[P];
        NormalsPerBlock<C>::fill(stream.block(out_at / P), eps);
        Chunk<T, P> z_c;
#pragma unroll
        for (int e = 0; e < P; ++e) {
          const C mu = S::load(mu_c.v[e]), lv = S::load(lv_c.v[e]);
          const C s = exp_of(C(0.5) * lv);
          const C zz = mu + s * eps[e];
          z_c.v[e] = S::store(zz);
          lr_sum += log_ratio_term(zz, eps[e], lv);
          kl_sum += kl_term(mu, lv, s);
        }
        *reinterpret_cast<Chunk<T, P>*>(z + out_at) = z_c;
      } else {
        // A chunk that straddles two Philox blocks, or unaligned memory.
        NormalCursor<C> eps_at(&stream, static_cast<uint64_t>(out_at));
        const int64_t count = D - d0 < P ? D - d0 : P;
#pragma unroll
        for (int e = 0; e < P; ++e) {
          if (e < count) {
            const C eps = eps_at.next();
            const C mu = S::load(mean[in_at + e]);
            const C lv = S::load(log_var[in_at + e]);
            const C s = exp_of(C(0.5) * lv);
            const C zz = mu + s * eps;
            z[out_at + e] = S::store(zz);
            lr_sum += log_ratio_term(zz, eps, lv);
            kl_sum += kl_term(mu, lv, s);
          }
        }
      }
    }
    for (int offset = group_width / 2; offset > 0; offset /= 2) {
      lr_sum += __shfl_xor_sync(0xffffffffu, lr_sum, offset);
      kl_sum += __shfl_xor_sync(0xffffffffu, kl_sum, offset);
    }
    if (active && group_lane == 0) {
      log_ratio[row] = S::store(lr_sum);
      if (k == 0) kl[n] = S::store(kl_sum);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_kernel(ReparamShape shape, const T* __restrict__ mean,
                    const T* __restrict__ log_var, NoiseSeed seed,
                    const T* __restrict__ grad_z,
                    const T* __restrict__ grad_kl,
                    const T* __restrict__ grad_log_ratio, bool stop_params,
                    T* __restrict__ grad_mean, T* __restrict__ grad_log_var,
                    int group_width, bool vectorized) {
  using S = Storage<T>;
  using C = typename S::C;
  constexpr int P = kNormalsPerBlock<T>;
  const PhiloxStream stream = noise_stream(seed);
  const int64_t K = shape.num_samples, N = shape.rows, D = shape.dim;
  const int64_t chunks = (D + P - 1) / P;
  const int64_t items = N * chunks;
  const GroupLanes lanes(group_width);
  const int group_lane = lanes.group_lane;

  for (int64_t first = lanes.first; first < items; first += lanes.stride) {
    const int64_t item = lanes.item(first, group_width);
    const bool active = item < items;
    const int64_t n = active ? item / chunks : 0;
    const int64_t d0 = active ? (item - n * chunks) * P : 0;
    const int64_t count = D - d0 < P ? D - d0 : P;
    const int64_t in_at = n * D + d0;
    C mu[P], sd[P], d_mu[P], d_lv[P];
#pragma unroll
    for (int e = 0; e < P; ++e) {
      // Inactive lanes read row 0's first chunk (it exists: the launcher
      // returns early on empty inputs) and contribute nothing.
      const bool inside = e < count;
      mu[e] = inside ? S::load(mean[in_at + e]) : C(0);
      sd[e] = exp_of(C(0.5) * (inside ? S::load(log_var[in_at + e]) : C(0)));
      d_mu[e] = d_lv[e] = C(0);
    }
    // The KL term once per item, in the group's first lane.
    if (active && group_lane == 0) {
      const C g_kl = S::load(grad_kl[n]);
#pragma unroll
      for (int e = 0; e < P; ++e) kl_grad(g_kl, mu[e], sd[e], &d_mu[e], &d_lv[e]);
    }
    for (int64_t k = group_lane; active && k < K; k += group_width) {
      const int64_t row = k * N + n;
      const int64_t out_at = row * D + d0;
      const C g_lr = S::load(grad_log_ratio[row]);
      if (vectorized) {
        const auto g_z = *reinterpret_cast<const Chunk<T, P>*>(grad_z + out_at);
        C eps[P];
        NormalsPerBlock<C>::fill(stream.block(out_at / P), eps);
#pragma unroll
        for (int e = 0; e < P; ++e) {
          sample_grad(S::load(g_z.v[e]), g_lr, mu[e] + sd[e] * eps[e], eps[e],
                      sd[e], stop_params, &d_mu[e], &d_lv[e]);
        }
      } else {
        NormalCursor<C> eps_at(&stream, static_cast<uint64_t>(out_at));
#pragma unroll
        for (int e = 0; e < P; ++e) {
          if (e < count) {
            const C eps = eps_at.next();
            sample_grad(S::load(grad_z[out_at + e]), g_lr,
                        mu[e] + sd[e] * eps, eps, sd[e], stop_params,
                        &d_mu[e], &d_lv[e]);
          }
        }
      }
    }
    for (int offset = group_width / 2; offset > 0; offset /= 2) {
#pragma unroll
      for (int e = 0; e < P; ++e) {
        d_mu[e] += __shfl_xor_sync(0xffffffffu, d_mu[e], offset);
        d_lv[e] += __shfl_xor_sync(0xffffffffu, d_lv[e], offset);
      }
    }
    if (!active || group_lane != 0) continue;
    if (vectorized) {
      Chunk<T, P> gm, glv;
#pragma unroll
      for (int e = 0; e < P; ++e) {
        gm.v[e] = S::store(d_mu[e]);
        glv.v[e] = S::store(d_lv[e]);
      }
      *reinterpret_cast<Chunk<T, P>*>(grad_mean + in_at) = gm;
      *reinterpret_cast<Chunk<T, P>*>(grad_log_var + in_at) = glv;
    } else {
#pragma unroll
      for (int e = 0; e < P; ++e) {
        if (e < count) {
          grad_mean[in_at + e] = S::store(d_mu[e]);
          grad_log_var[in_at + e] = S::store(d_lv[e]);
        }
      }
    }
  }
}

// Blocks of `kernel` the current device keeps resident at once, asked of
// the driver once per device and kernel: a launch then costs no query.
constexpr int kMaxCachedDevices = 64;

template <auto kernel>
cudaError_t resident_blocks(int64_t* out) {
  static std::atomic<int64_t> cached[kMaxCachedDevices];  // 0: not asked yet
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const bool cacheable = device >= 0 && device < kMaxCachedDevices;
  if (cacheable) {
    *out = cached[device].load(std::memory_order_relaxed);
    if (*out > 0) return cudaSuccess;
  }
  int sms = 0, per_sm = 0;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) {
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, kernel, kThreadsPerBlock, 0);
  }
  if (err != cudaSuccess) return err;
  // At least one: a grid of one block still makes progress.
  *out = std::max<int64_t>(1, static_cast<int64_t>(sms) * per_sm);
  if (cacheable) cached[device].store(*out, std::memory_order_relaxed);
  return cudaSuccess;
}

bool aligned_to(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

}  // namespace

template <typename T>
cudaError_t reparam_kl_forward(const ReparamShape& shape, const T* mean,
                               const T* log_var, const NoiseSeed& seed,
                               T* z, T* kl, T* log_ratio,
                               cudaStream_t cuda_stream) {
  if (shape.num_samples * shape.rows == 0) return cudaSuccess;
  constexpr int P = kNormalsPerBlock<T>;
  constexpr size_t kChunkBytes = sizeof(T) * P;
  int64_t resident = 0;
  cudaError_t err = resident_blocks<forward_kernel<T>>(&resident);
  if (err != cudaSuccess) return err;
  const bool aligned = aligned_to(mean, kChunkBytes) &&
                       aligned_to(log_var, kChunkBytes) &&
                       aligned_to(z, kChunkBytes);
  const LaunchPlan plan = forward_plan(shape, P, aligned, resident);
  KVAE_LAUNCH(forward_kernel<T>, static_cast<unsigned>(plan.blocks),
              kThreadsPerBlock, 0, cuda_stream, shape, mean, log_var, seed,
              z, kl, log_ratio, plan.group_width, plan.vectorized);
  return cudaGetLastError();
}

template <typename T>
cudaError_t reparam_kl_backward(const ReparamShape& shape, const T* mean,
                                const T* log_var, const NoiseSeed& seed,
                                const T* grad_z, const T* grad_kl,
                                const T* grad_log_ratio, bool stop_params,
                                T* grad_mean, T* grad_log_var,
                                cudaStream_t cuda_stream) {
  if (shape.rows * shape.dim == 0) return cudaSuccess;
  constexpr int P = kNormalsPerBlock<T>;
  constexpr size_t kChunkBytes = sizeof(T) * P;
  int64_t resident = 0;
  cudaError_t err = resident_blocks<backward_kernel<T>>(&resident);
  if (err != cudaSuccess) return err;
  const bool aligned = aligned_to(grad_z, kChunkBytes) &&
                       aligned_to(grad_mean, kChunkBytes) &&
                       aligned_to(grad_log_var, kChunkBytes);
  const LaunchPlan plan = backward_plan(shape, P, aligned, resident);
  KVAE_LAUNCH(backward_kernel<T>, static_cast<unsigned>(plan.blocks),
              kThreadsPerBlock, 0, cuda_stream, shape, mean, log_var, seed,
              grad_z, grad_kl, grad_log_ratio, stop_params, grad_mean,
              grad_log_var, plan.group_width, plan.vectorized);
  return cudaGetLastError();
}

#define KVAE_INSTANTIATE(T)                                                  \
  template cudaError_t reparam_kl_forward<T>(                                \
      const ReparamShape&, const T*, const T*, const NoiseSeed&, T*, T*,    \
      T*, cudaStream_t);                                                     \
  template cudaError_t reparam_kl_backward<T>(                               \
      const ReparamShape&, const T*, const T*, const NoiseSeed&,             \
      const T*, const T*, const T*, bool, T*, T*, cudaStream_t);
KVAE_INSTANTIATE(float)
KVAE_INSTANTIATE(double)
KVAE_INSTANTIATE(__half)
KVAE_INSTANTIATE(__nv_bfloat16)
#undef KVAE_INSTANTIATE

}  // namespace cuda
}  // namespace keras_vae
