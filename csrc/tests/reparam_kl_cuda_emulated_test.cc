// The CUDA kernels, executed: reparam_kl_cuda.cu compiled by g++ over the SIMT
// emulation (simt/simt.h) and compared with the CPU kernels.
//
// The emulated kernels use the host's expf/logf/sincosf and the CPU kernels
// their own vector math, and the two sum in different orders: results agree
// within a tolerance relative to the magnitude of the terms summed. What a
// GPU would get wrong silently (shuffle masks, exited lanes, barriers) the
// emulation reports as errors, and each case fails on any; so is a launcher
// that makes the host wait for the device (a copy to the host, a
// synchronization).
//
// KVAE_CUDA_SOURCE names the .cu file (the mutation script passes a copy).
#include "simt/simt.h"
// clang-format off
#include KVAE_CUDA_SOURCE
// clang-format on

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/reparam_kl_cpu.h"
#include "test_support.h"

namespace {

using keras_vae::PhiloxStream;
using keras_vae::ReparamShape;
namespace kc = keras_vae::cuda;
using kc::NoiseSeed;

using keras_vae_test::g_failures;
using keras_vae_test::near;
using keras_vae_test::pattern;
using keras_vae_test::to_double;
int g_cases = 0;

template <typename T>
struct TypeInfo;
template <>
struct TypeInfo<float> {
  static constexpr const char* kName = "float32";
  static constexpr double kTolerance = 2e-5;
};
template <>
struct TypeInfo<double> {
  static constexpr const char* kName = "float64";
  static constexpr double kTolerance = 1e-12;
};
template <>
struct TypeInfo<__half> {
  static constexpr const char* kName = "float16";
  static constexpr double kTolerance = 4e-3;
};
template <>
struct TypeInfo<__nv_bfloat16> {
  static constexpr const char* kName = "bfloat16";
  static constexpr double kTolerance = 2e-2;
};

template <typename T>
T from_double(double x) {
  return T(static_cast<float>(x));
}
template <>
double from_double<double>(double x) {
  return x;
}

template <typename T>
constexpr int kPerBlock = keras_vae::NormalsPerBlock<
    typename keras_vae::cpu::ComputeType<T>::type>::kCount;

// n elements, offset by one element from the allocator's alignment when
// misaligned, prefilled with NaN so that an element never written shows.
template <typename T>
class Buffer {
 public:
  Buffer(int64_t n, bool misaligned)
      : storage_(n + 1, from_double<T>(NAN)), offset_(misaligned ? 1 : 0) {}
  T* data() { return storage_.data() + offset_; }
  T& operator[](int64_t i) { return storage_[offset_ + i]; }
  void fill(uint64_t salt, double lo, double hi) {
    for (size_t i = 0; i + 1 < storage_.size(); ++i) {
      (*this)[i] = from_double<T>(pattern(i + salt * 7919, lo, hi));
    }
  }

 private:
  std::vector<T> storage_;
  int offset_;
};

// Which buffers of a case are misaligned: bit i for the kernel's i-th buffer
// (forward: mean, log_var, z, kl, log_ratio; backward: mean, log_var,
// grad_z, grad_kl, grad_log_ratio, grad_mean, grad_log_var).
using Misaligned = unsigned;
constexpr Misaligned kAligned = 0, kAllMisaligned = ~0u;
constexpr int kForwardBuffers = 5, kBackwardBuffers = 7;
bool misaligned_at(Misaligned m, int buffer) { return (m >> buffer) & 1u; }

std::string misalignment_name(Misaligned m, int buffers) {
  if (m == kAligned) return "aligned";
  if (m == kAllMisaligned) return "misaligned";
  std::string out = "misaligned buffer";
  for (int b = 0; b < buffers; ++b) {
    if (misaligned_at(m, b)) out += " " + std::to_string(b);
  }
  return out;
}

// The seed of a case, as the launchers take it: a stream made on the host
// (TensorFlow's op), or two words in device memory, int64 (JAX with x64,
// PyTorch) or int32 (JAX by default), sign-extended.
enum class SeedForm { kHost, kDeviceInt64, kDeviceInt32 };

struct CaseSeed {
  int64_t words64[2];
  int32_t words32[2];
  PhiloxStream stream;  // what the CPU kernels draw from
  SeedForm form;

