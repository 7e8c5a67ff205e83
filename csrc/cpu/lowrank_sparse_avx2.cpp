// AVX2 + FMA + F16C build of lowrank_sparse_matmul (lowrank_sparse_impl.h; flags from CMakeLists.txt).
#include "isa/avx2.h"
#include "lowrank_sparse_impl.h"
