// The machine's floor for the batch-1 dense scans: how fast two threads can merely
// read (a) 1M whole rows of 1536 B and (b) the first 512 B of each (a Matryoshka
// prefix 256 of 768 float16), with no arithmetic. Compare with bench_dense.py's
// batch-1 rows run in the same minutes (this VM's bandwidth drifts).
//
//   g++ -O2 -mavx512f -pthread benchmarks/read_floor.cpp -o /tmp/read_floor && /tmp/read_floor
#include <immintrin.h>
#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

static const long kRows = 1000000, kStride = 1536;

__attribute__((noinline)) float read_rows(const char* b, long r0, long r1, long bytes) {
  __m512 acc = _mm512_setzero_ps();
  for (long r = r0; r < r1; ++r) {
    const char* p = b + r * kStride;
    for (long c = 0; c < bytes; c += 64) acc = _mm512_add_ps(acc, _mm512_load_ps((const float*)(p + c)));
  }
  return _mm512_reduce_add_ps(acc);
}

static double best_ms(const char* b, long bytes) {
  double best = 1e30;
  for (int rep = 0; rep < 7; ++rep) {
    float s1 = 0, s2 = 0;
    const auto t0 = std::chrono::steady_clock::now();
    std::thread th([&] { s2 = read_rows(b, kRows / 2, kRows, bytes); });
    s1 = read_rows(b, 0, kRows / 2, bytes);
    th.join();
    const double ms = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3;
    if (ms < best) best = ms;
    if (s1 + s2 == 1.5f) std::printf(" ");  // keep the sums alive
  }
  return best;
}

int main() {
  const size_t huge = size_t(1) << 21, bytes = (kRows * kStride + huge - 1) / huge * huge;
  char* b = static_cast<char*>(std::aligned_alloc(huge, bytes));
  madvise(b, bytes, MADV_HUGEPAGE);
  std::memset(b, 1, bytes);
  const double full = best_ms(b, kStride), prefix = best_ms(b, 512);
  std::printf("read 1M x 1536 B rows: %.1f ms (%.0f GB/s); first 512 B of each: %.1f ms (%.0f GB/s useful)\n",
              full, kRows * kStride / full / 1e6, prefix, kRows * 512.0 / prefix / 1e6);
}
