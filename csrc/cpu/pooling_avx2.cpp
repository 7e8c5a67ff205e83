// AVX2 + FMA + F16C build of the pooling reduction (pooling_impl.h; flags from CMakeLists.txt).
// One token row per step: on Zen 3 the four-row step's interleaved streams read a cold
// batch 1.5-2x slower than one row at a time in address order (bench_pool.py).
#define NV_POOL_ROWS_PER_STEP 1
#include "isa/avx2.h"
#include "pooling_impl.h"
