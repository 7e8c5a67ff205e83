// Stress test of the CPU worker pool (csrc/cpu/thread_pool.cpp) for the sanitizers:
// concurrent callers, nested calls, thread counts 1-4, exceptions thrown by a worker.
// Built and run by tests/test_thread_pool_sanitized.py (slow suite).
#include "nestvec/dispatch.h"
#include <atomic>
#include <cstdio>
#include <stdexcept>
#include <thread>
#include <vector>
using namespace nestvec;
int main() {
  std::atomic<long> total{0};
  auto work = [&](int iters) {
    for (int it = 0; it < iters; ++it) {
      std::vector<long> out(1000, 0);
      parallel_for(1000, 1 + it % 4, 8, [&](int t, int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) out[i] = i * 2;
        if (it % 7 == 0)  // nested
          parallel_for(10, 2, 1, [&](int, int64_t, int64_t) { total.fetch_add(1); });
      });
      for (int i = 0; i < 1000; ++i) if (out[i] != i * 2) { std::printf("BAD\n"); std::abort(); }
      if (it % 13 == 0) {
        try {
          parallel_for(100, 3, 1, [&](int t, int64_t, int64_t) { if (t == 1) throw std::runtime_error("x"); });
          std::printf("no throw\n"); std::abort();
        } catch (const std::runtime_error&) {}
      }
    }
  };
  std::vector<std::thread> th;
  for (int i = 0; i < 4; ++i) th.emplace_back(work, 300);
  work(300);
  for (auto& t : th) t.join();
  std::printf("ok %ld\n", total.load());
}
