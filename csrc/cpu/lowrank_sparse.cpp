// lowrank_sparse_matmul dispatch: the driver (lowrank_sparse_impl.h) is compiled once
// per ISA with that ISA's micro-kernel; the active ISA picks one at run time.
#include "nestvec/dispatch.h"
#include "nestvec/lowrank_sparse.h"

namespace nestvec {
namespace lowrank_sparse {

void matmul(const Args& a) {
  switch (active_isa()) {
#if defined(NESTVEC_X86)
    case Isa::Avx512: return matmul_avx512(a);
    case Isa::Avx2: return matmul_avx2(a);
#endif
    default: return matmul_scalar(a);
  }
}

}  // namespace lowrank_sparse
}  // namespace nestvec
