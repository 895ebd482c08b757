// A small persistent thread pool for the dispatch loop: parallel_for over episodes, the calling thread
// taking part. Kept alive across steps so that a step over a large batch costs a wake-up, not a spawn.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ssm_tools {

class ThreadPool {
 public:
  // num_threads <= 0: hardware concurrency. 1: everything runs on the calling thread.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // fn(begin, end) over [0, n) in chunks of `grain` items; returns when all are done. The first
  // exception thrown by fn is rethrown here (the remaining chunks are skipped).
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker_loop();
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, finished_;
  uint64_t generation_ = 0;  // bumped per job so sleeping workers see new work
  int busy_ = 0;             // workers still inside the current job
  bool stop_ = false;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t n_ = 0, grain_ = 1;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
};

}  // namespace ssm_tools
