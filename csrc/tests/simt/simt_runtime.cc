// The scheduler of the SIMT emulation (simt.h) and the CUDA runtime stubs.
//
// One block at a time: a fiber per thread (glibc ucontext) on a fresh stack.
// The scheduler runs every runnable thread until it blocks at a warp
// operation or a barrier, or exits; then it checks and releases what is
// complete, and repeats. Everything runs on the calling host thread.
//
// Sanitizers. AddressSanitizer is told of every fiber switch. Under
// ThreadSanitizer (KVAE_SIMT_TSAN, this file then compiled without
// instrumentation so that the scheduler's own bookkeeping is invisible to
// it) fibers switch without synchronizing; a warp operation orders only the
// lanes of its warp, a barrier the threads of its block, and the end of the
// grid orders every thread before the host. Fibers and their sync objects
// are fresh per block, so the blocks of a launch stay unordered, as on a GPU.
#include "simt.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define KVAE_SIMT_ASAN 1
#endif
#if defined(KVAE_SIMT_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

namespace simt {
namespace {

constexpr int kWarp = 32;
constexpr size_t kStackBytes = 64 << 10;
constexpr int kMaxThreadsPerBlock = 1024;

Device g_devices[kMaxDevices];
int g_current_device = 0;
int64_t g_occupancy_queries = 0;
std::vector<std::string> g_no_host_waits;  // the guards' scopes, innermost last
Launch g_last_launch;
OccupancyQuery g_last_query;
int64_t g_launch_count = 0;
int64_t g_last_blocks_only = 0;
std::vector<std::string> g_errors;
cudaError_t g_last_error = cudaSuccess;

enum class State { kRunnable, kAtWarpOp, kAtBarrier, kExited };

// The builtins of every thread of the running block. Never freed: the host
// freeing what fibers read would be a race to ThreadSanitizer.
detail::Builtins g_builtins_storage[kMaxThreadsPerBlock];

struct Lane {
  detail::Builtins* builtins = nullptr;
  ucontext_t context;
  char* stack = nullptr;
  State state = State::kRunnable;
  bool exists = true;  // false past blockDim in the last warp
  // The operation it waits at.
  detail::WarpOp op = detail::WarpOp::kSyncWarp;
  unsigned mask = 0;
  uint64_t value = 0;
  int lane_mask = 0;
  int width = kWarp;
  const char* file = "";
  int line = 0;
  uint64_t result = 0;
  void* asan_fake_stack = nullptr;
  void* tsan_fiber = nullptr;
};

struct Block {
  std::vector<Lane> lanes;  // warp w is lanes [32 w, 32 w + 32)
  const std::function<void()>* body = nullptr;
  ucontext_t scheduler;
  Lane* running = nullptr;
  char* stacks = nullptr;
  size_t stacks_bytes = 0;
  // ThreadSanitizer sync objects, fresh per block: one per warp, one for
  // the block's barrier.
  std::unique_ptr<char[]> sync;
  char* grid_end = nullptr;
  void* asan_scheduler_fake_stack = nullptr;
  const void* asan_scheduler_bottom = nullptr;
  size_t asan_scheduler_size = 0;
  void* tsan_scheduler = nullptr;
};

Block* g_block = nullptr;

void tsan_release(void* addr) {
#if defined(KVAE_SIMT_TSAN)
  __tsan_release(addr);
#else
  (void)addr;
#endif
}
void tsan_acquire(void* addr) {
#if defined(KVAE_SIMT_TSAN)
  __tsan_acquire(addr);
#else
  (void)addr;
#endif
}

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buf[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, args);
  va_end(args);
  return buf;
}

std::string thread_name(const Lane& l) {
  const auto& b = *l.builtins;
  return format("thread (%u,%u,%u) of block (%u,%u,%u)", b.thread_idx.x,
                b.thread_idx.y, b.thread_idx.z, b.block_idx.x, b.block_idx.y,
                b.block_idx.z);
}

const char* op_name(detail::WarpOp op) {
  return op == detail::WarpOp::kShflXor ? "__shfl_xor_sync" : "__syncwarp";
}

void report(const char* file, int line, const std::string& message) {
  g_errors.push_back(format("%s:%d: ", file, line) + message);
}

void switch_to_lane(Block& b, Lane& lane) {
  b.running = &lane;
  detail::g_builtins = lane.builtins;
#if defined(KVAE_SIMT_ASAN)
  __sanitizer_start_switch_fiber(&b.asan_scheduler_fake_stack, lane.stack,
                                 kStackBytes);
#endif
#if defined(KVAE_SIMT_TSAN)
  __tsan_switch_to_fiber(lane.tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
  swapcontext(&b.scheduler, &lane.context);
#if defined(KVAE_SIMT_ASAN)
  __sanitizer_finish_switch_fiber(b.asan_scheduler_fake_stack, nullptr,
                                  nullptr);
#endif
  detail::g_builtins = nullptr;
  b.running = nullptr;
}

void switch_to_scheduler(Block& b, Lane& lane, bool exiting) {
#if defined(KVAE_SIMT_ASAN)
  __sanitizer_start_switch_fiber(exiting ? nullptr : &lane.asan_fake_stack,
                                 b.asan_scheduler_bottom,
                                 b.asan_scheduler_size);
#else
  (void)exiting;
#endif
#if defined(KVAE_SIMT_TSAN)
  __tsan_switch_to_fiber(b.tsan_scheduler, __tsan_switch_to_fiber_no_sync);
#endif
  swapcontext(&lane.context, &b.scheduler);
#if defined(KVAE_SIMT_ASAN)
  __sanitizer_finish_switch_fiber(lane.asan_fake_stack, nullptr, nullptr);
#endif
}

void lane_entry() {
  Block& b = *g_block;
  Lane& lane = *b.running;
#if defined(KVAE_SIMT_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &b.asan_scheduler_bottom,
                                  &b.asan_scheduler_size);
#endif
  (*b.body)();
  lane.state = State::kExited;
  tsan_release(b.grid_end);
  switch_to_scheduler(b, lane, true);
  std::abort();  // an exited fiber is never resumed
}

// Checks the lanes of warp w that wait at a warp operation; releases them
// when every group is complete. False (and a report) on an error.
bool resolve_warp(Block& b, size_t w, bool* released) {
  Lane* warp = &b.lanes[w * kWarp];
  bool waiting = false;
  for (int l = 0; l < kWarp; ++l) {
    const Lane& me = warp[l];
    if (me.state != State::kAtWarpOp) continue;
    waiting = true;
    if (!(me.mask >> l & 1u)) {
      report(me.file, me.line,
             format("%s calls %s with mask 0x%08x, which does not include "
                    "its own lane %d",
                    thread_name(me).c_str(), op_name(me.op), me.mask, l));
      return false;
    }
    for (int j = 0; j < kWarp; ++j) {
      if (!(me.mask >> j & 1u)) continue;
      const Lane& other = warp[j];
      if (!other.exists || other.state == State::kExited) {
        report(me.file, me.line,
               format("%s: the mask 0x%08x of %s names lane %d, which has "
                      "exited",
                      thread_name(me).c_str(), me.mask, op_name(me.op), j));
        return false;
      }
      if (other.state == State::kAtBarrier) {
        report(me.file, me.line,
               format("deadlock: %s waits in %s for lane %d, which waits at "
                      "__syncthreads at %s:%d",
                      thread_name(me).c_str(), op_name(me.op), j, other.file,
                      other.line));
        return false;
      }
      if (other.op != me.op || other.line != me.line ||
          (other.file != me.file && std::strcmp(other.file, me.file) != 0)) {
        report(me.file, me.line,
               format("lanes of one warp at different sites: lane %d in %s "
                      "here, lane %d in %s at %s:%d",
                      l, op_name(me.op), j, op_name(other.op), other.file,
                      other.line));
        return false;
      }
      if (other.mask != me.mask) {
        report(me.file, me.line,
               format("lanes of one warp with different masks: lane %d "
                      "0x%08x, lane %d 0x%08x",
                      l, me.mask, j, other.mask));
        return false;
      }
    }
    if (me.op == detail::WarpOp::kShflXor) {
      const int source = l ^ me.lane_mask;
      const bool in_segment =
          source >= 0 && source < kWarp && source / me.width <= l / me.width;
      if (in_segment && !(me.mask >> source & 1u)) {
        report(me.file, me.line,
               format("%s: lane %d reads lane %d, outside the mask 0x%08x",
                      thread_name(me).c_str(), l, source, me.mask));
        return false;
      }
    }
  }
  if (!waiting) return true;
  // Every group is complete: exchange, then release.
  for (int l = 0; l < kWarp; ++l) {
    Lane& me = warp[l];
    if (me.state != State::kAtWarpOp) continue;
    const int source = l ^ me.lane_mask;
    const bool in_segment =
        source >= 0 && source < kWarp && source / me.width <= l / me.width;
    me.result = in_segment ? warp[source].value : me.value;
  }
  for (int l = 0; l < kWarp; ++l) {
    if (warp[l].state == State::kAtWarpOp) warp[l].state = State::kRunnable;
  }
  *released = true;
  return true;
}

// Releases the block's barrier when every live thread waits at it.
bool resolve_barrier(Block& b, bool* released) {
  const Lane* first = nullptr;
  const Lane* exited = nullptr;
  for (const Lane& l : b.lanes) {
    if (!l.exists) continue;
    if (l.state == State::kExited) {
      if (!exited) exited = &l;
      continue;
    }
    if (l.state != State::kAtBarrier) return true;  // not all there yet
    if (!first) {
      first = &l;
    } else if (l.line != first->line ||
               (l.file != first->file && std::strcmp(l.file, first->file))) {
      report(first->file, first->line,
             format("threads of one block at different __syncthreads: %s "
                    "here, %s at %s:%d",
                    thread_name(*first).c_str(), thread_name(l).c_str(),
                    l.file, l.line));
      return false;
    }
  }
  if (!first) return true;
  if (exited) {
    report(first->file, first->line,
           format("__syncthreads waits for %s, which has exited",
                  thread_name(*exited).c_str()));
    return false;
  }
  for (Lane& l : b.lanes) {
    if (l.state == State::kAtBarrier) l.state = State::kRunnable;
  }
  *released = true;
  return true;
}

// Runs one block to completion; false if it was abandoned on an error.
bool run_block(Block& b) {
  for (;;) {
    bool live = false;
    for (Lane& l : b.lanes) {
      if (l.exists && l.state == State::kRunnable) switch_to_lane(b, l);
    }
    for (const Lane& l : b.lanes) live |= l.exists && l.state != State::kExited;
    if (!live) return true;
    bool released = false;
    for (size_t w = 0; w * kWarp < b.lanes.size(); ++w) {
      if (!resolve_warp(b, w, &released)) return false;
    }
    if (!released && !resolve_barrier(b, &released)) return false;
    if (!released) {
      const Lane* stuck = nullptr;
      for (const Lane& l : b.lanes) {
        if (l.exists && l.state != State::kExited) stuck = &l;
      }
      report(stuck->file, stuck->line,
             "deadlock: no thread of the block can proceed; " +
                 thread_name(*stuck) + " waits here");
      return false;
    }
  }
}

void make_block(Block& b, const Launch& launch, uint3 block_idx,
                const std::function<void()>& body, char* grid_end) {
  const dim3 d = launch.block;
  const size_t threads = static_cast<size_t>(d.x) * d.y * d.z;
  const size_t slots = (threads + kWarp - 1) / kWarp * kWarp;
  b.body = &body;
  b.grid_end = grid_end;
  b.lanes.assign(slots, Lane());
  b.sync.reset(new char[slots / kWarp + 1]);
  b.stacks_bytes = threads * kStackBytes;
  // One mapping serves every block of every launch (blocks run one at a
  // time); it grows to the largest block seen. Not under ThreadSanitizer: a
  // fresh mapping per block keeps one block's stack frames from looking, to
  // it, like a race with the next block's.
  static char* stacks = nullptr;
  static size_t stacks_bytes = 0;
#if defined(KVAE_SIMT_TSAN)
  const bool reuse = false;
#else
  const bool reuse = true;
#endif
  if (!reuse || stacks_bytes < b.stacks_bytes) {
    if (stacks && reuse) munmap(stacks, stacks_bytes);
    stacks = static_cast<char*>(mmap(nullptr, b.stacks_bytes,
                                     PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                                     -1, 0));
    if (stacks == MAP_FAILED) {
      std::perror("simt: mmap of the fiber stacks");
      std::abort();
    }
    stacks_bytes = b.stacks_bytes;
  }
  b.stacks = stacks;
#if defined(KVAE_SIMT_TSAN)
  b.tsan_scheduler = __tsan_get_current_fiber();
#endif
  for (size_t t = 0; t < slots; ++t) {
    Lane& l = b.lanes[t];
    if (t >= threads) {
      l.exists = false;
      continue;
    }
    l.builtins = &g_builtins_storage[t];
    l.builtins->thread_idx = make_uint3(
        static_cast<unsigned>(t % d.x), static_cast<unsigned>(t / d.x % d.y),
        static_cast<unsigned>(t / (static_cast<size_t>(d.x) * d.y)));
    l.builtins->block_idx = block_idx;
    l.builtins->block_dim = launch.block;
    l.builtins->grid_dim = launch.grid;
    l.stack = b.stacks + t * kStackBytes;
    getcontext(&l.context);
    l.context.uc_stack.ss_sp = l.stack;
    l.context.uc_stack.ss_size = kStackBytes;
    l.context.uc_link = nullptr;
    makecontext(&l.context, lane_entry, 0);
#if defined(KVAE_SIMT_TSAN)
    l.tsan_fiber = __tsan_create_fiber(0);
#endif
  }
}

void free_block(Block& b) {
#if defined(KVAE_SIMT_TSAN)
  for (Lane& l : b.lanes) {
    if (l.tsan_fiber) __tsan_destroy_fiber(l.tsan_fiber);
  }
#endif
#if defined(KVAE_SIMT_ASAN)
  // Frames of abandoned (or finished) fibers leave their redzones poisoned,
  // and the next block reuses the stacks.
  __asan_unpoison_memory_region(b.stacks, b.stacks_bytes);
#endif
#if defined(KVAE_SIMT_TSAN)
  munmap(b.stacks, b.stacks_bytes);
#endif
}

std::string invalid_configuration(const Launch& l) {
  const uint64_t threads = static_cast<uint64_t>(l.block.x) * l.block.y *
                           l.block.z;
  if (l.grid.x < 1 || l.grid.y < 1 || l.grid.z < 1) {
    return format("grid (%u,%u,%u) has an empty dimension", l.grid.x,
                  l.grid.y, l.grid.z);
  }
  if (l.grid.x > 2147483647u || l.grid.y > 65535 || l.grid.z > 65535) {
    return format("grid (%u,%u,%u) exceeds (2^31-1, 65535, 65535)", l.grid.x,
                  l.grid.y, l.grid.z);
  }
  if (threads < 1 || threads > kMaxThreadsPerBlock || l.block.x > 1024 ||
      l.block.y > 1024 || l.block.z > 64) {
    return format("block (%u,%u,%u) is empty or exceeds 1024 threads",
                  l.block.x, l.block.y, l.block.z);
  }
  if (l.shared_bytes > 48 * 1024) {
    return format("%zu bytes of dynamic shared memory exceed 48 KiB",
                  l.shared_bytes);
  }
  return "";
}

// The block of the calling fiber; an intrinsic called by host code aborts.
Block& running_block(const char* what, const char* file, int line) {
  if (!g_block || !g_block->running) {
    std::fprintf(stderr, "%s:%d: %s outside a kernel\n", file, line, what);
    std::abort();
  }
  return *g_block;
}

}  // namespace

