// Portable (no SIMD flags) build of the pooling reduction (pooling_impl.h; flags from CMakeLists.txt).
#include "isa/scalar.h"
#include "pooling_impl.h"
