// Persistent workers behind parallel_for (dispatch.h). Spawning and joining fresh
// threads cost ~50 us per call on this project's VM, more than a whole batch-1 scan of
// 10^4-10^5 rows (Hamming 100k x 256 bit: 110 us on two threads, 60 us on one).
//
// One caller at a time owns the pool (a flag, not a mutex, so that a nested or
// concurrent parallel_for simply falls back to fresh threads instead of waiting).
// Worker i runs task i of a call when its own ticket changes: a worker that overslept a
// call it was not needed for can never pick up the parameters of a later one. Whoever
// runs task i of a call first claims it (the slot's `taken` moves from the call's
// ticket - 1 to its ticket): the worker, or, with take_unstarted, the caller once done
// with task 0, so a caller never waits for a sleeping worker's wake-up. After a task a
// worker spins for kSpin (back-to-back queries find it awake), then sleeps on a
// condition variable. A take_unstarted call that finds a worker asleep does not hand
// out tasks at all (it returns false: its caller runs every part itself) and only pokes
// the workers awake for the calls that follow; with a 500 us pause before each search,
// handing out tasks to a sleeping worker made a 10M-row batch-1 search slower than one
// thread (docs/ann-benchmark-log.md). A fork()ed child starts with a new, empty pool.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

#include "nestvec/dispatch.h"

namespace nestvec {
namespace detail {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// How long an idle worker (and a caller waiting for its workers) spins before it
// sleeps: NESTVEC_SPIN_US, default 200 us. A Python loop of small searches spends
// ~50-150 us of its own between two calls; a worker that fell asleep in between
// costs a futex wake-up (Collection.search over 10k rows, binary: 80 us per call
// with 50 us of spinning, 58 with 200, 128 with none). Spinning threads yield every
// few microseconds: the scheduler sometimes queues a worker on the caller's CPU (for
// ~40 ms after the pool starts, and again after other libraries' threads ran), and a
// thread spinning there without yielding held the other off for a whole time slice
// (a 0.1 ms LOST call took ~1 ms). With the yields such a pair runs at about one
// thread's speed instead (LOST 384 -> 1536, M=20: ~180 us; ~120 us when the two sit
// on different CPUs, 165 us on one thread).
std::chrono::microseconds spin_time() {
  long us = 200;
  if (const char* s = std::getenv("NESTVEC_SPIN_US")) us = std::atol(s);
  return std::chrono::microseconds(std::min(std::max(us, 0L), 1000000L));
}
const std::chrono::microseconds kSpin = spin_time();

class Pool {
 public:
  bool run(int tasks, TaskFn fn, void* ctx, bool take_unstarted) {
    bool expected = false;
    if (!busy_.compare_exchange_strong(expected, true, std::memory_order_acquire)) return false;
    struct Release {
      std::atomic<bool>& b;
      ~Release() { b.store(false, std::memory_order_release); }
    } release{busy_};
    if (!grow(tasks - 1)) return false;
    if (take_unstarted && asleep_.load(std::memory_order_acquire) > 0) {
      // A small split that finds a worker asleep runs on the caller alone: the wake-up
      // would cost it more than the worker's share saves. The poke wakes the workers to
      // spin, so the calls that follow (the next stage of the same search) find them up.
      poke_.fetch_add(1, std::memory_order_relaxed);
      { std::lock_guard<std::mutex> lk(mu_); }
      work_cv_.notify_all();
      return false;
    }
    fn_ = fn;
    ctx_ = ctx;
    err_ = nullptr;
    pending_.store(tasks - 1, std::memory_order_relaxed);
    uint64_t ticket[kMaxTasks];
    for (int i = 1; i < tasks; ++i) ticket[i] = slots_[i - 1]->ticket.fetch_add(1, std::memory_order_seq_cst) + 1;
    { std::lock_guard<std::mutex> lk(mu_); }  // a worker between its check and its wait
    work_cv_.notify_all();
    std::exception_ptr mine;
    try {
      fn(ctx, 0);
    } catch (...) {
      mine = std::current_exception();
    }
    for (int i = 1; take_unstarted && i < tasks; ++i) {
      if (!claim(*slots_[i - 1], ticket[i])) continue;
      try {
        fn(ctx, i);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu_);
        if (!err_) err_ = std::current_exception();
      }
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
    // The workers use ctx (on the caller's stack): wait for them even after a throw.
    await_true([&] { return pending_.load(std::memory_order_acquire) == 0; }, done_cv_);
    if (mine) std::rethrow_exception(mine);
    if (err_) std::rethrow_exception(err_);
    return true;
  }