void set_device(const Device& device, int ordinal) {
  if (ordinal < 0 || ordinal >= kMaxDevices) std::abort();
  g_devices[ordinal] = device;
  g_current_device = ordinal;
}
int64_t occupancy_query_count() { return g_occupancy_queries; }

NoHostWaits::NoHostWaits(std::string where) {
  g_no_host_waits.push_back(std::move(where));
}
NoHostWaits::~NoHostWaits() { g_no_host_waits.pop_back(); }

// A call that makes the host wait for the device: an error inside a
// NoHostWaits scope.
void host_wait(const char* call) {
  if (g_no_host_waits.empty()) return;
  g_errors.push_back(g_no_host_waits.back() + ": " + call +
                     " makes the host wait for the device");
}
const Launch& last_launch() { return g_last_launch; }
const OccupancyQuery& last_occupancy_query() { return g_last_query; }
int64_t launch_count() { return g_launch_count; }
void run_only_last_blocks(int64_t blocks) { g_last_blocks_only = blocks; }

std::vector<std::string> take_errors() {
  std::vector<std::string> out;
  out.swap(g_errors);
  return out;
}

namespace detail {

uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int lane_mask,
                 int width, const char* file, int line) {
  Block& b = running_block(op_name(op), file, line);
  Lane& me = *b.running;
  me.state = State::kAtWarpOp;
  me.op = op;
  me.mask = mask;
  me.value = value;
  me.lane_mask = lane_mask;
  me.width = width;
  me.file = file;
  me.line = line;
  char* warp_sync = &b.sync[(&me - b.lanes.data()) / kWarp];
  tsan_release(warp_sync);
  switch_to_scheduler(b, me, false);
  tsan_acquire(warp_sync);
  return me.result;
}

