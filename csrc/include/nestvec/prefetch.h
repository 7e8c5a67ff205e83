// Software prefetch that the compiler keeps.
#pragma once
#include <cstdint>

namespace nestvec {

// One prefetch into L1. GCC 12 deletes __builtin_prefetch / _mm_prefetch loops once
// they are inlined into some of the kernel instantiations (their results are unused),
// which silently halved the speed of the normalising kernels on strided prefixes:
// a volatile asm cannot be dropped.
static inline void prefetch_l1(uintptr_t p) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__ volatile("prefetcht0 (%0)" : : "r"(p));
#else
  __builtin_prefetch(reinterpret_cast<const void*>(p), 0, 3);
#endif
}

static inline void prefetch_l1(const void* p) { prefetch_l1(reinterpret_cast<uintptr_t>(p)); }

// One prefetch into L2. For streams prefetched a burst at a time (a tile's next rows):
// each L1 prefetch holds one of the core's few L1 miss buffers until its line arrives,
// so a burst of them stalls the loads behind it; L2 tracks many more misses, and the
// later L1 fill from L2 is short (README, Hamming on AVX2: the prefetch level).
static inline void prefetch_l2(uintptr_t p) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__ volatile("prefetcht1 (%0)" : : "r"(p));
#else
  __builtin_prefetch(reinterpret_cast<const void*>(p), 0, 2);
#endif
}

// Reads one byte at each of n scattered places, all issued before any is needed, and
// keeps the reads (the empty asm uses their sum). Where a search is about to visit
// many short runs of memory in scattered pages (an ivf probe's ranges in every
// segment, the rows it rescores), these independent loads overlap their TLB and cache
// misses, where the runs' own loads met them one run after another; prefetches of the
// same lines measured no faster (docs/ann-benchmark-log.md: the 10M run).
template <class Addr>
static inline void touch_first(int64_t n, Addr&& addr) {
  uint32_t acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* p = addr(i);
    if (p) acc += *p;
  }
  __asm__ volatile("" : : "r"(acc));
}

}  // namespace nestvec
