// Stress test of the CPU worker pool (csrc/cpu/thread_pool.cpp) for the sanitizers:
// concurrent callers, nested calls, thread counts 1-4, exceptions thrown by a worker;
// parallel_for_pooled (the caller claims the ranges no worker started, and a call that
// finds a worker asleep runs every range itself and pokes) with pauses around the
// spin time, so calls meet workers spinning, asleep, waking and overslept, and every
// range must run exactly once. Built and run by tests/test_thread_pool_sanitized.py
// (slow suite), also with NESTVEC_SPIN_US=0 (every pause finds the workers asleep).
#include "nestvec/dispatch.h"
#include <atomic>
#include <chrono>
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
  // Each range's cells counted once per call; a pause of 0-400 us (around the default
  // 200 us spin) before some calls; ranges that throw on the caller or on a worker.
  auto pooled = [&](int iters, unsigned seed) {
    std::vector<std::atomic<int>> hits(4096);
    for (int it = 0; it < iters; ++it) {
      seed = seed * 1103515245u + 12345u;
      const int n = 1 + int(seed >> 8) % 4096, parts = 1 + int(seed >> 4) % 6;
      if (it % 3 == 0) std::this_thread::sleep_for(std::chrono::microseconds((seed >> 12) % 400));
      for (int i = 0; i < n; ++i) hits[i].store(0, std::memory_order_relaxed);
      parallel_for_pooled(n, parts, 16, [&](int, int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1, std::memory_order_relaxed);
        if (it % 11 == 0)  // nested: the pool is owned, so these run on this thread
          parallel_for_pooled(8, 2, 1, [&](int, int64_t, int64_t) { total.fetch_add(1); });
      });
      for (int i = 0; i < n; ++i)
        if (hits[i].load() != 1) { std::printf("BAD pooled %d %d\n", i, hits[i].load()); std::abort(); }
      if (it % 17 == 0) {
        const int bad = int(seed >> 20) % 3;  // the caller's range 0, or a worker's 1 or 2
        try {
          parallel_for_pooled(300, 3, 1, [&](int t, int64_t, int64_t) { if (t == bad) throw std::runtime_error("p"); });
          std::printf("no throw (pooled)\n"); std::abort();
        } catch (const std::runtime_error&) {}
      }
    }
  };
  std::vector<std::thread> th;
  for (int i = 0; i < 4; ++i) th.emplace_back(work, 300);
  work(300);
  for (auto& t : th) t.join();
  th.clear();
  pooled(3000, 7);  // alone: the caller owns the pool, workers spin, sleep and wake
  for (int i = 0; i < 3; ++i) th.emplace_back(pooled, 1000, 100u + unsigned(i));
  pooled(1000, 99);
  for (auto& t : th) t.join();
  std::printf("ok %ld\n", total.load());
}
