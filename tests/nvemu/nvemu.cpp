// nvemu runtime: the fiber scheduler behind a launch, barriers, shuffles and the few
// runtime-API calls the launchers make (see include/nvemu.h for the model).
#include "nvemu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define NV_ASAN 1
#endif
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <random>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace nvemu {

thread_local Fiber* tl_fiber = nullptr;
thread_local Block* tl_block = nullptr;
thread_local unsigned char* tl_smem = nullptr;

namespace {

constexpr size_t kStack = 256 * 1024;  // per thread of a block; WMMA tiles are 1 KB each
constexpr int kMaxThreads = 1024;
constexpr int kDefaultSmem = 48 * 1024;

thread_local cudaError_t tl_last = cudaSuccess;
std::mutex g_attr_mu;
std::unordered_map<const void*, int> g_smem_limit;

struct Copy {
  void* dst;
  const void* src;  // null: zero fill
};

struct ThreadState : Fiber {
  ucontext_t ctx;
  bool done = false;
  std::vector<std::vector<Copy>> groups;  // committed cp.async groups, oldest first
  std::vector<Copy> open;                 // not yet committed
};

struct Barrier {
  int live = 0, count = 0;
  unsigned gen = 0;
  const char* file = nullptr;  // __syncthreads: the line this generation waits at
  int line = 0;
};

struct Warp : Barrier {
  uint64_t slot[32];  // one value per lane, for shuffles and ballots
};

// NVEMU_SCHEDULE=forward (default) | reverse | random[:seed]: the order in which the
// threads of a block run between barriers. Fibers only switch at barriers, so a read of
// shared or global memory that another thread writes without a barrier in between sees
// the write in one order and not in another: running the tests under reverse and random
// orders turns such races into wrong results.
enum class Schedule { Forward, Reverse, Random };

struct Run : Block {
  Schedule schedule = Schedule::Forward;
  std::mt19937 rng;
  std::vector<ThreadState> threads;
  std::vector<Warp> warps;
  Barrier block_bar;
  ucontext_t sched;
  const std::function<void()>* body = nullptr;
  std::exception_ptr error;
  uint64_t progress = 0;
};

thread_local Run* tl_run = nullptr;

// AddressSanitizer must be told about every stack switch (else it reports false
// positives and mistakes fiber stacks for the thread's); no-ops in normal builds.
thread_local const void* tl_sched_bottom = nullptr;
thread_local size_t tl_sched_size = 0;
inline void asan_leave(void** fake, const void* bottom, size_t size) {
#if NV_ASAN
  __sanitizer_start_switch_fiber(fake, bottom, size);
#else
  (void)fake, (void)bottom, (void)size;
#endif
}
inline void asan_arrive(void* fake, bool learn_sched) {
#if NV_ASAN
  if (learn_sched)
    __sanitizer_finish_switch_fiber(fake, &tl_sched_bottom, &tl_sched_size);
  else
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)fake, (void)learn_sched;
#endif
}

// Stacks (with a guard page below each) and the dynamic shared memory (ending at a
// guard page) are mapped once per OS thread and reused by every launch.
struct Arena {
  unsigned char* stacks = nullptr;
  size_t stacks_len = 0;
  unsigned char* smem = nullptr;
  size_t smem_len = 0;
  ~Arena() {
    if (stacks) munmap(stacks, stacks_len);
    if (smem) munmap(smem, smem_len);
  }
};
thread_local Arena tl_arena;

size_t page() { return size_t(sysconf(_SC_PAGESIZE)); }

unsigned char* stack_of(int i) {
  const size_t slot = kStack + page();
  if (!tl_arena.stacks) {
    tl_arena.stacks_len = slot * kMaxThreads;
    void* p = mmap(nullptr, tl_arena.stacks_len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    tl_arena.stacks = static_cast<unsigned char*>(p);
    for (int t = 0; t < kMaxThreads; ++t) mprotect(tl_arena.stacks + t * slot, page(), PROT_NONE);
  }
  return tl_arena.stacks + i * slot + page();
}

unsigned char* smem_of(size_t bytes) {
  const size_t need = (bytes + page() - 1) / page() * page() + page();
  if (tl_arena.smem_len < need) {
    if (tl_arena.smem) munmap(tl_arena.smem, tl_arena.smem_len);
    void* p = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    tl_arena.smem = static_cast<unsigned char*>(p);
    tl_arena.smem_len = need;
    mprotect(tl_arena.smem + need - page(), page(), PROT_NONE);
  }
  return tl_arena.smem + tl_arena.smem_len - page() - bytes;  // ends at the guard page
}

void yield() {
  ThreadState* me = static_cast<ThreadState*>(tl_fiber);
  void* fake = nullptr;
  asan_leave(&fake, tl_sched_bottom, tl_sched_size);
  swapcontext(&me->ctx, &tl_run->sched);
  asan_arrive(fake, false);
}

// Arrive at b; returns once every live member has arrived.
void arrive(Barrier& b) {
  Run& r = *tl_run;
  const unsigned gen = b.gen;
  ++r.progress;
  if (++b.count == b.live) {
    b.count = 0;
    ++b.gen;
    return;
  }
  while (b.gen == gen) yield();
}

// An exited thread no longer counts toward barriers (as on the hardware).
void leave(Barrier& b) {
  --b.live;
  if (b.count > 0 && b.count == b.live) {
    b.count = 0;
    ++b.gen;
  }
}

void fiber_main() {
  asan_arrive(nullptr, true);
  Run& r = *tl_run;
  ThreadState* me = static_cast<ThreadState*>(tl_fiber);
  try {
    (*r.body)();
  } catch (...) {
    if (!r.error) r.error = std::current_exception();
  }
  if ((!me->groups.empty() || !me->open.empty()) && !r.error)
    r.error = std::make_exception_ptr(std::runtime_error("nvemu: a thread exited with cp.async copies it never waited for"));
  me->groups.clear();
  me->open.clear();
  leave(r.block_bar);
  leave(r.warps[me->linear / 32]);
  me->done = true;
  ++r.progress;
  asan_leave(nullptr, tl_sched_bottom, tl_sched_size);  // this stack is done
  // Returning resumes uc_link, the scheduler.
}

void run_block(Run& r) {
  const int n = int(r.threads.size());
  for (auto& w : r.warps) w = Warp{};
  for (int i = 0; i < n; ++i) r.warps[i / 32].live++;
  r.block_bar = Barrier{};
  r.block_bar.live = n;
  for (int i = 0; i < n; ++i) {
    ThreadState& t = r.threads[i];
    t.done = false;
    t.linear = i;
    t.tid = dim3(i % r.bdim.x, (i / r.bdim.x) % r.bdim.y, i / (r.bdim.x * r.bdim.y));
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = stack_of(i);
    t.ctx.uc_stack.ss_size = kStack;
    t.ctx.uc_link = &r.sched;
    makecontext(&t.ctx, fiber_main, 0);
  }
  // The order fibers run in between two barriers: any order is legal on a GPU, so a
  // result that depends on it is a race (NVEMU_SCHEDULE, see Schedule).
  std::vector<int> order(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) order[size_t(i)] = r.schedule == Schedule::Reverse ? n - 1 - i : i;
  int alive = n;
  while (alive > 0) {
    const uint64_t before = r.progress;
    if (r.schedule == Schedule::Random) std::shuffle(order.begin(), order.end(), r.rng);
    for (int i : order) {
      ThreadState& t = r.threads[i];
      if (t.done) continue;
      tl_fiber = &t;
      void* fake = nullptr;
      asan_leave(&fake, t.ctx.uc_stack.ss_sp, kStack);
      swapcontext(&r.sched, &t.ctx);
      asan_arrive(fake, false);
      if (t.done) --alive;
    }
    tl_fiber = nullptr;
    if (alive > 0 && r.progress == before) {
      if (r.error) std::rethrow_exception(r.error);
      throw std::runtime_error(
          "nvemu: deadlock: threads wait at a barrier (__syncthreads / __syncwarp / shuffle) "
          "that other threads of the block never reach");
    }
  }
  if (r.error) std::rethrow_exception(r.error);
}

}  // namespace

void fail(const char* what) { throw std::runtime_error(std::string("nvemu: ") + what); }

void set_dynamic_smem_limit(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> g(g_attr_mu);
  g_smem_limit[kernel] = bytes;
}

void run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem,
              const std::function<void()>& body) {
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  if (nthreads == 0 || nthreads > uint64_t(kMaxThreads) || block.z > 64 || grid.x == 0 ||
      grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7FFFFFFFu) {
    tl_last = cudaErrorInvalidConfiguration;
    return;
  }
  int limit = kDefaultSmem;
  {
    std::lock_guard<std::mutex> g(g_attr_mu);
    auto it = g_smem_limit.find(kernel);
    if (it != g_smem_limit.end()) limit = std::max(limit, it->second);
  }
  if (smem > size_t(limit)) {
    tl_last = cudaErrorInvalidValue;
    return;
  }
  if (tl_run) fail("a kernel launched another kernel");
  Run r;
  if (const char* env = std::getenv("NVEMU_SCHEDULE")) {
    const std::string v(env);
    if (v == "reverse") {
      r.schedule = Schedule::Reverse;
    } else if (v.rfind("random", 0) == 0) {
      r.schedule = Schedule::Random;
      r.rng.seed(v.size() > 7 ? unsigned(std::strtoul(v.c_str() + 7, nullptr, 10)) : 1u);
    } else if (v != "forward" && !v.empty()) {
      fail("NVEMU_SCHEDULE: expected forward, reverse or random[:seed]");
    }
  }
  r.threads.resize(nthreads);
  r.warps.resize((nthreads + 31) / 32);
  r.bdim = block;
  r.gdim = grid;
  r.body = &body;
  unsigned char* sm = smem ? smem_of(smem) : nullptr;
  struct Current {  // this launch's state, cleared however the launch ends
    Current(Run* r, unsigned char* sm) { tl_run = r, tl_block = r, tl_smem = sm; }
    ~Current() { tl_run = nullptr, tl_block = nullptr, tl_smem = nullptr; }
  } current(&r, sm);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        r.bid = dim3(x, y, z);
        if (sm) std::memset(sm, 0xFF, smem);
        run_block(r);
      }
}

