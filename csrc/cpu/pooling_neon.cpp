// aarch64 NEON build of the pooling reduction (pooling_impl.h; flags from CMakeLists.txt).
#include "isa/neon.h"
#include "pooling_impl.h"
