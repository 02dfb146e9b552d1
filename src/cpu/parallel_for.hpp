// parallel_for of the CPU reference: runs independent tasks 0..n-1 on std::thread workers.
// Tasks share no outputs (reference_forward.cpp / reference_backward.cpp give each task its own
// (batch, kv head) group), so the result is the same bits for any thread count or schedule.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace flashflex::cpu {

// `task(i)` for every i in [0, n); the first exception thrown by a task is rethrown here after
// every worker has stopped.
template <typename Task>
void parallel_for(int64_t n, const Task& task) {
  const int64_t hardware = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t num_workers = std::min(n, hardware);
  if (num_workers <= 1) {
    for (int64_t i = 0; i < n; ++i) task(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&] {
    for (int64_t i = next++; i < n; i = next++) {
      try {
        task(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next = n;  // stop handing out tasks
      }
    }
  };
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(num_workers - 1));
  for (int64_t w = 1; w < num_workers; ++w) {
    try {
      workers.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // no more threads to be had: the workers already started share the tasks
    }
  }
  work();
  for (auto& worker : workers) worker.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace flashflex::cpu