void sync_threads(const char* file, int line) {
  Block& b = running_block("__syncthreads", file, line);
  Lane& me = *b.running;
  me.state = State::kAtBarrier;
  me.file = file;
  me.line = line;
  char* block_sync = &b.sync[b.lanes.size() / kWarp];
  tsan_release(block_sync);
  switch_to_scheduler(b, me, false);
  tsan_acquire(block_sync);
}

void run_grid(const Launch& launch, const std::function<void()>& body) {
  ++g_launch_count;
  g_last_launch = launch;
  const std::string invalid = invalid_configuration(launch);
  if (!invalid.empty()) {
    report(launch.file, launch.line, "invalid launch configuration: " + invalid);
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  const dim3 g = launch.grid;
  const int64_t blocks = static_cast<int64_t>(g.x) * g.y * g.z;
  const int64_t first =
      g_last_blocks_only > 0 && g_last_blocks_only < blocks
          ? blocks - g_last_blocks_only
          : 0;
  std::unique_ptr<char> grid_end(new char(0));
  for (int64_t i = first; i < blocks; ++i) {
    const uint3 block_idx = make_uint3(
        static_cast<unsigned>(i % g.x), static_cast<unsigned>(i / g.x % g.y),
        static_cast<unsigned>(i / (static_cast<int64_t>(g.x) * g.y)));
    Block b;
    make_block(b, launch, block_idx, body, grid_end.get());
    g_block = &b;
    const bool completed = run_block(b);
    g_block = nullptr;
    if (!completed) {
      // The abandoned threads released at the warp operation or barrier
      // they wait at: the host is ordered after them, as after a grid.
      for (size_t i = 0; i <= b.lanes.size() / kWarp; ++i) {
        tsan_acquire(&b.sync[i]);
      }
      tsan_acquire(grid_end.get());
    }
    free_block(b);
    if (!completed) return;
  }
  // The end of the grid orders every thread's writes before the host.
  tsan_acquire(grid_end.get());
}

}  // namespace detail
}  // namespace simt

