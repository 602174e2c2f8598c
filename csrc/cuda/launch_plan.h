// Host-side launch geometry of the CUDA kernels, kept free of CUDA calls so
// that it compiles (and can be checked) on machines without a GPU.
#ifndef KERAS_VAE_CSRC_CUDA_LAUNCH_PLAN_H_
#define KERAS_VAE_CSRC_CUDA_LAUNCH_PLAN_H_

#include <algorithm>
#include <cstdint>

#include "reparam_kl.h"

namespace keras_vae {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr int kThreadsPerBlock = 256;

struct LaunchPlan {
  int group_width;    // lanes that share one item: forward, a (k, n) row;
                      // backward, an (n, chunk of d), its samples split
  bool vectorized;    // chunks of one Philox block are aligned to it
  int64_t threads;    // threads with work, before the grid is capped
  int64_t blocks;     // grid size actually launched
};

// Lanes per row in the forward kernel: enough for one Philox block each
// across the row (the smallest power of two >= ceil(D / per_block)), at most
// a warp; a power of two so that a row's lanes reduce with xor shuffles.
inline int forward_group_width(int64_t dim, int normals_per_block) {
  const int64_t chunks = (dim + normals_per_block - 1) / normals_per_block;
  int width = 1;
  while (width < kWarpSize && width < chunks) width *= 2;
  return width;
}

// Blocks to launch for `threads` threads of work: no more than the device
// keeps resident at once (the kernels loop over the rest, grid-stride), and
// at least one.
inline int64_t grid_blocks(int64_t threads, int64_t resident_blocks) {
  const int64_t needed = (threads + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return std::max<int64_t>(1, std::min(needed, std::max<int64_t>(1, resident_blocks)));
}

// resident_blocks = SM count x blocks per SM at full occupancy of the kernel.
inline LaunchPlan forward_plan(const ReparamShape& s, int normals_per_block,
                               bool aligned, int64_t resident_blocks) {
  LaunchPlan p;
  p.group_width = forward_group_width(s.dim, normals_per_block);
  p.vectorized = aligned && s.dim % normals_per_block == 0;
  const int64_t rows = s.num_samples * s.rows;
  const int64_t rows_per_warp = kWarpSize / p.group_width;
  p.threads = (rows + rows_per_warp - 1) / rows_per_warp * kWarpSize;
  p.blocks = grid_blocks(p.threads, resident_blocks);
  return p;
}

// Backward: an item is (n, one Philox block's chunk of d); a group of G
// lanes shares it, lane j taking the samples k = j, j + G, ..., and the
// group reduces its partial sums with xor shuffles, in a fixed order. G
// doubles (up to a warp, and no more than K) while the items alone would
// leave resident threads idle, so that a small batch with many samples
// still fills the device; G = 1 is the sequential sum over k.
inline int backward_group_width(const ReparamShape& s, int64_t items,
                                int64_t resident_blocks) {
  const int64_t resident_threads =
      std::max<int64_t>(1, resident_blocks) * kThreadsPerBlock;
  int width = 1;
  while (width < kWarpSize && 2 * width <= s.num_samples &&
         items * width < resident_threads) {
    width *= 2;
  }
  return width;
}

inline LaunchPlan backward_plan(const ReparamShape& s, int normals_per_block,
                                bool aligned, int64_t resident_blocks) {
  LaunchPlan p;
  p.vectorized = aligned && s.dim % normals_per_block == 0;
  const int64_t chunks = (s.dim + normals_per_block - 1) / normals_per_block;
  const int64_t items = s.rows * chunks;
  p.group_width = backward_group_width(s, items, resident_blocks);
  const int64_t items_per_warp = kWarpSize / p.group_width;
  p.threads = (items + items_per_warp - 1) / items_per_warp * kWarpSize;
  p.blocks = grid_blocks(p.threads, resident_blocks);
  return p;
}

}  // namespace cuda
}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_CUDA_LAUNCH_PLAN_H_
