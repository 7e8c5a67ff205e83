// lowrank_sparse_matmul, avx512 build of the driver in lowrank_sparse_impl.h.
#define NV_LRS_NS avx512
#define NV_LRS_ENTRY matmul_avx512
#include "lowrank_sparse_impl.h"
