// AVX2 + FMA + F16C build of the Hamming kernels (hamming_impl.h; flags from CMakeLists.txt).
#include "isa/avx2.h"
#include "hamming_impl.h"
