// nvemu stand-ins for the CUB block collectives our kernels use: BlockReduce::Sum /
// Reduce and BlockScan::ExclusiveSum. Like CUB, they barrier once internally and leave the
// temporary storage in use afterwards, so a kernel that reuses it without its own
// __syncthreads() reads values of the next call; and BlockReduce's result is defined
// in thread 0 only (other threads get a poison value here, NaN for floats).
#pragma once
#include <cstring>

#include "nvemu.h"

namespace cub {

template <typename T, int BLOCK_DIM_X>
class BlockReduce {
 public:
  struct TempStorage {
    T vals[BLOCK_DIM_X];
  };
  explicit BlockReduce(TempStorage& t) : t_(t) {
    if (int(blockDim.x * blockDim.y * blockDim.z) != BLOCK_DIM_X)
      nvemu::fail("cub::BlockReduce: BLOCK_DIM_X differs from the block size");
  }
  T Sum(T v) {
    return Reduce(v, [](const T& a, const T& b) { return a + b; });
  }
  template <typename Op>
  T Reduce(T v, Op op) {
    const int tid = nvemu::tl_fiber->linear;
    t_.vals[tid] = v;
    __syncthreads();
    T r;
    if (tid == 0) {
      r = t_.vals[0];
      for (int i = 1; i < BLOCK_DIM_X; ++i) r = op(r, t_.vals[i]);
    } else {
      std::memset(&r, 0xFF, sizeof(T));
    }
    return r;
  }

 private:
  TempStorage& t_;
};

template <typename T, int BLOCK_DIM_X>
class BlockScan {
 public:
  struct TempStorage {
    T vals[BLOCK_DIM_X];
  };
  explicit BlockScan(TempStorage& t) : t_(t) {
    if (int(blockDim.x * blockDim.y * blockDim.z) != BLOCK_DIM_X)
      nvemu::fail("cub::BlockScan: BLOCK_DIM_X differs from the block size");
  }
  void ExclusiveSum(T in, T& out) {
    T total;
    ExclusiveSum(in, out, total);
  }
  void ExclusiveSum(T in, T& out, T& aggregate) {
    const int tid = nvemu::tl_fiber->linear;
    t_.vals[tid] = in;
    __syncthreads();
    T s = T(0);
    for (int i = 0; i < tid; ++i) s += t_.vals[i];
    out = s;
    for (int i = tid; i < BLOCK_DIM_X; ++i) s += t_.vals[i];
    aggregate = s;
  }

 private:
  TempStorage& t_;
};

}  // namespace cub
