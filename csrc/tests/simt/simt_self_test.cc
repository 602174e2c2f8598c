// The SIMT emulation's own checks: each kernel here makes one mistake a GPU
// would not report, and the emulation must name it and its source line.
// Then what must work: shuffles within a width, __shared__ with
// __syncthreads, 32-bit builtins that wrap, and the launch macro.
#include "simt/simt.h"

#include <cstdio>
#include <string>
#include <vector>

#include "test_support.h"

namespace {

// Kernels write their results here (one slot per thread of one block).
float g_out[1024];
unsigned g_out_u[1024];

std::string at(int line) {
  return std::string(__FILE__) + ":" + std::to_string(line) + ": ";
}

// One error, at `line`, whose message contains `what`.
void expect_error(int line, const char* what, const char* test) {
  const std::vector<std::string> errors = simt::take_errors();
  EXPECT(errors.size() == 1, "%s: %zu errors, want 1", test, errors.size());
  for (const std::string& e : errors) {
    EXPECT(e.rfind(at(line), 0) == 0 && e.find(what) != std::string::npos,
           "%s: got \"%s\", want \"%s...%s\"", test, e.c_str(),
           at(line).c_str(), what);
  }
}

void expect_no_errors(const char* test) {
  for (const std::string& e : simt::take_errors()) {
    EXPECT(false, "%s: unexpected \"%s\"", test, e.c_str());
  }
}

constexpr int kExitedLine = __LINE__ + 3;
__global__ void exited_lane_in_mask(float v) {
  if (threadIdx.x == 3) return;
  g_out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 1);
}

constexpr int kSitesLine = __LINE__ + 3;
__global__ void different_sites(float v) {
  if (threadIdx.x < 16) {
    g_out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 1);
  } else {
    g_out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 2);
  }
}

constexpr int kMasksLine = __LINE__ + 4;
__global__ void different_masks(float v) {
  // Lane 5 leaves lane 31 out of its mask.
  const unsigned mask = threadIdx.x == 5 ? 0x7fffffffu : 0xffffffffu;
  g_out[threadIdx.x] = __shfl_xor_sync(mask, v, 1);
}

constexpr int kSelfLine = __LINE__ + 2;
__global__ void caller_outside_mask(float v) {
  g_out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, v, 1);
}

constexpr int kOutsideLine = __LINE__ + 4;
__global__ void reads_outside_mask(float v) {
  if (threadIdx.x < 16) {
    // Lane l reads lane l ^ 16, which the mask leaves out.
    g_out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, v, 16);
  }
}

constexpr int kDeadlockLine = __LINE__ + 5;
__global__ void barrier_against_warp_sync() {
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    __syncwarp();
  }
}

constexpr int kBarrierLine = __LINE__ + 3;
__global__ void barrier_after_exit() {
  if (threadIdx.x == 40) return;
  __syncthreads();
}

// Right: a block sum through __shared__ and __syncthreads, and a shuffle in
// segments of 8 lanes. One block: __shared__ is one static for all blocks,
// which ThreadSanitizer would see race across blocks.
__global__ void block_sum_and_segments(const float* in) {
  __shared__ float partial[256];
  partial[threadIdx.x] = in[threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0;
    for (unsigned i = 0; i < blockDim.x; ++i) s += partial[i];
    partial[0] = s;
  }
  __syncthreads();
  g_out[threadIdx.x] = partial[0];
  const float lane = static_cast<float>(threadIdx.x % 32);
  g_out_u[threadIdx.x] =
      static_cast<unsigned>(__shfl_xor_sync(0xffffffffu, lane, 8, 8));
}

// blockIdx.x * blockDim.x in CUDA's 32-bit unsigned builtins.
__global__ void product_in_32_bits() {
  g_out_u[threadIdx.x] = blockIdx.x * blockDim.x;
}

__global__ void does_nothing() {}

void launch(void (*kernel)(float), int threads) {
  KVAE_LAUNCH(kernel, 1, threads, 0, nullptr, 1.0f);
}

void host_waits();

