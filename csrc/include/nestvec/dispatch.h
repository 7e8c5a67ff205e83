// Run-time ISA dispatch and a small thread helper shared by every CPU op.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace nestvec {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

const char* isa_name(Isa isa);
// Best ISA this build has and this CPU + OS support.
Isa detected_isa();
// ISA the kernels use now (detected, or lower if forced by set_isa / NESTVEC_ISA).
Isa active_isa();
// Force an ISA (tests use it to cover every path); false if unsupported here.
bool set_isa(Isa isa);
bool isa_supported(Isa isa);
std::vector<Isa> compiled_isas();

// Threads for CPU kernels: NESTVEC_NUM_THREADS, else hardware concurrency.
int num_threads();
void set_num_threads(int n);

// Calls f(tid, begin, end) on contiguous ranges of [0, n), one per thread; the
// calling thread takes range 0. Ranges are aligned to `align` elements.
template <class F>
void parallel_for(int64_t n, int nthreads, int64_t align, F&& f) {
  if (n <= 0) return;
  nthreads = std::max(1, nthreads);
  int64_t per = (n + nthreads - 1) / nthreads;
  per = ((per + align - 1) / align) * align;
  std::vector<std::thread> pool;
  int t = 1;
  for (int64_t b = per; b < n; b += per, ++t) {
    int64_t e = std::min(n, b + per);
    pool.emplace_back([&f, t, b, e] { f(t, b, e); });
  }
  f(0, 0, std::min(n, per));
  for (auto& th : pool) th.join();
}

}  // namespace nestvec
