// Run-time ISA dispatch and a small thread helper shared by every CPU op.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace nestvec {

// The CPU ISAs a kernel is built for. Each op's kernels are one implementation
// header compiled once per ISA (csrc/cpu/<op>_impl.h + csrc/cpu/isa/<isa>.h), each
// build exporting its entry points as the specialisation `kernels<Isa::...>()` of its
// op's kernel table; with_isa() turns the active ISA into that template argument.
// x86-64 builds have Scalar, Avx2, Avx512; aarch64 builds Scalar and Neon.
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2, Neon = 3 };

const char* isa_name(Isa isa);
// Parses "scalar" / "avx2" / "avx512" / "neon"; false for anything else.
bool parse_isa(const char* s, Isa* out);
// Best ISA this build has and this CPU + OS support.
Isa detected_isa();
// ISA the kernels use now (detected, or lower if forced by set_isa / NESTVEC_ISA).
Isa active_isa();
// Force an ISA (tests use it to cover every path); false if unsupported here.
bool set_isa(Isa isa);
// Compiled into this build and runnable on this CPU + OS.
bool isa_supported(Isa isa);
// Compiled into this build, in increasing order of preference.
std::vector<Isa> compiled_isas();
// CPU features behind the detection, for `nestvec info` (e.g. "avx2 fma f16c").
std::string cpu_features();

// Calls f(std::integral_constant<Isa, I>{}) for isa == I among the ISAs compiled
// (Scalar for any other value): the one place a run-time ISA becomes a kernel.
template <class F>
decltype(auto) with_isa(Isa isa, F&& f) {
  switch (isa) {
#if defined(NESTVEC_X86)
    case Isa::Avx512: return f(std::integral_constant<Isa, Isa::Avx512>{});
    case Isa::Avx2: return f(std::integral_constant<Isa, Isa::Avx2>{});
#endif
#if defined(NESTVEC_ARM)
    case Isa::Neon: return f(std::integral_constant<Isa, Isa::Neon>{});
#endif
    default: return f(std::integral_constant<Isa, Isa::Scalar>{});
  }
}

// Threads for CPU kernels: NESTVEC_NUM_THREADS, else hardware concurrency (1 inside
// a SerialScope on this thread).
int num_threads();
void set_num_threads(int n);

// While alive, kernels called on this thread run on it alone (num_threads() == 1): for
// a caller that already split its work over the pool (ivf::search answers a query per
// thread), where a nested parallel_for would spawn fresh threads.
class SerialScope {
 public:
  SerialScope();
  ~SerialScope();
  SerialScope(const SerialScope&) = delete;
  SerialScope& operator=(const SerialScope&) = delete;

 private:
  bool prev_;
};

namespace detail {
using TaskFn = void (*)(void* ctx, int task);
// Runs fn(ctx, t) for t in [0, tasks): task 0 on the calling thread, the others on the
// persistent workers (thread_pool.cpp); returns when all are done and rethrows the
// first exception. False, having run nothing, when another call owns the pool.
// take_unstarted: once done with task 0, the caller runs itself every task no worker
// has started yet (a worker that had fallen asleep is not waited for), so tasks must
// not wait for one another; and where a worker sleeps, the call returns false at once
// (having only woken the workers for the calls to come).
bool pool_run(int tasks, TaskFn fn, void* ctx, bool take_unstarted = false);
}  // namespace detail

namespace detail {
// parallel_for and parallel_for_pooled: fresh_threads says what a call that finds the
// pool owned by another does (start threads, or run every range on this thread).
template <class F>
void run_ranges(int64_t n, int nthreads, int64_t align, F&& f, bool fresh_threads) {
  if (n <= 0) return;
  nthreads = std::max(1, nthreads);
  int64_t per = (n + nthreads - 1) / nthreads;
  per = ((per + align - 1) / align) * align;
  const int tasks = int((n + per - 1) / per);
  auto range = [&](int t) {
    const int64_t b = int64_t(t) * per;
    f(t, b, std::min(n, b + per));
  };
  if (tasks == 1) return range(0);
  using R = decltype(range);
  if (pool_run(tasks, [](void* c, int t) { (*static_cast<R*>(c))(t); }, &range, !fresh_threads)) return;
  if (!fresh_threads) {
    for (int t = 0; t < tasks; ++t) range(t);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errs(static_cast<size_t>(tasks));
  for (int t = 1; t < tasks; ++t)
    pool.emplace_back([&, t] {
      try {
        range(t);
      } catch (...) {
        errs[size_t(t)] = std::current_exception();
      }
    });
  try {
    range(0);
  } catch (...) {
    errs[0] = std::current_exception();
  }
  for (auto& th : pool) th.join();
  for (auto& e : errs)
    if (e) std::rethrow_exception(e);
}
}  // namespace detail

// Calls f(tid, begin, end) on contiguous ranges of [0, n), one per thread; the
// calling thread takes range 0. Ranges are aligned to `align` elements. Pooled
// threads serve one call at a time; a concurrent or nested call gets fresh threads.
template <class F>
void parallel_for(int64_t n, int nthreads, int64_t align, F&& f) {
  detail::run_ranges(n, nthreads, align, f, true);
}

// parallel_for for the split of one small call (a single query's stages): on the
// pool's workers, which are awake between back-to-back calls, or, when another call
// owns the pool (concurrent callers, or nested in a pool task), every range one after
// another on this thread, never on fresh threads (starting them costs more than such a
// split saves). A range no worker has started by the time the caller is done with its
// own runs on the caller too, and where a worker sleeps (after a pause in the calls)
// every range does, the worker only being woken for the calls to come: waking one
// can take longer than the range itself. f must not depend on which thread runs range t.
template <class F>
void parallel_for_pooled(int64_t n, int nthreads, int64_t align, F&& f) {
  detail::run_ranges(n, nthreads, align, f, false);
}

// Calls f(t, begin, end) on the blocks [b * block, (b + 1) * block) of [0, n) (the
// last may be shorter), shared out at run time among up to nthreads tasks: task t
// takes the next unclaimed block, in increasing order. A scan split this way does not
// wait for a thread that another process held off its core (parallel_for's fixed
// ranges end with their slowest thread); f keeps per-task state by t.
template <class F>
void parallel_blocks(int64_t n, int nthreads, int64_t block, F&& f) {
  if (n <= 0) return;
  block = std::max<int64_t>(1, block);
  const int64_t nblocks = (n + block - 1) / block;
  const int tasks = int(std::max<int64_t>(1, std::min<int64_t>(nthreads, nblocks)));
  std::atomic<int64_t> next{0};
  parallel_for(tasks, tasks, 1, [&](int t, int64_t, int64_t) {
    for (int64_t b = next.fetch_add(1, std::memory_order_relaxed); b < nblocks;
         b = next.fetch_add(1, std::memory_order_relaxed))
      f(t, b * block, std::min(n, (b + 1) * block));
  });
}

// Block size for parallel_blocks over n rows: ~32 blocks per thread (the threads then
// finish within a small block of each other), a multiple of align, at least align.
inline int64_t scan_block(int64_t n, int nthreads, int64_t align) {
  const int64_t per = (n + int64_t(std::max(1, nthreads)) * 32 - 1) / (int64_t(std::max(1, nthreads)) * 32);
  return std::max<int64_t>(align, (per + align - 1) / align * align);
}

}  // namespace nestvec
