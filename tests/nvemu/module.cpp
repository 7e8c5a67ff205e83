// _nvemu (tests only): the CUDA launchers of every op, built from the same .cu sources as
// nestvec._C but run on the CPU emulator (include/nvemu.h).
// Pointers are host pointers; `stream` is ignored (every launch is synchronous).
// Used by the tests to run the CUDA kernels on machines without a GPU.
#include <pybind11/pybind11.h>

#include "bind_cuda.h"  // csrc/: the launchers' bindings, shared with nestvec._C

void def_selftest(pybind11::module_& m);  // selftest.cpp

PYBIND11_MODULE(_nvemu, m) {
  m.doc() = "nestvec CUDA kernels on the CPU emulator (tests only; slow)";
  m.def("cuda_device_count", [] { return nestvec::cuda::device_count(); });
  nestvec::bind::def_cuda_hamming(m);
  nestvec::bind::def_cuda_pool(m);
  nestvec::bind::def_cuda_dense(m);
  nestvec::bind::def_cuda_lowrank(m);
  def_selftest(m);
}
