// aarch64 NEON build of lowrank_sparse_matmul (lowrank_sparse_impl.h; flags from CMakeLists.txt).
#include "isa/neon.h"
#include "lowrank_sparse_impl.h"