void syncthreads(const char* file, int line) {
  Barrier& b = tl_run->block_bar;
  if (b.count == 0) {
    b.file = file;
    b.line = line;
  } else if (b.line != line || std::strcmp(b.file, file) != 0) {
    fail(("threads of one block wait at different __syncthreads(): " + std::string(b.file) + ":" +
          std::to_string(b.line) + " and " + file + ":" + std::to_string(line))
             .c_str());
  }
  arrive(b);
}

// This thread's warp, which a warp collective needs whole and converged.
Warp& full_warp(unsigned mask, const char* what) {
  Warp& w = tl_run->warps[tl_fiber->linear / 32];
  if (mask != 0xffffffffu || w.live != 32) fail(what);
  return w;
}

// Warp exchange: every lane publishes v; returns once all have. The caller reads
// w.slot, then calls arrive(w) again so that no lane overwrites a slot still unread.
Warp& publish(unsigned mask, uint64_t v, const char* what) {
  Warp& w = full_warp(mask, what);
  w.slot[tl_fiber->linear % 32] = v;
  arrive(w);
  return w;
}

void syncwarp(unsigned mask) {
  arrive(full_warp(mask, "__syncwarp: only full, converged warps are modelled"));
}

uint64_t shfl_raw(unsigned mask, uint64_t v, int arg, int kind, int width) {
  if (width <= 0 || width > 32 || (width & (width - 1))) fail("shuffle: width must be a power of 2 <= 32");
  Warp& w = publish(mask, v, "shuffle: only full, converged warps are modelled");
  const int l = tl_fiber->linear % 32;
  const int base = l & ~(width - 1), sub = l - base;
  int src = l;
  switch (kind) {
    case 0: src = base + (arg % width + width) % width; break;
    case 1: src = base + ((sub ^ arg) & (width - 1)); break;   // xor outside the segment wraps
    case 2: src = sub - arg >= 0 ? l - arg : l; break;
    default: src = sub + arg < width ? l + arg : l; break;
  }
  const uint64_t out = w.slot[src];
  arrive(w);
  return out;
}