void checks() {
  launch(exited_lane_in_mask, 32);
  expect_error(kExitedLine, "names lane 3, which has exited", "exited lane");
  launch(caller_outside_mask, 32);
  expect_error(kSelfLine, "does not include its own lane", "caller outside");
  launch(different_sites, 32);
  expect_error(kSitesLine, "different sites", "different sites");
  launch(different_masks, 32);
  expect_error(kMasksLine, "different masks", "different masks");
  launch(reads_outside_mask, 32);
  expect_error(kOutsideLine, "reads lane 16, outside the mask 0x0000ffff",
               "outside the mask");
  KVAE_LAUNCH(barrier_against_warp_sync, 1, 64, 0, nullptr);
  expect_error(kDeadlockLine, "deadlock", "deadlock");
  KVAE_LAUNCH(barrier_after_exit, 1, 64, 0, nullptr);
  expect_error(kBarrierLine, "which has exited", "barrier after exit");

  const int launch_line = __LINE__ + 1;
  KVAE_LAUNCH(does_nothing, 1, 2048, 0, nullptr);
  expect_error(launch_line, "invalid launch configuration", "block of 2048");
  EXPECT(cudaGetLastError() == cudaErrorInvalidConfiguration,
         "an invalid launch sets the last error");
  EXPECT(cudaGetLastError() == cudaSuccess, "reading the error clears it");
  const int empty_grid_line = __LINE__ + 1;
  KVAE_LAUNCH(does_nothing, 0, 32, 0, nullptr);
  expect_error(empty_grid_line, "empty dimension", "empty grid");
  cudaGetLastError();
  host_waits();
}

// Each call that makes the host wait for the device, inside a NoHostWaits
// scope: one error each, naming the scope and the call. Outside, none.
void host_waits() {
  int64_t device_words[2] = {1, 2}, host_words[2] = {0, 0};
  const struct {
    const char* call;
    cudaError_t (*run)(int64_t*, int64_t*);
  } waits[] = {
      {"cudaMemcpy", [](int64_t* d, int64_t* h) {
         return cudaMemcpy(h, d, 16, cudaMemcpyDeviceToHost);
       }},
      {"cudaMemcpyAsync to the host", [](int64_t* d, int64_t* h) {
         return cudaMemcpyAsync(h, d, 16, cudaMemcpyDeviceToHost, nullptr);
       }},
      {"cudaStreamSynchronize",
       [](int64_t*, int64_t*) { return cudaStreamSynchronize(nullptr); }},
      {"cudaDeviceSynchronize",
       [](int64_t*, int64_t*) { return cudaDeviceSynchronize(); }},
  };
  for (const auto& w : waits) {
    {
      simt::NoHostWaits guard("the launcher");
      EXPECT(w.run(device_words, host_words) == cudaSuccess, "%s failed",
             w.call);
    }
    const std::vector<std::string> errors = simt::take_errors();
    EXPECT(errors.size() == 1 &&
               errors[0] == std::string("the launcher: ") + w.call +
                                " makes the host wait for the device",
           "%s in a NoHostWaits scope: %zu errors, first \"%s\"", w.call,
           errors.size(), errors.empty() ? "" : errors[0].c_str());
    w.run(device_words, host_words);
    expect_no_errors(w.call);
  }
  EXPECT(host_words[1] == 2, "cudaMemcpy copies");
  {
    // A copy to the device is queued, not waited for.
    simt::NoHostWaits guard("the launcher");
    cudaMemcpyAsync(device_words, host_words, 16, cudaMemcpyHostToDevice,
                    nullptr);
  }
  expect_no_errors("cudaMemcpyAsync to the device");
}

void what_works() {
  std::vector<float> in(256);
  float want = 0;
  for (int i = 0; i < 256; ++i) {
    in[i] = static_cast<float>(i % 7);
    want += in[i];
  }
  KVAE_LAUNCH(block_sum_and_segments, 1, 256, 0, nullptr, in.data());
  expect_no_errors("block sum");
  for (int t = 0; t < 256; ++t) {
    EXPECT(g_out[t] == want, "thread %d: block sum %g, want %g", t, g_out[t],
           want);
    // Width 8: a lane may read an earlier segment (lanes 8..15 read 0..7),
    // and reading a later one gives its own value (lanes 0..7).
    const unsigned lane = t % 32;
    const unsigned source = lane / 8 % 2 == 1 ? lane ^ 8 : lane;
    EXPECT(g_out_u[t] == source, "thread %d: width-8 shuffle gave %u, want %u",
           t, g_out_u[t], source);
  }
  EXPECT(simt::launch_count() > 0 && simt::last_launch().block.x == 256,
         "the launch was recorded");

  // (2^23 + 1) blocks of 512: the last one's product is 2^32, 0 in 32 bits.
  simt::run_only_last_blocks(1);
  KVAE_LAUNCH(product_in_32_bits, (1u << 23) + 1, 512, 0, nullptr);
  simt::run_only_last_blocks(0);
  expect_no_errors("32-bit product");
  EXPECT(g_out_u[0] == 0u && g_out_u[511] == 0u,
         "blockIdx.x * blockDim.x = %u, want 0 (wrapped)", g_out_u[0]);
}

}  // namespace

int main() {
  checks();
  what_works();
  if (keras_vae_test::g_failures > 0) {
    std::fprintf(stderr, "%d emulator self-check(s) failed\n",
                 keras_vae_test::g_failures);
    return 1;
  }
  std::printf("simt_self_test: all checks passed\n");
  return 0;
}
