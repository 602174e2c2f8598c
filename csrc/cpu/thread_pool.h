// A persistent thread pool and the parallel-for on it, for the callers that
// bring no pool of their own (the NumPy entry). Its threads start once, on
// the first parallel work, and grow to the largest count asked for; each
// call uses as many as its caller says (the framework's thread setting).
// Work below kMinCyclesPerShard per shard runs on the calling thread.
#ifndef KERAS_VAE_CSRC_CPU_THREAD_POOL_H_
#define KERAS_VAE_CSRC_CPU_THREAD_POOL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cpu/reparam_kl_cpu.h"

namespace keras_vae {
namespace cpu {

// Estimated cycles below which a shard is not worth a thread's wake-up
// (tens of microseconds on a loaded machine): measured in BENCHMARKS.md.
constexpr int64_t kMinCyclesPerShard = 200000;

class ThreadPool {
 public:
  // The process's pool. Never destroyed: its threads may outlive the
  // interpreter's teardown of the module.
  static ThreadPool& instance() {
    static ThreadPool* pool = new ThreadPool();
    return *pool;
  }

  // Starts threads until there are at least `count`.
  void reserve(int count) {
    std::lock_guard<std::mutex> lock(mu_);
    while (static_cast<int>(threads_.size()) < count) {
      threads_.emplace_back([this] { work(); });
      threads_.back().detach();
    }
  }

  void schedule(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  ThreadPool() = default;

  void work() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !tasks_.empty(); });
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> threads_;
};

// Shards claimed from a shared counter. The calling thread claims shards
// too and waits only for shards other threads have claimed (and so are
// running), so a pool busy with other calls delays the work but cannot
// deadlock it; a task that starts after the work is done exits.
struct ShardQueue {
  const std::function<void(int64_t, int64_t)>* fn;
  int64_t total, shards;
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::condition_variable cv;
  int64_t done = 0;  // guarded by mu

  void run() {
    for (int64_t s; (s = next.fetch_add(1)) < shards;) {
      (*fn)(total * s / shards, total * (s + 1) / shards);
      std::lock_guard<std::mutex> lock(mu);
      if (++done == shards) cv.notify_all();
    }
  }
};

// A ParallelFor on the process's pool with `num_threads` threads in all
// (the caller's included); 1 or less runs serially.
inline ParallelFor pool_parallel_for(int num_threads) {
  return [num_threads](int64_t total, int64_t cost_per_unit,
                       const std::function<void(int64_t, int64_t)>& fn) {
    const int64_t helpers = std::max(0, num_threads - 1);
    const int64_t by_cost =
        total * std::max<int64_t>(1, cost_per_unit) / kMinCyclesPerShard;
    const int64_t shards = std::min({total, by_cost, helpers + 1});
    if (shards <= 1) return serial_for(total, cost_per_unit, fn);
    ThreadPool& pool = ThreadPool::instance();
    pool.reserve(static_cast<int>(shards - 1));
    auto queue = std::make_shared<ShardQueue>();
    queue->fn = &fn;
    queue->total = total;
    queue->shards = shards;
    for (int64_t h = 0; h < shards - 1; ++h) {
      pool.schedule([queue] { queue->run(); });
    }
    queue->run();
    std::unique_lock<std::mutex> lock(queue->mu);
    queue->cv.wait(lock, [&] { return queue->done == queue->shards; });
  };
}

}  // namespace cpu
}  // namespace keras_vae

#endif  // KERAS_VAE_CSRC_CPU_THREAD_POOL_H_
