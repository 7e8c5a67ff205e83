// Portable (no SIMD flags) build of lowrank_sparse_matmul (lowrank_sparse_impl.h; flags from CMakeLists.txt).
#include "isa/scalar.h"
#include "lowrank_sparse_impl.h"