  // More tasks than this in one call run on fresh threads (dispatch.h) instead.
  static constexpr int kMaxTasks = 256;

 private:
  struct alignas(64) Slot {
    std::atomic<uint64_t> ticket{0};
    std::atomic<uint64_t> taken{0};  // the last ticket whose task someone claimed
  };

  // True for the one thread that gets to run the task of `ticket` (issued, unclaimed).
  static bool claim(Slot& slot, uint64_t ticket) {
    uint64_t before = ticket - 1;
    return slot.taken.compare_exchange_strong(before, ticket, std::memory_order_acq_rel);
  }

  // Spins (yielding every few microseconds, see kSpin) until ready(), or for kSpin at
  // most and then sleeps on cv; whoever makes ready() true takes mu_ before notifying.
  // asleep (optional) counts the threads waiting on cv.
  template <class Ready>
  void await_true(Ready ready, std::condition_variable& cv, std::atomic<int>* asleep = nullptr) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int n = 0; !ready(); ++n) {
      if ((n & 63) == 63) {
        if (std::chrono::steady_clock::now() - t0 > kSpin) {
          std::unique_lock<std::mutex> lk(mu_);
          if (asleep) asleep->fetch_add(1, std::memory_order_acq_rel);
          cv.wait(lk, ready);
          if (asleep) asleep->fetch_sub(1, std::memory_order_acq_rel);
          return;
        }
        std::this_thread::yield();
      }
      cpu_relax();
    }
  }

  // Only the owner of busy_ grows the pool. False if the system refuses a thread.
  bool grow(int workers) {
    while (int(slots_.size()) < workers) {
      auto slot = std::make_unique<Slot>();
      const int idx = int(slots_.size()) + 1;
      try {
        std::thread([this, idx, s = slot.get()] { worker(idx, s); }).detach();
      } catch (const std::system_error&) {
        return false;
      }
      slots_.push_back(std::move(slot));
    }
    return true;
  }

  void worker(int idx, Slot* slot) {
    uint64_t seen = 0, seen_poke = poke_.load(std::memory_order_relaxed);
    for (;;) {
      uint64_t t = seen;
      await_true(
          [&] {
            return (t = slot->ticket.load(std::memory_order_acquire)) != seen ||
                   poke_.load(std::memory_order_relaxed) != seen_poke;
          },
          work_cv_, &asleep_);
      seen_poke = poke_.load(std::memory_order_relaxed);
      if (t == seen) continue;  // a poke: spin (kSpin) for the calls to come
      seen = t;
      if (!claim(*slot, t)) continue;  // the caller ran it (and maybe later calls' tasks too)
      try {
        fn_(ctx_, idx);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu_);
        if (!err_) err_ = std::current_exception();
      }
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        { std::lock_guard<std::mutex> lk(mu_); }
        done_cv_.notify_one();
      }
    }
  }

  std::atomic<bool> busy_{false};
  std::vector<std::unique_ptr<Slot>> slots_;  // slot i - 1 belongs to worker i
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  std::atomic<int> pending_{0};
  std::atomic<int> asleep_{0};      // workers waiting on work_cv_
  std::atomic<uint64_t> poke_{0};   // bumped to wake the workers without work
  std::mutex mu_, err_mu_;
  std::condition_variable work_cv_, done_cv_;
  std::exception_ptr err_;
};

// Leaked on purpose: detached workers may outlive static destruction at exit.
std::atomic<Pool*> g_pool{nullptr};
std::mutex g_create_mu;

#if defined(__unix__) || defined(__APPLE__)
void after_fork_child() { g_pool.store(nullptr); }  // the parent's workers do not exist here
#endif

Pool* pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return p;
  std::lock_guard<std::mutex> lk(g_create_mu);
  p = g_pool.load(std::memory_order_acquire);
  if (!p) {
#if defined(__unix__) || defined(__APPLE__)
    static const bool registered = pthread_atfork(nullptr, nullptr, after_fork_child) == 0;
    (void)registered;
#endif
    p = new Pool();
    g_pool.store(p, std::memory_order_release);
  }
  return p;
}

}  // namespace

bool pool_run(int tasks, TaskFn fn, void* ctx, bool take_unstarted) {
  if (tasks <= 1) {
    fn(ctx, 0);
    return true;
  }
  if (tasks > Pool::kMaxTasks) return false;
  return pool()->run(tasks, fn, ctx, take_unstarted);
}

}  // namespace detail
}  // namespace nestvec