  CaseSeed(int64_t w0, int64_t w1, SeedForm f) : form(f) {
    if (f == SeedForm::kDeviceInt32) {
      // int32 words; a negative one checks the sign extension.
      w0 = -static_cast<int32_t>(w0 & 0x7fffffff);
      w1 = static_cast<int32_t>(w1 & 0x7fffffff);
    }
    words64[0] = w0;
    words64[1] = w1;
    words32[0] = static_cast<int32_t>(w0);
    words32[1] = static_cast<int32_t>(w1);
    stream = keras_vae::stream_from_seed(static_cast<uint64_t>(w0),
                                         static_cast<uint64_t>(w1));
  }
  NoiseSeed seed() const {
    switch (form) {
      case SeedForm::kHost: return stream;
      case SeedForm::kDeviceInt64: return NoiseSeed::on_device(words64);
      case SeedForm::kDeviceInt32: return NoiseSeed::on_device(words32);
    }
    return stream;
  }
  const char* name() const {
    return form == SeedForm::kHost          ? "host seed"
           : form == SeedForm::kDeviceInt64 ? "device s64 seed"
                                            : "device s32 seed";
  }
};

std::string describe(const char* what, const char* type, const ReparamShape& s,
                     const std::string& extra) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%s %s K=%lld N=%lld D=%lld %s", what, type,
                static_cast<long long>(s.num_samples),
                static_cast<long long>(s.rows), static_cast<long long>(s.dim),
                extra.c_str());
  return buf;
}

// No emulator errors since the last check; each is a failure of `where`.
void expect_no_emulator_errors(const std::string& where) {
  for (const std::string& e : simt::take_errors()) {
    EXPECT(false, "%s: %s", where.c_str(), e.c_str());
  }
}

// (device, kernel) pairs whose occupancy a launcher has asked for.
std::set<std::pair<int, const void*>> g_queried;

// The launchers' grid: the plan for the stubbed device's resident blocks,
// for the kernel they queried the occupancy of (once per device and kernel:
// `queries_before` is the count before the launch), one 256-thread block
// per resident slot at most.
void expect_launch(const void* kernel, int64_t planned_blocks,
                   int64_t queries_before, const std::string& where) {
  const simt::Launch& l = simt::last_launch();
  const simt::OccupancyQuery& q = simt::last_occupancy_query();
  int device = -1;
  cudaGetDevice(&device);
  const bool first = g_queried.insert({device, kernel}).second;
  const int64_t queries = simt::occupancy_query_count() - queries_before;
  EXPECT(queries == (first ? 1 : 0),
         "%s: %lld occupancy queries, want %d (once per device and kernel)",
         where.c_str(), static_cast<long long>(queries), first ? 1 : 0);
  if (first) {
    EXPECT(q.kernel == kernel, "%s: occupancy queried for another kernel",
           where.c_str());
    EXPECT(q.block_size == kc::kThreadsPerBlock && q.shared_bytes == 0,
           "%s: occupancy queried for %d threads, %zu bytes", where.c_str(),
           q.block_size, q.shared_bytes);
  }
  EXPECT(l.kernel == kernel, "%s: launched another kernel", where.c_str());
  EXPECT(l.block.x == kc::kThreadsPerBlock && l.block.y == 1 &&
             l.block.z == 1 && l.grid.y == 1 && l.grid.z == 1,
         "%s: block (%u,%u,%u) grid (%u,%u,%u)", where.c_str(), l.block.x,
         l.block.y, l.block.z, l.grid.x, l.grid.y, l.grid.z);
  EXPECT(l.grid.x == planned_blocks, "%s: grid of %u blocks, planned %lld",
         where.c_str(), l.grid.x, static_cast<long long>(planned_blocks));
}

// A device small enough to cap the grid (the kernels then loop, grid-stride)
// or large enough not to; each its own ordinal, since launchers cache what
// they ask of a device.
simt::Device device(bool capped) {
  simt::Device d;
  // 16 x 8 blocks of 256: more than the cases need, except where the
  // backward widens its groups to fill the device. Under ThreadSanitizer,
  // whose cost is per block, 4 x 8: still many blocks, fewer of them.
#if defined(__SANITIZE_THREAD__)
  d.multiprocessors = capped ? 1 : 4;
#else
  d.multiprocessors = capped ? 1 : 16;
#endif
  d.blocks_per_multiprocessor = capped ? 2 : 8;
  return d;
}
void use_device(bool capped) { simt::set_device(device(capped), capped ? 0 : 1); }

template <typename T>
struct ForwardRun {
  Buffer<T> z, kl, log_ratio;
  ForwardRun(const ReparamShape& s, Misaligned m)
      : z(s.num_samples * s.rows * s.dim, misaligned_at(m, 2)),
        kl(s.rows, misaligned_at(m, 3)),
        log_ratio(s.num_samples * s.rows, misaligned_at(m, 4)) {}
};

