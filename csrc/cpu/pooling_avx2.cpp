// AVX2 + FMA + F16C build of the pooling reduction (pooling_impl.h; flags from CMakeLists.txt).
#include "isa/avx2.h"
#include "pooling_impl.h"
