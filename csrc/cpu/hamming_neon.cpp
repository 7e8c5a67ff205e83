// aarch64 NEON build of the Hamming kernels (hamming_impl.h; flags from CMakeLists.txt).
#include "isa/neon.h"
#include "hamming_impl.h"