void async_copy16(void* smem, const void* gmem, bool valid) {
  if (reinterpret_cast<uintptr_t>(smem) % 16 || (valid && reinterpret_cast<uintptr_t>(gmem) % 16))
    fail("cp.async: 16-byte copy from or to an unaligned address");
  static_cast<ThreadState*>(tl_fiber)->open.push_back(Copy{smem, valid ? gmem : nullptr});
}

void async_commit() {
  ThreadState* me = static_cast<ThreadState*>(tl_fiber);
  me->groups.push_back(std::move(me->open));
  me->open.clear();
}

void async_wait(int n) {
  ThreadState* me = static_cast<ThreadState*>(tl_fiber);
  while (int(me->groups.size()) > n) {
    for (const Copy& c : me->groups.front()) {
      if (c.src)
        std::memcpy(c.dst, c.src, 16);
      else
        std::memset(c.dst, 0, 16);
    }
    me->groups.erase(me->groups.begin());
  }
}

unsigned ballot(unsigned mask, bool pred) {
  Warp& w = publish(mask, pred, "__ballot_sync: only full, converged warps are modelled");
  unsigned bits = 0;
  for (int i = 0; i < 32; ++i) bits |= unsigned(w.slot[i] != 0) << i;
  arrive(w);
  return bits;
}

}  // namespace nvemu

cudaError_t cudaGetLastError() {
  const cudaError_t e = nvemu::tl_last;
  nvemu::tl_last = cudaSuccess;
  return e;
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;  // the emulated device
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  if (bytes && !p) return cudaErrorInvalidValue;
  std::memset(p, value, bytes);
  return cudaSuccess;
}
