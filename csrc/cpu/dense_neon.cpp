// aarch64 NEON build of the dense dot-product kernels (dense_impl.h; flags from CMakeLists.txt).
#include "isa/neon.h"
#include "dense_impl.h"
