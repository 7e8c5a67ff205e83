// The machine's floor for the batch-1 scans: how fast T threads can merely read the
// bytes a scan reads, with no arithmetic: `bytes` of each of `rows` rows laid out
// `stride` bytes apart (whole 1536-byte rows of 768 float16, the first 512 B of each: a
// Matryoshka prefix 256, or 32 / 128-byte binary codes). Compare with the batch-1 rows
// of bench_dense.py / bench_hamming.py, which run it in the same minutes (this VM's
// bandwidth drifts); _harness.read_floor() builds and runs it.
//
//   g++ -O2 -pthread benchmarks/read_floor.cpp -o /tmp/read_floor
//   /tmp/read_floor [--threads T] [--offset B] [--copies C] [--small-pages]
//                   ROWS STRIDE BYTES [BYTES ...]
//
// Prints one JSON object per BYTES: {"rows", "stride", "bytes", "threads", "isa",
// "best_ms", "median_ms", "gbps"}. --offset starts the table B bytes into a 2 MiB page
// (NumPy's large arrays start 16 bytes into a cache line). --copies C reads C copies of
// the table in turn, so that a table smaller than the last-level cache is still read from
// DRAM (a "cold" call); --small-pages backs them with 4 KiB pages (madvise NOHUGEPAGE),
// as torch's CPU allocator does by default. Portable: 32-byte vector
// loads where the CPU has AVX2 (chosen at run time, as nestvec does), 16-byte loads
// elsewhere (SSE2 / NEON through GCC vector extensions).
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

typedef float v4 __attribute__((vector_size(16), aligned(1)));

// Reads `bytes` of each row in 16-byte steps (the last step may overlap the previous).
// pf > 0: the same bytes of the row `pf` rows ahead are prefetched as each row is read
// (a short prefix per row is a stream the hardware prefetcher barely follows; nestvec's
// kernels prefetch it, so the floor is the better of the two reads).
static inline void prefetch_row(const char* p, long bytes) {
  for (long c = 0; c < bytes; c += 64) __builtin_prefetch(p + c, 0, 3);
  __builtin_prefetch(p + bytes - 1, 0, 3);
}

// Four independent accumulators: one add chain (3-4 cycles a step) would cap a thread
// at ~32 B every few cycles, below what one core reads from L3 or DRAM, and the "floor"
// would then be slower than a scan that keeps several vectors in flight.
__attribute__((noinline)) static float read_rows_v16(const char* b, long r0, long r1,
                                                     long stride, long bytes, long pf) {
  v4 a0 = {0, 0, 0, 0}, a1 = a0, a2 = a0, a3 = a0;
  const long last = bytes >= 16 ? bytes - 16 : 0;
  for (long r = r0; r < r1; ++r) {
    const char* p = b + r * stride;
    if (pf) prefetch_row(p + pf * stride, bytes);
    long c = 0;
    for (; c + 64 <= last; c += 64) {
      a0 += *reinterpret_cast<const v4*>(p + c);
      a1 += *reinterpret_cast<const v4*>(p + c + 16);
      a2 += *reinterpret_cast<const v4*>(p + c + 32);
      a3 += *reinterpret_cast<const v4*>(p + c + 48);
    }
    for (; c < last; c += 16) a0 += *reinterpret_cast<const v4*>(p + c);
    a1 += *reinterpret_cast<const v4*>(p + last);
  }
  const v4 acc = (a0 + a1) + (a2 + a3);
  return acc[0] + acc[1] + acc[2] + acc[3];
}

#if defined(__x86_64__)
typedef float v8 __attribute__((vector_size(32), aligned(1)));
__attribute__((noinline, target("avx2"))) static float read_rows_v32(const char* b, long r0,
                                                                     long r1, long stride,
                                                                     long bytes, long pf) {
  v8 a0 = {0, 0, 0, 0, 0, 0, 0, 0}, a1 = a0, a2 = a0, a3 = a0;
  const long last = bytes >= 32 ? bytes - 32 : 0;
  for (long r = r0; r < r1; ++r) {
    const char* p = b + r * stride;
    if (pf) prefetch_row(p + pf * stride, bytes);
    long c = 0;
    for (; c + 128 <= last; c += 128) {
      a0 += *reinterpret_cast<const v8*>(p + c);
      a1 += *reinterpret_cast<const v8*>(p + c + 32);
      a2 += *reinterpret_cast<const v8*>(p + c + 64);
      a3 += *reinterpret_cast<const v8*>(p + c + 96);
    }
    for (; c < last; c += 32) a0 += *reinterpret_cast<const v8*>(p + c);
    a1 += *reinterpret_cast<const v8*>(p + last);
  }
  const v8 acc = (a0 + a1) + (a2 + a3);
  float s = 0;
  for (int i = 0; i < 8; ++i) s += acc[i];
  return s;
}
static bool have_avx2() { return __builtin_cpu_supports("avx2"); }
#else
static float read_rows_v32(const char* b, long r0, long r1, long stride, long bytes, long pf) {
  return read_rows_v16(b, r0, r1, stride, bytes, pf);
}
static bool have_avx2() { return false; }
#endif

struct Timing {
  double best, median;
};

