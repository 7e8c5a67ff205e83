// The machine's float32 FMA peak, for the "% of peak" figures of the LOST rows
// (README, LOST on AVX2): twelve independent 8-lane FMA chains per thread, so the two
// FMA pipes never wait on a latency; on 1 and on T threads.
//
//   g++ -O2 -mavx2 -mfma -pthread benchmarks/fma_peak.cpp -o /tmp/fma_peak
//   /tmp/fma_peak [THREADS]
//
// x86 with AVX2 + FMA only (the ISA whose peak the README quotes).
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

static float chains(long steps) {
  __m256 c[12];
  for (int i = 0; i < 12; ++i) c[i] = _mm256_set1_ps(0.001f * float(i));
  __m256 a = _mm256_set1_ps(0.999f);
  const __m256 b = _mm256_set1_ps(1e-4f);
  for (long s = 0; s < steps; ++s) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) c[i] = _mm256_fmadd_ps(a, c[i], b);
    __asm__ volatile("" : "+x"(a));  // keeps the loop from being folded away
  }
  float sum = 0;
  for (int i = 0; i < 12; ++i) sum += _mm256_cvtss_f32(c[i]);
  return sum;
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : int(std::thread::hardware_concurrency());
  const long steps = 400000000;
  for (int t : {1, threads}) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    std::vector<float> sink(static_cast<size_t>(t));
    for (int i = 0; i < t; ++i) pool.emplace_back([&, i] { sink[size_t(i)] = chains(steps); });
    for (auto& th : pool) th.join();
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double fmas = double(t) * double(steps) * 12.0;
    std::printf("{\"threads\": %d, \"gflops\": %.1f, \"ghz_at_2_fma_per_cycle\": %.2f}\n", t,
                fmas * 16.0 / sec / 1e9, fmas / t / sec / 2.0 / 1e9);
    if (t == threads) break;
  }
  return 0;
}
