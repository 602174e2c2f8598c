// A SIMT emulation of the CUDA execution model on the CPU, so that the
// project's unchanged .cu sources, compiled by g++, run in the tests of a
// machine without a GPU.
//
// Include this before the .cu file. Each CUDA thread runs as a fiber; the
// lanes of a warp advance in lockstep at every __shfl_xor_sync and
// __syncwarp, the threads of a block at every __syncthreads; blocks run one
// after another. threadIdx, blockIdx, blockDim and gridDim are CUDA's own
// uint3 and dim3, so 32-bit index arithmetic wraps as it does on a GPU.
//
// What a GPU would silently get wrong is reported as an error naming the
// source line (simt::take_errors), and the launch is abandoned:
//   * a lane named in a shuffle mask that has already exited;
//   * lanes of one warp at different shuffle sites, or with different masks;
//   * a caller missing from its own mask, or reading a lane outside it;
//   * threads of a block at different __syncthreads, or some exited;
//   * deadlock, and an invalid launch configuration.
//
// The runtime calls the launchers make (device, attribute, occupancy, last
// error) are stubs whose devices a test defines (simt::set_device), so a
// test can force the kernels' grid-stride loops. The calls that make the host
// wait for the device (cudaMemcpy, cudaMemcpyAsync to the host, stream,
// event and device synchronization) work, as copies of host memory, but
// inside a simt::NoHostWaits scope each is reported as an error: a launcher
// or handler that calls one stalls every step on a GPU, and breaks CUDA
// graph capture.
#ifndef KERAS_VAE_CSRC_TESTS_SIMT_SIMT_H_
#define KERAS_VAE_CSRC_TESTS_SIMT_SIMT_H_

// Block-shared: blocks run one at a time on one host thread, so a static
// is the one copy every thread of the running block sees. It is also the
// next block's copy, which ThreadSanitizer reports as a race between blocks.
#define __shared__ static
// Resource limits of nvcc's code generation do not exist here.
#define __launch_bounds__(...)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace simt {

// What the stubbed runtime reports about a device.
struct Device {
  int multiprocessors = 4;
  int blocks_per_multiprocessor = 8;  // the occupancy query's answer
};
constexpr int kMaxDevices = 8;
// Defines device `ordinal` and makes it current (cudaSetDevice). Launchers
// may cache what they ask of a device: a test gives each configuration an
// ordinal of its own.
void set_device(const Device& device, int ordinal = 0);
// Occupancy queries answered so far, over all devices and kernels.
int64_t occupancy_query_count();

// While one exists, every host wait (see above) is an error naming `where`
// and the call.
class NoHostWaits {
 public:
  explicit NoHostWaits(std::string where);
  ~NoHostWaits();
  NoHostWaits(const NoHostWaits&) = delete;
  NoHostWaits& operator=(const NoHostWaits&) = delete;
};

// One kernel launch, as the launch macro saw it.
struct Launch {
  const void* kernel = nullptr;
  dim3 grid, block;
  size_t shared_bytes = 0;
  cudaStream_t stream = nullptr;
  const char* file = "";
  int line = 0;
};
// The last occupancy query: which kernel, for which block size.
struct OccupancyQuery {
  const void* kernel = nullptr;
  int block_size = 0;
  size_t shared_bytes = 0;
};
const Launch& last_launch();
const OccupancyQuery& last_occupancy_query();
int64_t launch_count();

// Runs only the last `blocks` blocks of each grid (0: all). For grids too
// large to run whole, over buffers too large to fill.
void run_only_last_blocks(int64_t blocks);

// The errors found since the last call, each "file:line: message".
std::vector<std::string> take_errors();

namespace detail {

struct Builtins {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
// The running thread's; set by the scheduler at every switch.
inline thread_local const Builtins* g_builtins = nullptr;

enum class WarpOp { kShflXor, kSyncWarp };

// Blocks the calling lane until its warp's lanes named in `mask` meet at the
// same site; returns the value of lane (lane ^ lane_mask) for kShflXor.
uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int lane_mask,
                 int width, const char* file, int line);
void sync_threads(const char* file, int line);

void run_grid(const Launch& launch, const std::function<void()>& body);

}  // namespace detail

template <typename... Params, typename... Args>
void launch(const char* file, int line, void (*kernel)(Params...), dim3 grid,
            dim3 block, size_t shared_bytes, cudaStream_t stream,
            Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args),
                "kernel called with the wrong number of arguments");
  // Kernel arguments are copied at launch, as CUDA does.
  auto arguments = std::make_shared<std::tuple<std::decay_t<Params>...>>(
      std::forward<Args>(args)...);
  const Launch l{reinterpret_cast<const void*>(kernel), grid, block,
                 shared_bytes, stream, file, line};
  detail::run_grid(l, [kernel, arguments] { std::apply(kernel, *arguments); });
}

}  // namespace simt

#define threadIdx (::simt::detail::g_builtins->thread_idx)
#define blockIdx (::simt::detail::g_builtins->block_idx)
#define blockDim (::simt::detail::g_builtins->block_dim)
#define gridDim (::simt::detail::g_builtins->grid_dim)
constexpr int warpSize = 32;

#define KVAE_LAUNCH(kernel, grid, block, shared_bytes, stream, ...)       \
  ::simt::launch(__FILE__, __LINE__, kernel, dim3(grid), dim3(block),     \
                 shared_bytes, stream, ##__VA_ARGS__)

// The intrinsics take their caller's source position, for the reports.
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                  const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                "a shuffle moves at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = ::simt::detail::warp_op(::simt::detail::WarpOp::kShflXor, mask, bits,
                                 lane_mask, width, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

inline void __syncwarp(unsigned mask = 0xffffffffu,
                       const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  ::simt::detail::warp_op(::simt::detail::WarpOp::kSyncWarp, mask, 0, 0,
                          warpSize, file, line);
}

inline void __syncthreads(const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
  ::simt::detail::sync_threads(file, line);
}

#endif  // KERAS_VAE_CSRC_TESTS_SIMT_SIMT_H_
