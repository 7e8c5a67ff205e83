// AVX-512 build of the pooling reduction (pooling_impl.h; flags from CMakeLists.txt).
#include "isa/avx512.h"
#include "pooling_impl.h"