template <typename T>
void expect_forward_near(const ReparamShape& s, Buffer<T>& mean,
                         Buffer<T>& log_var, ForwardRun<T>& got,
                         ForwardRun<T>& want, const std::string& where) {
  const double tol = TypeInfo<T>::kTolerance;
  const int64_t K = s.num_samples, N = s.rows, D = s.dim;
  int bad = 0;
  for (int64_t n = 0; n < N; ++n) {
    double kl_scale = 0;
    for (int64_t d = 0; d < D; ++d) {
      const double mu = to_double(mean[n * D + d]);
      const double lv = to_double(log_var[n * D + d]);
      kl_scale += 0.5 * (std::exp(lv) + mu * mu + 1 + std::fabs(lv));
    }
    if (!near(to_double(got.kl[n]), to_double(want.kl[n]), kl_scale, tol) &&
        bad++ < 3) {
      EXPECT(false, "%s: kl[%lld] = %g, CPU %g", where.c_str(),
             static_cast<long long>(n), to_double(got.kl[n]),
             to_double(want.kl[n]));
    }
    for (int64_t k = 0; k < K; ++k) {
      const int64_t row = k * N + n;
      double lr_scale = 0;
      for (int64_t d = 0; d < D; ++d) {
        const double mu = to_double(mean[n * D + d]);
        const double lv = to_double(log_var[n * D + d]);
        const double zw = to_double(want.z[row * D + d]);
        const double zg = to_double(got.z[row * D + d]);
        const double eps = (zw - mu) / std::exp(0.5 * lv);
        lr_scale += 0.5 * (zw * zw + eps * eps + std::fabs(lv));
        if (!near(zg, zw, std::fabs(mu) + std::fabs(zw - mu), tol) &&
            bad++ < 3) {
          EXPECT(false, "%s: z[%lld, %lld, %lld] = %g, CPU %g", where.c_str(),
                 static_cast<long long>(k), static_cast<long long>(n),
                 static_cast<long long>(d), zg, zw);
        }
      }
      if (!near(to_double(got.log_ratio[row]), to_double(want.log_ratio[row]),
                lr_scale, tol) &&
          bad++ < 3) {
        EXPECT(false, "%s: log_ratio[%lld, %lld] = %g, CPU %g", where.c_str(),
               static_cast<long long>(k), static_cast<long long>(n),
               to_double(got.log_ratio[row]), to_double(want.log_ratio[row]));
      }
    }
  }
}

template <typename T>
void forward_case(const ReparamShape& s, Misaligned misaligned, bool capped,
                  SeedForm seed_form = SeedForm::kDeviceInt64) {
  ++g_cases;
  const CaseSeed seed(0x1234567890abcdefll + s.dim, 42 + s.rows, seed_form);
  const std::string where =
      describe("forward", TypeInfo<T>::kName, s,
               misalignment_name(misaligned, kForwardBuffers) +
                   (capped ? " capped " : " ") + seed.name());
  const PhiloxStream stream = seed.stream;
  const int64_t params = s.rows * s.dim;
  Buffer<T> mean(params, misaligned_at(misaligned, 0)),
      log_var(params, misaligned_at(misaligned, 1));
  mean.fill(1, -2.0, 2.0);
  log_var.fill(2, -3.0, 1.5);
  ForwardRun<T> got(s, misaligned), want(s, misaligned);

  use_device(capped);
  const int64_t queries = simt::occupancy_query_count();
  cudaError_t err;
  {
    simt::NoHostWaits no_waits(where);
    err = kc::reparam_kl_forward<T>(s, mean.data(), log_var.data(),
                                    seed.seed(), got.z.data(), got.kl.data(),
                                    got.log_ratio.data(), nullptr);
  }
  EXPECT(err == cudaSuccess, "%s: %s", where.c_str(), cudaGetErrorString(err));
  expect_no_emulator_errors(where);
  const simt::Device dev = device(capped);
  const kc::LaunchPlan plan = kc::forward_plan(
      s, kPerBlock<T>, misaligned == kAligned,
      int64_t{dev.multiprocessors} * dev.blocks_per_multiprocessor);
  expect_launch(reinterpret_cast<const void*>(&kc::forward_kernel<T>),
                plan.blocks, queries, where);

  keras_vae::cpu::reparam_kl_forward<T>(s, mean.data(), log_var.data(), stream,
                                        want.z.data(), want.kl.data(),
                                        want.log_ratio.data(),
                                        keras_vae::cpu::serial_for);
  expect_forward_near(s, mean, log_var, got, want, where);
}