// --- The CUDA runtime calls of the launchers, stubbed. ----------------------

extern "C" {

cudaError_t cudaGetDevice(int* device) {
  *device = simt::g_current_device;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= simt::kMaxDevices) return cudaErrorInvalidDevice;
  simt::g_current_device = device;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr,
                                   int device) {
  if (device < 0 || device >= simt::kMaxDevices) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = simt::g_devices[device].multiprocessors;
      return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock:
      *value = 1024;
      return cudaSuccess;
    case cudaDevAttrWarpSize:
      *value = simt::kWarp;
      return cudaSuccess;
    default:
      return cudaErrorInvalidValue;  // a test will say which is missing
  }
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    int* num_blocks, const void* func, int block_size,
    size_t dynamic_shared_bytes, unsigned int /*flags*/) {
  simt::g_last_query = {func, block_size, dynamic_shared_bytes};
  ++simt::g_occupancy_queries;
  if (block_size < 1 || block_size > 1024) return cudaErrorInvalidValue;
  *num_blocks = simt::g_devices[simt::g_current_device].blocks_per_multiprocessor;
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(
    int* num_blocks, const void* func, int block_size,
    size_t dynamic_shared_bytes) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
      num_blocks, func, block_size, dynamic_shared_bytes, 0);
}

// Memory is host memory here: copies are memcpy. The ones a GPU would make
// the host wait for are reported inside a NoHostWaits scope.
cudaError_t cudaMemcpy(void* dst, const void* src, size_t count,
                       cudaMemcpyKind kind) {
  simt::host_wait("cudaMemcpy");
  (void)kind;
  std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count,
                            cudaMemcpyKind kind, cudaStream_t /*stream*/) {
  // To the host, the data is of use only once the host waits for it.
  if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDefault) {
    simt::host_wait("cudaMemcpyAsync to the host");
  }
  std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t /*stream*/) {
  simt::host_wait("cudaStreamSynchronize");
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
  simt::host_wait("cudaDeviceSynchronize");
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t /*event*/) {
  simt::host_wait("cudaEventSynchronize");
  return cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t /*stream*/) {
  simt::host_wait("cudaStreamQuery");
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  const cudaError_t err = simt::g_last_error;
  simt::g_last_error = cudaSuccess;
  return err;
}

cudaError_t cudaPeekAtLastError(void) { return simt::g_last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    default: return "unrecognized error code";
  }
}

}  // extern "C"