// Threads started once and kept spinning between reps: starting a thread costs tens of
// microseconds, a visible share of a sub-millisecond read (nestvec's pool keeps its
// workers awake between back-to-back calls too).
class Team {
 public:
  explicit Team(int threads) : n_(threads) {
    for (int t = 1; t < n_; ++t) th_.emplace_back([this, t] { loop(t); });
  }
  ~Team() {
    stop_ = true;
    gen_.fetch_add(1);
    for (auto& th : th_) th.join();
  }
  template <class F>
  void run(F&& f) {
    fn_ = f;
    left_.store(n_ - 1);
    gen_.fetch_add(1);
    fn_(0);
    while (left_.load() != 0) relax();
  }

 private:
  // Yields while waiting: on a shared machine a waiter that only spins can hold the
  // core its partner needs for a whole time slice.
  static void relax() { std::this_thread::yield(); }
  void loop(int t) {
    for (long seen = 0;;) {
      long g;
      while ((g = gen_.load()) == seen) relax();
      seen = g;
      if (stop_) return;
      fn_(t);
      left_.fetch_sub(1);
    }
  }
  int n_;
  std::vector<std::thread> th_;
  std::function<void(int)> fn_;
  std::atomic<long> gen_{0};
  std::atomic<int> left_{0};
  std::atomic<bool> stop_{false};
};

// Each rep reads the next of the `copies` tables (one table: the same bytes every rep).
static Timing time_reads(Team& team, const std::vector<const char*>& tables, long rows,
                         long stride, long bytes, int threads, bool wide, long pf) {
  std::vector<double> ts;
  const int reps = std::max<int>(9, int(tables.size()));
  for (int rep = 0; rep < reps; ++rep) {
    const char* b = tables[size_t(rep) % tables.size()];
    std::vector<float> sums(size_t(threads), 0.f);
    const auto t0 = std::chrono::steady_clock::now();
    team.run([&](int t) {
      const long r0 = rows * t / threads, r1 = rows * (t + 1) / threads;
      sums[size_t(t)] = wide ? read_rows_v32(b, r0, r1, stride, bytes, pf)
                             : read_rows_v16(b, r0, r1, stride, bytes, pf);
    });
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e3);
    float s = 0;
    for (float v : sums) s += v;
    if (s == 1.5f) std::printf(" ");  // keep the sums alive
  }
  std::sort(ts.begin(), ts.end());
  return {ts.front(), ts[ts.size() / 2]};
}

int main(int argc, char** argv) {
  int threads = int(std::max(1u, std::thread::hardware_concurrency()));
  if (const char* s = std::getenv("NESTVEC_NUM_THREADS")) threads = std::max(1, std::atoi(s));
  long offset = 0, copies = 1;
  bool small_pages = false;
  std::vector<long> pos;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) threads = std::max(1, std::atoi(argv[++i]));
    else if (a == "--offset" && i + 1 < argc) offset = std::atol(argv[++i]);
    else if (a == "--copies" && i + 1 < argc) copies = std::max(1L, std::atol(argv[++i]));
    else if (a == "--small-pages") small_pages = true;
    else pos.push_back(std::atol(argv[i]));
  }
  if (pos.size() < 3) {
    std::fprintf(stderr, "usage: read_floor [--threads T] [--offset B] [--copies C] [--small-pages] "
                 "ROWS STRIDE BYTES [BYTES ...]\n");
    return 2;
  }
  const long rows = pos[0], stride = pos[1];
  const size_t huge = size_t(1) << 21;
  const size_t total = (size_t(rows) * size_t(stride) + size_t(offset) + huge - 1) / huge * huge;
  std::vector<char*> mems;
  std::vector<const char*> tables;
  for (long c = 0; c < copies; ++c) {
    char* mem = static_cast<char*>(std::aligned_alloc(huge, total));
    if (!mem) return 1;
    madvise(mem, total, small_pages ? MADV_NOHUGEPAGE : MADV_HUGEPAGE);
    std::memset(mem, 1, total);
    mems.push_back(mem);
    tables.push_back(mem + offset);
  }
  Team team(threads);
  const bool wide = have_avx2();
  for (size_t i = 2; i < pos.size(); ++i) {
    const long bytes = std::min(pos[i], stride);
    // The floor is the faster of a plain read and reads with the rows 4, 12 or 32 KiB
    // ahead prefetched (by median).
    Timing t{0, 1e30};
    long best_pf = 0;
    for (long ahead_bytes : {0L, 4096L, 12288L, 32768L}) {
      const long pf = ahead_bytes ? std::max(1L, ahead_bytes / stride) : 0;
      const Timing x = time_reads(team, tables, rows, stride, bytes, threads, wide, pf);
      if (x.median < t.median) t = x, best_pf = pf;
    }
    std::printf("{\"rows\": %ld, \"stride\": %ld, \"bytes\": %ld, \"threads\": %d, \"isa\": \"%s\", "
                "\"copies\": %ld, \"pages\": \"%s\", \"prefetch_rows\": %ld, \"best_ms\": %.3f, \"median_ms\": %.3f, \"gbps\": %.1f}\n",
                rows, stride, bytes, threads, wide ? "avx2" : "vec16", copies,
                small_pages ? "4k" : "2m", best_pf, t.best, t.median,
                double(rows) * double(bytes) / t.median / 1e6);
  }
  for (char* m : mems) std::free(m);
  return 0;
}
