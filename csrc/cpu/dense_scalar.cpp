// Portable (no SIMD flags) build of the dense dot-product kernels (dense_impl.h; flags from CMakeLists.txt).
#include "isa/scalar.h"
#include "dense_impl.h"
