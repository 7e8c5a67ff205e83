// AVX2 + FMA + F16C build of the dense dot-product kernels (dense_impl.h; flags from CMakeLists.txt).
#include "isa/avx2.h"
#include "dense_impl.h"