template <typename T>
void backward_case(const ReparamShape& s, Misaligned misaligned, bool capped,
                   bool stop_params,
                   SeedForm seed_form = SeedForm::kDeviceInt64) {
  ++g_cases;
  const CaseSeed seed(0x7edcba0987654321ll + s.dim, 7 + s.rows, seed_form);
  const std::string where = describe(
      "backward", TypeInfo<T>::kName, s,
      misalignment_name(misaligned, kBackwardBuffers) +
          (capped ? " capped " : " ") + seed.name() +
          (stop_params ? " stop_params" : ""));
  const double tol = TypeInfo<T>::kTolerance;
  const int64_t K = s.num_samples, N = s.rows, D = s.dim;
  const PhiloxStream stream = seed.stream;
  auto at = [misaligned](int buffer) { return misaligned_at(misaligned, buffer); };
  Buffer<T> mean(N * D, at(0)), log_var(N * D, at(1));
  mean.fill(1, -2.0, 2.0);
  log_var.fill(2, -3.0, 1.5);
  Buffer<T> grad_z(K * N * D, at(2)), grad_kl(N, at(3)),
      grad_log_ratio(K * N, at(4));
  grad_z.fill(3, -1.0, 1.0);
  grad_kl.fill(4, -1.0, 1.0);
  grad_log_ratio.fill(5, -1.0, 1.0);
  Buffer<T> got_mean(N * D, at(5)), got_log_var(N * D, at(6));
  Buffer<T> again_mean(N * D, at(5)), again_log_var(N * D, at(6));
  Buffer<T> want_mean(N * D, false), want_log_var(N * D, false);

  use_device(capped);
  const int64_t queries = simt::occupancy_query_count();
  cudaError_t err;
  {
    simt::NoHostWaits no_waits(where);
    err = kc::reparam_kl_backward<T>(
        s, mean.data(), log_var.data(), seed.seed(), grad_z.data(),
        grad_kl.data(), grad_log_ratio.data(), stop_params, got_mean.data(),
        got_log_var.data(), nullptr);
  }
  EXPECT(err == cudaSuccess, "%s: %s", where.c_str(), cudaGetErrorString(err));
  expect_no_emulator_errors(where);
  const simt::Device dev = device(capped);
  const kc::LaunchPlan plan = kc::backward_plan(
      s, kPerBlock<T>, misaligned == kAligned,
      int64_t{dev.multiprocessors} * dev.blocks_per_multiprocessor);
  expect_launch(reinterpret_cast<const void*>(&kc::backward_kernel<T>),
                plan.blocks, queries, where);

  // Run after run, the same bits: the partial sums over k are reduced in a
  // fixed order.
  kc::reparam_kl_backward<T>(s, mean.data(), log_var.data(), seed.seed(),
                             grad_z.data(), grad_kl.data(),
                             grad_log_ratio.data(), stop_params,
                             again_mean.data(), again_log_var.data(), nullptr);
  expect_no_emulator_errors(where + " (again)");
  EXPECT(std::memcmp(got_mean.data(), again_mean.data(), N * D * sizeof(T)) ==
                 0 &&
             std::memcmp(got_log_var.data(), again_log_var.data(),
                         N * D * sizeof(T)) == 0,
         "%s: a second run gave other bits", where.c_str());

  keras_vae::cpu::reparam_kl_backward<T>(
      s, mean.data(), log_var.data(), stream, grad_z.data(), grad_kl.data(),
      grad_log_ratio.data(), stop_params, want_mean.data(),
      want_log_var.data(), keras_vae::cpu::serial_for);
  // The noise, for the magnitudes of the terms: z of the CPU forward.
  ForwardRun<T> fwd(s, kAligned);
  keras_vae::cpu::reparam_kl_forward<T>(s, mean.data(), log_var.data(), stream,
                                        fwd.z.data(), fwd.kl.data(),
                                        fwd.log_ratio.data(),
                                        keras_vae::cpu::serial_for);
  int bad = 0;
  for (int64_t n = 0; n < N; ++n) {
    const double g_kl = to_double(grad_kl[n]);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = n * D + d;
      const double mu = to_double(mean[i]);
      const double sd = std::exp(0.5 * to_double(log_var[i]));
      double mu_scale = std::fabs(g_kl * mu);
      double lv_scale = std::fabs(g_kl) * 0.5 * (sd * sd + 1);
      for (int64_t k = 0; k < K; ++k) {
        const double zz = to_double(fwd.z[(k * N + n) * D + d]);
        const double eps = (zz - mu) / sd;
        const double g_z = std::fabs(to_double(grad_z[(k * N + n) * D + d]));
        const double g_lr = std::fabs(to_double(grad_log_ratio[k * N + n]));
        mu_scale += g_z + g_lr * (std::fabs(zz) + std::fabs(eps / sd));
        lv_scale += (g_z + g_lr * std::fabs(zz)) * 0.5 * sd * std::fabs(eps) +
                    0.5 * g_lr * (eps * eps + 1);
      }
      const double gm = to_double(got_mean[i]), wm = to_double(want_mean[i]);
      const double gl = to_double(got_log_var[i]),
                   wl = to_double(want_log_var[i]);
      if ((!near(gm, wm, mu_scale, tol) || !near(gl, wl, lv_scale, tol)) &&
          bad++ < 3) {
        EXPECT(false, "%s: at [%lld, %lld] grad_mean %g (CPU %g), "
               "grad_log_var %g (CPU %g)",
               where.c_str(), static_cast<long long>(n),
               static_cast<long long>(d), gm, wm, gl, wl);
      }
    }
  }
}

