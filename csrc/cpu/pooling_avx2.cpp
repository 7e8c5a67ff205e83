// AVX2 + FMA + F16C build of the pooling reduction (pooling_impl.h; flags from CMakeLists.txt).
// One token row per step, the row four ahead prefetched: on Zen 3 the four-row step's
// interleaved streams read a cold batch 1.5-2x slower than one row at a time in address
// order, and the prefetch takes another ~10% off (bench_pool.py; README, pooling).
#define NV_POOL_ROWS_PER_STEP 1
#define NV_POOL_PREFETCH_ROWS 4
#include "isa/avx2.h"
#include "pooling_impl.h"
