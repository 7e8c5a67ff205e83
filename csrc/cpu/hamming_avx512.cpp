// AVX-512 build of the Hamming kernels (hamming_impl.h; flags from CMakeLists.txt).
#include "isa/avx512.h"
#include "hamming_impl.h"