// The forward kernel itself at every group width: the plan picks one per D,
// but any power of two up to a warp must give the same rows.
template <typename T>
void group_width_case(const ReparamShape& s, int group_width) {
  ++g_cases;
  const std::string where = describe("forward_kernel", TypeInfo<T>::kName, s,
                                     "group_width " +
                                         std::to_string(group_width));
  const PhiloxStream stream = keras_vae::stream_from_seed(99, s.dim);
  Buffer<T> mean(s.rows * s.dim, false), log_var(s.rows * s.dim, false);
  mean.fill(6, -2.0, 2.0);
  log_var.fill(7, -3.0, 1.5);
  ForwardRun<T> got(s, kAligned), want(s, kAligned);
  const bool vectorized = s.dim % kPerBlock<T> == 0;
  // Two blocks' worth of threads at most: every width also loops.
  simt::launch(__FILE__, __LINE__, &kc::forward_kernel<T>, dim3(2),
               dim3(kc::kThreadsPerBlock), 0, nullptr, s, mean.data(),
               log_var.data(), stream, got.z.data(), got.kl.data(),
               got.log_ratio.data(), group_width, vectorized);
  expect_no_emulator_errors(where);
  keras_vae::cpu::reparam_kl_forward<T>(s, mean.data(), log_var.data(), stream,
                                        want.z.data(), want.kl.data(),
                                        want.log_ratio.data(),
                                        keras_vae::cpu::serial_for);
  expect_forward_near(s, mean, log_var, got, want, where);
}

// The backward kernel itself at every group width: the plan picks one per
// shape and device, but any power of two up to a warp must give the CPU
// kernels' gradients (K = 7 leaves some lanes of the wider groups short by
// one sample, and those wider than 7 lanes some with none).
template <typename T>
void backward_group_width_case(const ReparamShape& s, int group_width) {
  ++g_cases;
  const std::string where = describe("backward_kernel", TypeInfo<T>::kName, s,
                                     "group_width " +
                                         std::to_string(group_width));
  const int64_t K = s.num_samples, N = s.rows, D = s.dim;
  const PhiloxStream stream = keras_vae::stream_from_seed(17, s.dim);
  Buffer<T> mean(N * D, false), log_var(N * D, false), grad_z(K * N * D, false),
      grad_kl(N, false), grad_log_ratio(K * N, false);
  mean.fill(6, -2.0, 2.0);
  log_var.fill(7, -3.0, 1.5);
  grad_z.fill(8, -1.0, 1.0);
  grad_kl.fill(9, -1.0, 1.0);
  grad_log_ratio.fill(10, -1.0, 1.0);
  Buffer<T> got_mean(N * D, false), got_log_var(N * D, false),
      want_mean(N * D, false), want_log_var(N * D, false);
  const bool vectorized = D % kPerBlock<T> == 0;
  // Two blocks' worth of threads at most: every width also loops.
  simt::launch(__FILE__, __LINE__, &kc::backward_kernel<T>, dim3(2),
               dim3(kc::kThreadsPerBlock), 0, nullptr, s, mean.data(),
               log_var.data(), NoiseSeed(stream), grad_z.data(),
               grad_kl.data(), grad_log_ratio.data(), false, got_mean.data(),
               got_log_var.data(), group_width, vectorized);
  expect_no_emulator_errors(where);
  keras_vae::cpu::reparam_kl_backward<T>(
      s, mean.data(), log_var.data(), stream, grad_z.data(), grad_kl.data(),
      grad_log_ratio.data(), false, want_mean.data(), want_log_var.data(),
      keras_vae::cpu::serial_for);
  // Terms of magnitude O(10) at most, K of them: an absolute tolerance.
  const double tol = TypeInfo<T>::kTolerance * K;
  int bad = 0;
  for (int64_t i = 0; i < N * D; ++i) {
    const double gm = to_double(got_mean[i]), wm = to_double(want_mean[i]);
    const double gl = to_double(got_log_var[i]),
                 wl = to_double(want_log_var[i]);
    if ((!near(gm, wm, 10.0, tol) || !near(gl, wl, 10.0, tol)) && bad++ < 3) {
      EXPECT(false, "%s: element %lld: grad_mean %g (CPU %g), grad_log_var "
             "%g (CPU %g)", where.c_str(), static_cast<long long>(i), gm, wm,
             gl, wl);
    }
  }
}

