// Portable (no SIMD flags) build of the Hamming kernels (hamming_impl.h; flags from CMakeLists.txt).
#include "isa/scalar.h"
#include "hamming_impl.h"
