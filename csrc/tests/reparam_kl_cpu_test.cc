// The framework-free CPU kernels against a direct scalar computation, over
// shapes that are not multiples of any SIMD width or Philox block, built with
// AddressSanitizer and UndefinedBehaviorSanitizer (see CMakeLists.txt here).
//
// The oracle reads each normal number by its flat index straight from the
// Philox block that holds it, and writes out every formula in double, so it
// shares neither the kernels' cursor, sharding nor vector code. That the
// layout equals tf.random.stateless_normal is tested from Python.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "cpu/reparam_kl_cpu.h"
#include "reparam_kl.h"
#include "test_support.h"

namespace {

using keras_vae::PhiloxStream;
using keras_vae::ReparamShape;
using keras_vae::cpu::ParallelFor;

using keras_vae_test::g_failures;
using keras_vae_test::near;
using keras_vae_test::pattern;
using keras_vae_test::to_double;

// A 16-bit float (bfloat16, round to nearest even) that converts to and from
// float like Eigen's half types do, so the half-precision instantiation runs
// here without Eigen.
struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  explicit BFloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    if (std::isnan(f)) {
      bits = 0x7fc0;
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = static_cast<uint16_t>(u >> 16);
    }
  }
  explicit operator float() const {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
  }
};

// Tolerances relative to the magnitude of the terms summed.
template <typename T>
double tolerance();
template <>
double tolerance<double>() { return 1e-12; }
template <>
double tolerance<float>() { return 2e-5; }
template <>
double tolerance<BFloat16>() { return 2e-2; }

template <typename T>
using Compute = typename keras_vae::cpu::ComputeType<T>::type;

// The normal number at flat index i of the stream, straight from its block.
template <typename C>
double normal_at(const PhiloxStream& stream, uint64_t i) {
  constexpr int kCount = keras_vae::NormalsPerBlock<C>::kCount;
  C lanes[kCount];
  keras_vae::NormalsPerBlock<C>::fill(stream.block(i / kCount), lanes);
  return static_cast<double>(lanes[i % kCount]);
}

// A buffer of exactly n elements whose start is offset by one element from
// the allocator's alignment when misaligned is set: the kernels must not
// assume aligned pointers, and AddressSanitizer flags any read past the end.
template <typename T>
class Buffer {
 public:
  Buffer(int64_t n, bool misaligned)
      : storage_(new T[n + (misaligned ? 1 : 0)]),
        data_(storage_.get() + (misaligned ? 1 : 0)),
        size_(n) {}
  T* data() { return data_; }
  const T* data() const { return data_; }
  T& operator[](int64_t i) { return data_[i]; }
  const T& operator[](int64_t i) const { return data_[i]; }
  int64_t size() const { return size_; }

 private:
  std::unique_ptr<T[]> storage_;
  T* data_;
  int64_t size_;
};

template <typename T>
void fill(Buffer<T>* b, uint64_t salt, double lo, double hi) {
  for (int64_t i = 0; i < b->size(); ++i) {
    (*b)[i] = T(static_cast<Compute<T>>(pattern(i + salt * 7919, lo, hi)));
  }
}

// Parallel-fors that cut [0, total) differently: one shard, shards of a
// fixed odd size (rows split across shards in the middle of a sample group),
// and real threads.
ParallelFor serial() { return keras_vae::cpu::serial_for; }

ParallelFor fixed_shards(int64_t shard) {
  return [shard](int64_t total, int64_t,
                 const std::function<void(int64_t, int64_t)>& fn) {
    for (int64_t b = 0; b < total; b += shard) fn(b, std::min(total, b + shard));
  };
}

ParallelFor threads(int64_t workers) {
  return [workers](int64_t total, int64_t,
                   const std::function<void(int64_t, int64_t)>& fn) {
    std::vector<std::thread> pool;
    const int64_t step = std::max<int64_t>(1, (total + workers - 1) / workers);
    for (int64_t b = 0; b < total; b += step) {
      pool.emplace_back(fn, b, std::min(total, b + step));
    }
    for (auto& t : pool) t.join();
  };
}

