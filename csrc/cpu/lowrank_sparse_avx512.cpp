// AVX-512 build of lowrank_sparse_matmul (lowrank_sparse_impl.h; flags from CMakeLists.txt).
#include "isa/avx512.h"
#include "lowrank_sparse_impl.h"
