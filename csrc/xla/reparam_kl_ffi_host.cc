// The Host handlers: the CPU kernels on XLA:CPU's intra-op thread pool.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>

#include "cpu/reparam_kl_cpu.h"
#include "cpu/thread_pool.h"
#include "xla/ffi_call.h"
#include "xla/reparam_kl_ffi.h"

namespace keras_vae {
namespace xla_ffi {
namespace {

// Work below this many estimated cycles runs on the calling thread.
constexpr int64_t kMinCyclesPerShard = 100000;

// Shards claimed from a shared counter, the calling thread's included
// (cpu/thread_pool.h).
using cpu::ShardQueue;

cpu::ParallelFor pool_for(ffi::ThreadPool pool) {
  return [pool](int64_t total, int64_t cost_per_unit,
                const std::function<void(int64_t, int64_t)>& fn) mutable {
    const int64_t helpers = std::max<int64_t>(0, pool.num_threads() - 1);
    const int64_t by_cost = total * std::max<int64_t>(1, cost_per_unit) /
                            kMinCyclesPerShard;
    const int64_t shards =
        std::min({total, by_cost, (helpers + 1) * 4});
    if (shards <= 1) return cpu::serial_for(total, cost_per_unit, fn);
    auto queue = std::make_shared<ShardQueue>();
    queue->fn = &fn;
    queue->total = total;
    queue->shards = shards;
    for (int64_t h = 0; h < std::min(helpers, shards - 1); ++h) {
      pool.Schedule([queue] { queue->run(); });
    }
    queue->run();
    std::unique_lock<std::mutex> lock(queue->mu);
    queue->cv.wait(lock, [&] { return queue->done == queue->shards; });
  };
}

PhiloxStream host_stream(ffi::AnyBuffer seed) {
  return stream_from_seed_words(seed.element_type(), seed.untyped_data());
}

ffi::Error forward_host(ffi::ThreadPool pool, ffi::AnyBuffer mean,
                        ffi::AnyBuffer log_var, ffi::AnyBuffer seed,
                        ffi::Result<ffi::AnyBuffer> z,
                        ffi::Result<ffi::AnyBuffer> kl,
                        ffi::Result<ffi::AnyBuffer> log_ratio) {
  return forward_call(
      mean, log_var, seed, *z, *kl, *log_ratio,
      [&](auto tag, const ReparamShape& shape) {
        using T = decltype(tag);
        cpu::reparam_kl_forward<T>(shape, data<T>(mean), data<T>(log_var),
                                   host_stream(seed), data<T>(*z),
                                   data<T>(*kl), data<T>(*log_ratio),
                                   pool_for(pool));
        return ffi::Error::Success();
      });
}

ffi::Error backward_host(ffi::ThreadPool pool, ffi::AnyBuffer mean,
                         ffi::AnyBuffer log_var, ffi::AnyBuffer seed,
                         ffi::AnyBuffer grad_z, ffi::AnyBuffer grad_kl,
                         ffi::AnyBuffer grad_log_ratio, bool stop_params,
                         ffi::Result<ffi::AnyBuffer> grad_mean,
                         ffi::Result<ffi::AnyBuffer> grad_log_var) {
  return backward_call(
      mean, log_var, seed, grad_z, grad_kl, grad_log_ratio,
      [&](auto tag, const ReparamShape& shape) {
        using T = decltype(tag);
        cpu::reparam_kl_backward<T>(
            shape, data<T>(mean), data<T>(log_var), host_stream(seed),
            data<T>(grad_z), data<T>(grad_kl), data<T>(grad_log_ratio),
            stop_params, data<T>(*grad_mean), data<T>(*grad_log_var),
            pool_for(pool));
        return ffi::Error::Success();
      });
}

}  // namespace
}  // namespace xla_ffi
}  // namespace keras_vae

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    KerasVaeReparamKlForwardHost, keras_vae::xla_ffi::forward_host,
    keras_vae::xla_ffi::forward_binding<::xla::ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    KerasVaeReparamKlBackwardHost, keras_vae::xla_ffi::backward_host,
    keras_vae::xla_ffi::backward_binding<::xla::ffi::ThreadPool>());
