// lowrank_sparse_matmul dispatch: the driver (lowrank_sparse_impl.h) is compiled once
// per ISA with that ISA's micro-kernel; the active ISA picks one at run time.
#include "nestvec/dispatch.h"
#include "nestvec/lowrank_sparse.h"

namespace nestvec {
namespace lowrank_sparse {

void matmul(const Args& a) {
  with_isa(active_isa(), [](auto isa) { return kernels<decltype(isa)::value>(); }).matmul(a);
}

}  // namespace lowrank_sparse
}  // namespace nestvec
