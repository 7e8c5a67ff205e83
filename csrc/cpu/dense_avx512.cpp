// AVX-512 build of the dense dot-product kernels (dense_impl.h; flags from CMakeLists.txt).
#include "isa/avx512.h"
#include "dense_impl.h"
