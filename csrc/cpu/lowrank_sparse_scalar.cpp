// lowrank_sparse_matmul, scalar build of the driver in lowrank_sparse_impl.h.
#define NV_LRS_NS scalar
#define NV_LRS_ENTRY matmul_scalar
#include "lowrank_sparse_impl.h"