template <typename T>
void matrix() {
  constexpr int P = kPerBlock<T>;
  std::vector<int64_t> dims = {1, 3, P - 1, P, P + 1, 33, 1000};
  std::sort(dims.begin(), dims.end());
  dims.erase(std::unique(dims.begin(), dims.end()), dims.end());
  int variant = 0;
  for (int64_t D : dims) {
    for (int64_t K : {1, 2, 50}) {
      // Odd N; fewer rows where D is large, to keep the run short.
      const int64_t N = D >= 1000 ? 3 : (K >= 50 ? 5 : 37);
      const ReparamShape s{K, N, D};
      for (Misaligned misaligned : {kAligned, kAllMisaligned}) {
        // Capped and uncapped grids alternate over the cases, both for each
        // (D, K); so do the three forms of the seed.
        const bool capped = (variant++ % 2) == 0;
        const SeedForm seed = static_cast<SeedForm>(variant % 3);
        forward_case<T>(s, misaligned, capped, seed);
        backward_case<T>(s, misaligned, !capped, (variant % 4) < 2, seed);
      }
    }
  }
  // One buffer misaligned at a time, the others aligned, on a shape whose
  // rows are whole Philox blocks (where the kernels would vectorize): a
  // launcher that checks only some buffers before a vector access is caught
  // by UndefinedBehaviorSanitizer's alignment check.
  for (int b = 0; b < kBackwardBuffers; ++b) {
    const Misaligned one = 1u << b;
    if (b < kForwardBuffers) forward_case<T>({3, 5, 4 * P}, one, b % 2 == 0);
    backward_case<T>({3, 5, 4 * P}, one, b % 2 == 1, b % 2 == 0);
  }
  // D giving each group width of the plan (1, 2, 4, ..., 32 chunks).
  for (int64_t chunks : {1, 2, 3, 7, 15, 31}) {
    forward_case<T>({2, 9, chunks * P}, kAligned, true);
  }
  for (int width = 1; width <= kc::kWarpSize; width *= 2) {
    group_width_case<T>({3, 11, 5 * P + 1}, width);
    group_width_case<T>({2, 7, 4 * P}, width);
    backward_group_width_case<T>({7, 13, 2 * P + 1}, width);
    backward_group_width_case<T>({3, 17, 4 * P}, width);
  }
}

// --- Indexing past 2^31 -----------------------------------------------------

// n elements reserved, not committed: only the pages touched cost memory.
template <typename T>
class SparseBuffer {
 public:
  explicit SparseBuffer(int64_t n) : bytes_(static_cast<size_t>(n) * sizeof(T)) {
    void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      std::perror("mmap of a sparse test buffer");
      std::abort();
    }
    data_ = static_cast<T*>(p);
  }
  ~SparseBuffer() { munmap(data_, bytes_); }
  SparseBuffer(const SparseBuffer&) = delete;
  SparseBuffer& operator=(const SparseBuffer&) = delete;
  T* data() { return data_; }
  T& operator[](int64_t i) { return data_[i]; }

 private:
  size_t bytes_;
  T* data_;
};

// The stream of flat index `first` on (first a multiple of a Philox block):
// the CPU kernels on rows [n0, N) of one sample then draw the same noise.
PhiloxStream skipped(PhiloxStream s, int64_t first, int per_block) {
  s.counter = keras_vae::philox_skip(s.counter,
                                     static_cast<uint64_t>(first / per_block));
  return s;
}

// A grid as large as the work (nothing capped), of which only the last
// blocks run, on sparse buffers: the rows those blocks own must equal the
// CPU kernels' on the same rows.
constexpr int64_t kLastBlocks = 2;

simt::Device huge_device() {
  simt::Device d;
  d.multiprocessors = 1 << 20;
  d.blocks_per_multiprocessor = 1 << 10;
  return d;
}

// The first row n whose every item (k, n) lies at or past item `first_item`.
int64_t first_full_row(int64_t first_item, int64_t per_row) {
  return (first_item + per_row - 1) / per_row;
}

