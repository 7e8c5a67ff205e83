// Buffer and tuple unpacking shared by the pybind11 definitions (bindings.cpp,
// bind_multiseg.h): each re-checks what would otherwise make a kernel read out of range.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "nestvec/multiseg.h"

namespace nestvec {
namespace bind {

namespace py = pybind11;

struct View {
  void* ptr;
  int64_t rows, cols, row_stride;  // row_stride in elements
};

// A 1-D or 2-D buffer whose last dimension is contiguous (rows may be strided).
inline View view2d(const py::array& a, const char* name, size_t itemsize, bool writable = false) {
  if (a.ndim() != 2 && a.ndim() != 1)
    throw std::invalid_argument(std::string(name) + ": expected a 1-D or 2-D array");
  if (size_t(a.itemsize()) != itemsize)
    throw std::invalid_argument(std::string(name) + ": unexpected item size");
  if (writable && !a.writeable()) throw std::invalid_argument(std::string(name) + ": not writable");
  View v;
  v.ptr = const_cast<void*>(a.data());
  if (a.ndim() == 1) {
    v.rows = 1;
    v.cols = a.shape(0);
    if (v.cols > 1 && a.strides(0) != ssize_t(itemsize))
      throw std::invalid_argument(std::string(name) + ": must be contiguous");
    v.row_stride = v.cols;
    return v;
  }
  v.rows = a.shape(0);
  v.cols = a.shape(1);
  if (v.rows == 0 || v.cols == 0) {  // empty: strides are meaningless
    v.row_stride = v.cols;
    return v;
  }
  if (v.cols > 1 && a.strides(1) != ssize_t(itemsize))
    throw std::invalid_argument(std::string(name) + ": last dimension must be contiguous");
  if (a.strides(0) % ssize_t(itemsize) != 0 || a.strides(0) < 0)
    throw std::invalid_argument(std::string(name) + ": unsupported row stride");
  v.row_stride = a.strides(0) / ssize_t(itemsize);
  if (v.rows <= 1) v.row_stride = std::max<int64_t>(v.row_stride, v.cols);
  return v;
}

// An integer (Python or NumPy) field of a segment tuple; anything else is a TypeError
// (pybind11's own cast would raise RuntimeError).
inline int64_t int_field(const py::handle& h, const std::string& what) {
  if (!PyIndex_Check(h.ptr())) throw py::type_error(what + ": expected an integer");
  return h.cast<int64_t>();
}

// A multiseg segment tuple's `position`: an int (its first row's global position) or
// an int64 array of each row's, at least `min_len` long.
inline multiseg::Position position_arg(const py::handle& h, const std::string& at, int64_t min_len,
                                std::vector<py::array>& keep) {
  multiseg::Position pos;
  if (!py::isinstance<py::array>(h)) {
    pos.offset = int_field(h, at + ".position");
    return pos;
  }
  py::array p = py::reinterpret_borrow<py::array>(h);
  keep.push_back(p);
  if (p.ndim() != 1 || p.shape(0) < min_len || p.itemsize() != 8 || p.dtype().kind() != 'i')
    throw std::invalid_argument(at + ": position must be an int or an int64 array [n]");
  pos.positions = static_cast<const int64_t*>(view2d(p, (at + ".position").c_str(), 8).ptr);
  pos.n_positions = p.shape(0);
  return pos;
}

// A multiseg segment tuple's `allow`: None, or a 1-D bool array (the caller checks its
// length); returns the data and the length.
inline std::pair<const uint8_t*, int64_t> allow_arg(const py::handle& h, const std::string& at,
                                             std::vector<py::array>& keep) {
  if (h.is_none()) return {nullptr, 0};
  if (!py::isinstance<py::array>(h)) throw py::type_error(at + ": allow must be a bool array");
  py::array a = py::reinterpret_borrow<py::array>(h);
  keep.push_back(a);
  if (a.ndim() != 1 || a.itemsize() != 1) throw std::invalid_argument(at + ": allow must be bool [n]");
  return {static_cast<const uint8_t*>(view2d(a, (at + ".allow").c_str(), 1).ptr), a.shape(0)};
}

}  // namespace bind
}  // namespace nestvec