template <typename T>
void check_case(const char* type_name, int64_t K, int64_t N, int64_t D,
                bool stop_params, bool misaligned, const ParallelFor& pfor,
                const char* pfor_name) {
  using C = Compute<T>;
  const double tol = tolerance<T>();
  const ReparamShape shape{K, N, D};
  const PhiloxStream stream =
      keras_vae::stream_from_seed(0x1234567890abcdefull + D, 42 + N * K);

  Buffer<T> mean(N * D, misaligned), log_var(N * D, misaligned);
  fill(&mean, 1, -2.0, 2.0);
  fill(&log_var, 2, -3.0, 2.0);
  Buffer<T> z(K * N * D, misaligned), kl(N, misaligned),
      log_ratio(K * N, misaligned);
  keras_vae::cpu::reparam_kl_forward<T>(shape, mean.data(), log_var.data(),
                                        stream, z.data(), kl.data(),
                                        log_ratio.data(), pfor);

  Buffer<T> grad_z(K * N * D, misaligned), grad_kl(N, misaligned),
      grad_log_ratio(K * N, misaligned);
  fill(&grad_z, 3, -1.0, 1.0);
  fill(&grad_kl, 4, -1.0, 1.0);
  fill(&grad_log_ratio, 5, -1.0, 1.0);
  Buffer<T> grad_mean(N * D, misaligned), grad_log_var(N * D, misaligned);
  keras_vae::cpu::reparam_kl_backward<T>(
      shape, mean.data(), log_var.data(), stream, grad_z.data(),
      grad_kl.data(), grad_log_ratio.data(), stop_params, grad_mean.data(),
      grad_log_var.data(), pfor);

  // The oracle, in double, from the inputs as the kernel sees them.
  // want_* are the gradients; scale_* the sums of the magnitudes of their
  // terms, which bound the rounding error of any summation order.
  std::vector<double> want_gm(N * D, 0.0), want_glv(N * D, 0.0);
  std::vector<double> scale_gm(N * D, 0.0), scale_glv(N * D, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    double kl_sum = 0, kl_scale = 0;
    const double g_kl = to_double(grad_kl[n]);
    for (int64_t d = 0; d < D; ++d) {
      const double mu = to_double(mean[n * D + d]);
      const double lv = to_double(log_var[n * D + d]);
      const double term = 0.5 * (std::exp(lv) + mu * mu - 1.0 - lv);
      kl_sum += term;
      kl_scale += std::fabs(term);
      want_gm[n * D + d] += g_kl * mu;
      want_glv[n * D + d] += g_kl * 0.5 * (std::exp(lv) - 1.0);
      scale_gm[n * D + d] += std::fabs(g_kl * mu);
      scale_glv[n * D + d] += std::fabs(g_kl) * 0.5 * (std::exp(lv) + 1.0);
    }
    const double got_kl = to_double(kl[n]);
    EXPECT(std::isfinite(got_kl), "%s %s K=%lld N=%lld D=%lld: kl[%lld] = %g",
           type_name, pfor_name, (long long)K, (long long)N, (long long)D,
           (long long)n, got_kl);
    EXPECT(near(got_kl, kl_sum, kl_scale, tol),
           "%s %s K=%lld N=%lld D=%lld: kl[%lld] = %.9g, want %.9g", type_name,
           pfor_name, (long long)K, (long long)N, (long long)D, (long long)n,
           got_kl, kl_sum);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t row = k * N + n;
      double lr_sum = 0, lr_scale = 0;
      const double g_lr = to_double(grad_log_ratio[row]);
      for (int64_t d = 0; d < D; ++d) {
        const int64_t i = row * D + d;
        const double eps = normal_at<C>(stream, static_cast<uint64_t>(i));
        const double mu = to_double(mean[n * D + d]);
        const double lv = to_double(log_var[n * D + d]);
        const double s = std::exp(0.5 * lv);
        const double zz = mu + s * eps;
        const double got_z = to_double(z[i]);
        EXPECT(std::isfinite(got_z) && near(got_z, zz, zz, tol),
               "%s %s K=%lld N=%lld D=%lld: z[%lld] = %.9g, want %.9g",
               type_name, pfor_name, (long long)K, (long long)N, (long long)D,
               (long long)i, got_z, zz);
        const double term = 0.5 * (zz * zz - eps * eps - lv);
        lr_sum += term;
        lr_scale += std::fabs(zz * zz) + eps * eps + std::fabs(lv);
        // L = g_z z + g_lr log_ratio; dz/dmu = 1, dz/dlv = s eps / 2.
        // log_ratio = z^2/2 - ((z - mu) / s)^2 / 2 - lv/2; with the
        // parameters stopped inside log q only its z path remains.
        const double g_z = to_double(grad_z[i]);
        const double dlogq_dz = -eps / s;
        const double dlr_dz = zz + dlogq_dz;
        const double dlr_dmu_direct = stop_params ? 0.0 : eps / s;
        const double dlr_dlv_direct = stop_params ? 0.0 : 0.5 * eps * eps - 0.5;
        want_gm[n * D + d] += g_z + g_lr * (dlr_dz + dlr_dmu_direct);
        want_glv[n * D + d] += g_z * 0.5 * s * eps +
                               g_lr * (dlr_dz * 0.5 * s * eps + dlr_dlv_direct);
        scale_gm[n * D + d] += std::fabs(g_z) + std::fabs(g_lr) *
            (std::fabs(zz) + 2.0 * std::fabs(eps / s));
        scale_glv[n * D + d] += (std::fabs(g_z) + std::fabs(g_lr) *
            (std::fabs(zz) + std::fabs(eps / s))) * std::fabs(0.5 * s * eps) +
            std::fabs(g_lr) * (0.5 * eps * eps + 0.5);
      }
      const double got_lr = to_double(log_ratio[row]);
      EXPECT(std::isfinite(got_lr) && near(got_lr, lr_sum, lr_scale, tol),
             "%s %s K=%lld N=%lld D=%lld: log_ratio[%lld] = %.9g, want %.9g",
             type_name, pfor_name, (long long)K, (long long)N, (long long)D,
             (long long)row, got_lr, lr_sum);
    }
  }
  for (int64_t i = 0; i < N * D; ++i) {
    const double got_gm = to_double(grad_mean[i]);
    const double got_glv = to_double(grad_log_var[i]);
    EXPECT(std::isfinite(got_gm) && near(got_gm, want_gm[i], scale_gm[i], tol),
           "%s %s K=%lld N=%lld D=%lld stop=%d: grad_mean[%lld] = %.9g, "
           "want %.9g", type_name, pfor_name, (long long)K, (long long)N,
           (long long)D, stop_params, (long long)i, got_gm, want_gm[i]);
    EXPECT(std::isfinite(got_glv) &&
               near(got_glv, want_glv[i], scale_glv[i], tol),
           "%s %s K=%lld N=%lld D=%lld stop=%d: grad_log_var[%lld] = %.9g, "
           "want %.9g", type_name, pfor_name, (long long)K, (long long)N,
           (long long)D, stop_params, (long long)i, got_glv, want_glv[i]);
  }
}