template <typename T>
void huge_forward_case(const ReparamShape& s) {
  ++g_cases;
  constexpr int P = kPerBlock<T>;
  const int64_t K = s.num_samples, N = s.rows, D = s.dim;
  const std::string where = describe("forward", TypeInfo<T>::kName, s,
                                     "past 2^31, last blocks");
  const PhiloxStream stream = keras_vae::stream_from_seed(5, 6);
  const int64_t resident = int64_t{huge_device().multiprocessors} *
                           huge_device().blocks_per_multiprocessor;
  const kc::LaunchPlan plan = kc::forward_plan(s, P, true, resident);
  EXPECT(plan.threads == plan.blocks * kc::kThreadsPerBlock,
         "%s: the grid is capped", where.c_str());
  const int64_t rows_per_warp = kc::kWarpSize / plan.group_width;
  const int64_t first_item = (plan.blocks - kLastBlocks) *
                             (kc::kThreadsPerBlock / kc::kWarpSize) *
                             rows_per_warp;
  const int64_t n0 = first_full_row(first_item, K);
  const int64_t rows = N - n0;

  SparseBuffer<T> mean(N * D), log_var(N * D), z(K * N * D), kl(N),
      log_ratio(K * N);
  for (int64_t i = n0 * D; i < N * D; ++i) {
    mean[i] = from_double<T>(pattern(i, -2.0, 2.0));
    log_var[i] = from_double<T>(pattern(i + 1, -3.0, 1.5));
  }
  const T nan = from_double<T>(NAN);
  for (int64_t n = n0; n < N; ++n) {
    kl[n] = nan;
    for (int64_t k = 0; k < K; ++k) {
      log_ratio[k * N + n] = nan;
      for (int64_t d = 0; d < D; ++d) z[(k * N + n) * D + d] = nan;
    }
  }
  simt::set_device(huge_device(), 2);
  simt::run_only_last_blocks(kLastBlocks);
  const cudaError_t err = kc::reparam_kl_forward<T>(
      s, mean.data(), log_var.data(), stream, z.data(), kl.data(),
      log_ratio.data(), nullptr);
  simt::run_only_last_blocks(0);
  EXPECT(err == cudaSuccess, "%s: %s", where.c_str(), cudaGetErrorString(err));
  expect_no_emulator_errors(where);
  EXPECT(simt::last_launch().grid.x == plan.blocks, "%s: grid of %u blocks",
         where.c_str(), simt::last_launch().grid.x);

  // One sample at a time: rows [n0, N) of sample k are one contiguous range
  // of z and of the noise.
  const ReparamShape tail{1, rows, D};
  for (int64_t k = 0; k < K; ++k) {
    ForwardRun<T> got(tail, kAligned), want(tail, kAligned);
    Buffer<T> tail_mean(rows * D, false), tail_log_var(rows * D, false);
    for (int64_t i = 0; i < rows * D; ++i) {
      tail_mean[i] = mean[n0 * D + i];
      tail_log_var[i] = log_var[n0 * D + i];
      got.z[i] = z[(k * N + n0) * D + i];
    }
    for (int64_t r = 0; r < rows; ++r) {
      got.kl[r] = kl[n0 + r];
      got.log_ratio[r] = log_ratio[k * N + n0 + r];
    }
    keras_vae::cpu::reparam_kl_forward<T>(
        tail, tail_mean.data(), tail_log_var.data(),
        skipped(stream, (k * N + n0) * D, P), want.z.data(), want.kl.data(),
        want.log_ratio.data(), keras_vae::cpu::serial_for);
    expect_forward_near(tail, tail_mean, tail_log_var, got, want,
                        where + " sample " + std::to_string(k));
  }
}

