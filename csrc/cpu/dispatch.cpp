#include "nestvec/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#if defined(NESTVEC_X86)
#include <cpuid.h>
#endif
#if defined(NESTVEC_ARM) && defined(__linux__)
#include <sys/auxv.h>
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

#if defined(NESTVEC_ARM) && defined(__linux__)
// HWCAP bits (asm/hwcap.h), spelled out: older libc headers lack the newer ones.
constexpr unsigned long kHwcapAsimd = 1ul << 1, kHwcapAsimdHp = 1ul << 10,
                        kHwcapAsimdDp = 1ul << 20, kHwcapSve = 1ul << 22;
constexpr unsigned long kHwcap2I8mm = 1ul << 13, kHwcap2Bf16 = 1ul << 14;
#endif

using Features = std::vector<std::pair<const char*, bool>>;

// The CPU + OS features behind the ISA choice.
Features features() {
  Features f;
#if defined(NESTVEC_X86)
  __builtin_cpu_init();
  uint32_t a, b, c = 0, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) c = 0;
  const bool osxsave = c & (1u << 27);
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  f.emplace_back("os-ymm", (xcr0 & 0x6) == 0x6);
  f.emplace_back("os-zmm", (xcr0 & 0xe6) == 0xe6);
  f.emplace_back("avx2", __builtin_cpu_supports("avx2"));
  f.emplace_back("fma", __builtin_cpu_supports("fma"));
  f.emplace_back("popcnt", __builtin_cpu_supports("popcnt"));
  f.emplace_back("f16c", c & (1u << 29));
  f.emplace_back("avx512f", __builtin_cpu_supports("avx512f"));
  f.emplace_back("avx512bw", __builtin_cpu_supports("avx512bw"));
  f.emplace_back("avx512vl", __builtin_cpu_supports("avx512vl"));
  f.emplace_back("avx512dq", __builtin_cpu_supports("avx512dq"));
  f.emplace_back("avx512vpopcntdq", __builtin_cpu_supports("avx512vpopcntdq"));
  f.emplace_back("avx512bf16", __builtin_cpu_supports("avx512bf16"));
  f.emplace_back("avx512vnni", __builtin_cpu_supports("avx512vnni"));
#elif defined(NESTVEC_ARM) && defined(__linux__)
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  f.emplace_back("asimd", hw & kHwcapAsimd);
  f.emplace_back("asimdhp", hw & kHwcapAsimdHp);
  f.emplace_back("asimddp", hw & kHwcapAsimdDp);
  f.emplace_back("sve", hw & kHwcapSve);
  f.emplace_back("i8mm", hw2 & kHwcap2I8mm);
  f.emplace_back("bf16", hw2 & kHwcap2Bf16);
#elif defined(NESTVEC_ARM)
  f.emplace_back("asimd", true);  // every aarch64 CPU (Apple's included) has it
#endif
  return f;
}

bool has(const Features& f, const char* name) {
  for (const auto& x : f)
    if (!std::strcmp(x.first, name)) return x.second;
  return false;
}

Isa probe() {
  const Features f = features();
#if defined(NESTVEC_X86)
  const bool avx2 = has(f, "os-ymm") && has(f, "avx2") && has(f, "fma") && has(f, "popcnt") &&
                    has(f, "f16c");
  const bool avx512 = avx2 && has(f, "os-zmm") && has(f, "avx512f") && has(f, "avx512bw") &&
                      has(f, "avx512vl") && has(f, "avx512dq") && has(f, "avx512vpopcntdq") &&
                      has(f, "avx512bf16") && has(f, "avx512vnni");
  if (avx512) return Isa::Avx512;
  if (avx2) return Isa::Avx2;
#elif defined(NESTVEC_ARM)
  if (has(f, "asimd")) return Isa::Neon;
#endif
  return Isa::Scalar;
}

// Position in compiled_isas() (increasing preference); -1 if not compiled.
int rank(Isa isa) {
  const std::vector<Isa> c = compiled_isas();
  for (size_t i = 0; i < c.size(); ++i)
    if (c[i] == isa) return int(i);
  return -1;
}

// NESTVEC_ISA can only lower the ISA (an unknown or unsupported name is ignored).
Isa initial_isa(Isa detected) {
  Isa forced;
  if (!parse_isa(std::getenv("NESTVEC_ISA"), &forced) || rank(forced) < 0) return detected;
  return rank(forced) < rank(detected) ? forced : detected;
}

const Isa kDetected = probe();
std::atomic<int> g_active{int(initial_isa(kDetected))};

int default_threads() {
  if (const char* s = std::getenv("NESTVEC_NUM_THREADS")) {
    int v = std::atoi(s);
    if (v > 0) return v;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? int(hc) : 1;
}
std::atomic<int> g_threads{default_threads()};
thread_local bool t_serial = false;  // inside a SerialScope

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    case Isa::Neon: return "neon";
    default: return "scalar";
  }
}
bool parse_isa(const char* s, Isa* out) {
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon})
    if (s && !std::strcmp(s, isa_name(i))) {
      *out = i;
      return true;
    }
  return false;
}
Isa detected_isa() { return kDetected; }
Isa active_isa() { return Isa(g_active.load(std::memory_order_relaxed)); }
bool isa_supported(Isa isa) { return rank(isa) >= 0 && rank(isa) <= rank(kDetected); }
bool set_isa(Isa isa) {
  if (!isa_supported(isa)) return false;
  g_active.store(int(isa));
  return true;
}
std::vector<Isa> compiled_isas() {
#if defined(NESTVEC_X86)
  return {Isa::Scalar, Isa::Avx2, Isa::Avx512};
#elif defined(NESTVEC_ARM)
  return {Isa::Scalar, Isa::Neon};
#else
  return {Isa::Scalar};
#endif
}
std::string cpu_features() {
  std::string s;
  for (const auto& x : features())
    if (x.second) s += (s.empty() ? "" : " ") + std::string(x.first);
  return s;
}
int num_threads() { return t_serial ? 1 : g_threads.load(std::memory_order_relaxed); }
SerialScope::SerialScope() : prev_(t_serial) { t_serial = true; }
SerialScope::~SerialScope() { t_serial = prev_; }

void set_num_threads(int n) { g_threads.store(n > 0 ? n : default_threads()); }

}  // namespace nestvec
