// lowrank_sparse_matmul, avx2 build of the driver in lowrank_sparse_impl.h.
#define NV_LRS_NS avx2
#define NV_LRS_ENTRY matmul_avx2
#include "lowrank_sparse_impl.h"