// K = 1, so that the gradient of rows [n0, N) is the CPU kernels' on them.
template <typename T>
void huge_backward_case(const ReparamShape& s) {
  ++g_cases;
  constexpr int P = kPerBlock<T>;
  const int64_t N = s.rows, D = s.dim;
  const std::string where = describe("backward", TypeInfo<T>::kName, s,
                                     "past 2^31, last blocks");
  const PhiloxStream stream = keras_vae::stream_from_seed(7, 8);
  const int64_t resident = int64_t{huge_device().multiprocessors} *
                           huge_device().blocks_per_multiprocessor;
  const kc::LaunchPlan plan = kc::backward_plan(s, P, true, resident);
  const int64_t chunks = (D + P - 1) / P;
  const int64_t n0 = first_full_row(
      (plan.blocks - kLastBlocks) * kc::kThreadsPerBlock, chunks);
  const int64_t rows = N - n0;

  SparseBuffer<T> mean(N * D), log_var(N * D), grad_z(N * D), grad_kl(N),
      grad_log_ratio(N), grad_mean(N * D), grad_log_var(N * D);
  const T nan = from_double<T>(NAN);
  for (int64_t i = n0 * D; i < N * D; ++i) {
    mean[i] = from_double<T>(pattern(i, -2.0, 2.0));
    log_var[i] = from_double<T>(pattern(i + 1, -3.0, 1.5));
    grad_z[i] = from_double<T>(pattern(i + 2, -1.0, 1.0));
    grad_mean[i] = grad_log_var[i] = nan;
  }
  for (int64_t n = n0; n < N; ++n) {
    grad_kl[n] = from_double<T>(pattern(n + 3, -1.0, 1.0));
    grad_log_ratio[n] = from_double<T>(pattern(n + 4, -1.0, 1.0));
  }
  simt::set_device(huge_device(), 2);
  simt::run_only_last_blocks(kLastBlocks);
  const cudaError_t err = kc::reparam_kl_backward<T>(
      s, mean.data(), log_var.data(), stream, grad_z.data(), grad_kl.data(),
      grad_log_ratio.data(), false, grad_mean.data(), grad_log_var.data(),
      nullptr);
  simt::run_only_last_blocks(0);
  EXPECT(err == cudaSuccess, "%s: %s", where.c_str(), cudaGetErrorString(err));
  expect_no_emulator_errors(where);

  const ReparamShape tail{1, rows, D};
  Buffer<T> want_mean(rows * D, false), want_log_var(rows * D, false);
  keras_vae::cpu::reparam_kl_backward<T>(
      tail, mean.data() + n0 * D, log_var.data() + n0 * D,
      skipped(stream, n0 * D, P), grad_z.data() + n0 * D,
      grad_kl.data() + n0, grad_log_ratio.data() + n0, false,
      want_mean.data(), want_log_var.data(), keras_vae::cpu::serial_for);
  // A few terms of magnitude O(10) at most: an absolute tolerance of that.
  const double tol = 20 * TypeInfo<T>::kTolerance;
  int bad = 0;
  for (int64_t i = 0; i < rows * D; ++i) {
    const double gm = to_double(grad_mean[n0 * D + i]);
    const double gl = to_double(grad_log_var[n0 * D + i]);
    if ((!near(gm, to_double(want_mean[i]), 1.0, tol) ||
         !near(gl, to_double(want_log_var[i]), 1.0, tol)) &&
        bad++ < 3) {
      EXPECT(false, "%s: element %lld: grad_mean %g (CPU %g), grad_log_var "
             "%g (CPU %g)", where.c_str(), static_cast<long long>(n0 * D + i),
             gm, to_double(want_mean[i]), gl, to_double(want_log_var[i]));
    }
  }
}

// 2^31, 2^33 and 2^34 elements: flat indices past int32, and at 2^34 rows
// of one element, thread indices past uint32 (where blockIdx.x * blockDim.x
// wraps if computed in 32 bits).
void past_2_to_31() {
  huge_forward_case<float>({1, int64_t{1} << 29, 4});
  huge_backward_case<float>({1, int64_t{1} << 29, 4});
  huge_forward_case<float>({2, int64_t{1} << 30, 4});
  huge_backward_case<float>({1, int64_t{1} << 30, 8});
  huge_forward_case<__half>({1, int64_t{1} << 34, 1});
  huge_backward_case<__half>({1, int64_t{1} << 34, 1});
}

}  // namespace

// Arguments: the dtypes to run (all four by default).
int main(int argc, char** argv) {
  std::vector<std::string> types(argv + 1, argv + argc);
  if (types.empty()) types = {"float32", "float64", "float16", "bfloat16"};
  past_2_to_31();
  for (const std::string& t : types) {
    if (t == TypeInfo<float>::kName) {
      matrix<float>();
    } else if (t == TypeInfo<double>::kName) {
      matrix<double>();
    } else if (t == TypeInfo<__half>::kName) {
      matrix<__half>();
    } else if (t == TypeInfo<__nv_bfloat16>::kName) {
      matrix<__nv_bfloat16>();
    } else {
      std::fprintf(stderr, "unknown dtype %s\n", t.c_str());
      return 2;
    }
  }
  if (g_failures > 0) {
    std::fprintf(stderr, "%d failure(s) in %d emulated cases\n", g_failures,
                 g_cases);
    return 1;
  }
  std::printf("%d emulated cases passed\n", g_cases);
  return 0;
}