template <typename T>
int run_type(const char* type_name) {
  int cases = 0;
  const std::pair<ParallelFor, const char*> pfors[] = {
      {serial(), "serial"},
      {fixed_shards(1), "shards-of-1"},
      {fixed_shards(3), "shards-of-3"},
      {threads(3), "threads"}};
  for (int64_t D : {1, 3, 5, 17, 33}) {
    for (int64_t N : {0, 1, 7}) {
      for (int64_t K : {1, 3}) {
        for (bool stop : {false, true}) {
          for (bool misaligned : {false, true}) {
            for (const auto& pf : pfors) {
              check_case<T>(type_name, K, N, D, stop, misaligned, pf.first,
                            pf.second);
              ++cases;
            }
          }
        }
      }
    }
  }
  // Sizes past the kernels' working chunks (about a thousand elements): rows
  // that straddle a chunk, and a row longer than a chunk.
  const int64_t large[][3] = {{2, 67, 33}, {1, 3, 1500}, {3, 2, 1025}};
  for (const auto& kn_d : large) {
    for (bool stop : {false, true}) {
      for (const auto& pf : {pfors[0], pfors[3]}) {
        check_case<T>(type_name, kn_d[0], kn_d[1], kn_d[2], stop, true,
                      pf.first, pf.second);
        ++cases;
      }
    }
  }
  return cases;
}

}  // namespace

int main() {
  int cases = 0;
  cases += run_type<float>("float");
  cases += run_type<double>("double");
  cases += run_type<BFloat16>("bfloat16");
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed over %d cases\n", g_failures,
                 cases);
    return 1;
  }
  std::printf("%d cases passed\n", cases);
  return 0;
}
