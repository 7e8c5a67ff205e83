#include "nestvec/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(NESTVEC_X86)
#include <cpuid.h>
#endif

namespace nestvec {
namespace {

#if defined(NESTVEC_X86)
uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}
#endif

Isa probe() {
#if defined(NESTVEC_X86)
  __builtin_cpu_init();
  uint32_t a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return Isa::Scalar;
  const bool osxsave = c & (1u << 27);
  if (!osxsave) return Isa::Scalar;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_os = (xcr0 & 0x6) == 0x6;
  const bool zmm_os = (xcr0 & 0xe6) == 0xe6;
  const bool avx2 = ymm_os && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("popcnt") && (c & (1u << 29)) /* f16c */;
  const bool avx512 = zmm_os && avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vpopcntdq") &&
                      __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni");
  if (avx512) return Isa::Avx512;
  if (avx2) return Isa::Avx2;
#endif
  return Isa::Scalar;
}

Isa parse(const char* s, Isa fallback) {
  if (!s) return fallback;
  if (!std::strcmp(s, "scalar")) return Isa::Scalar;
  if (!std::strcmp(s, "avx2")) return Isa::Avx2;
  if (!std::strcmp(s, "avx512")) return Isa::Avx512;
  return fallback;
}

const Isa kDetected = probe();
std::atomic<int> g_active{int(std::min(kDetected, parse(std::getenv("NESTVEC_ISA"), kDetected)))};

int default_threads() {
  if (const char* s = std::getenv("NESTVEC_NUM_THREADS")) {
    int v = std::atoi(s);
    if (v > 0) return v;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? int(hc) : 1;
}
std::atomic<int> g_threads{default_threads()};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}
Isa detected_isa() { return kDetected; }
Isa active_isa() { return Isa(g_active.load(std::memory_order_relaxed)); }
bool isa_supported(Isa isa) { return int(isa) <= int(kDetected); }
bool set_isa(Isa isa) {
  if (!isa_supported(isa)) return false;
  g_active.store(int(isa));
  return true;
}
std::vector<Isa> compiled_isas() {
#if defined(NESTVEC_X86)
  return {Isa::Scalar, Isa::Avx2, Isa::Avx512};
#else
  return {Isa::Scalar};
#endif
}
int num_threads() { return g_threads.load(std::memory_order_relaxed); }
void set_num_threads(int n) { g_threads.store(n > 0 ? n : default_threads()); }

}  // namespace nestvec
