// The one element-type vocabulary of the CPU ops and the bindings: float32, float16,
// bfloat16. The integer codes are what the `_C` functions take (and what the Python
// layer's dtype table mirrors); the short names are the LOST op's spelling.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace nestvec {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

constexpr int kNumDTypes = 3;

constexpr int64_t dtype_size(DType dt) { return dt == DType::F32 ? 4 : 2; }

// "float32" / "float16" / "bfloat16" (NumPy / torch spelling).
constexpr const char* dtype_name(DType dt) {
  return dt == DType::F32 ? "float32" : dt == DType::F16 ? "float16" : "bfloat16";
}
// "f32" / "f16" / "bf16".
constexpr const char* dtype_short_name(DType dt) {
  return dt == DType::F32 ? "f32" : dt == DType::F16 ? "f16" : "bf16";
}

// An integer code from a caller; `arg` names the argument in the error.
inline DType dtype_from_code(int64_t code, const char* arg = "dtype") {
  if (code < 0 || code >= kNumDTypes)
    throw std::invalid_argument(std::string(arg) + ": expected 0 (float32), 1 (float16) or 2 "
                                "(bfloat16), got " + std::to_string(code));
  return DType(int(code));
}

// A name, short ("f16") or long ("float16").
inline DType dtype_from_name(const std::string& s, const char* arg = "dtype") {
  for (int i = 0; i < kNumDTypes; ++i) {
    const DType dt = DType(i);
    if (s == dtype_short_name(dt) || s == dtype_name(dt)) return dt;
  }
  throw std::invalid_argument(std::string(arg) + ": expected 'f32', 'f16' or 'bf16', got '" + s + "'");
}

// Calls f(std::integral_constant<DType, dt>{}) for the run-time dt: the one switch
// that turns a dtype into a template argument of a kernel.
template <class F>
decltype(auto) with_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::F16: return f(std::integral_constant<DType, DType::F16>{});
    case DType::BF16: return f(std::integral_constant<DType, DType::BF16>{});
    default: return f(std::integral_constant<DType, DType::F32>{});
  }
}

}  // namespace nestvec
