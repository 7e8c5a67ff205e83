// nvemu stand-ins for the CUB block collectives our kernels use: BlockReduce::Sum /
// Reduce and BlockScan::ExclusiveSum. Like CUB, they barrier once internally and leave the
// temporary storage in use afterwards, so a kernel that reuses it without its own
// __syncthreads() reads values of the next call; and BlockReduce's result is defined
// in thread 0 only (other threads get a poison value here, NaN for floats).
#pragma once
#include <cstring>

#include "nvemu.h"

namespace cub {

// Shared by both collectives: the temporary storage holds one value per thread, and
// publish() stores this thread's value and waits until every thread has.
template <typename T, int BLOCK_DIM_X>
class BlockCollective {
 public:
  struct TempStorage {
    T vals[BLOCK_DIM_X];
  };
  explicit BlockCollective(TempStorage& t) : t_(t) {
    if (int(blockDim.x * blockDim.y * blockDim.z) != BLOCK_DIM_X)
      nvemu::fail("cub block collective: BLOCK_DIM_X differs from the block size");
  }

 protected:
  int publish(T v) {
    const int tid = nvemu::tl_fiber->linear;
    t_.vals[tid] = v;
    __syncthreads();
    return tid;
  }
  TempStorage& t_;
};

template <typename T, int BLOCK_DIM_X>
class BlockReduce : public BlockCollective<T, BLOCK_DIM_X> {
  using Base = BlockCollective<T, BLOCK_DIM_X>;

 public:
  using typename Base::TempStorage;
  using Base::Base;
  T Sum(T v) {
    return Reduce(v, [](const T& a, const T& b) { return a + b; });
  }
  template <typename Op>
  T Reduce(T v, Op op) {
    const int tid = this->publish(v);
    T r;
    if (tid == 0) {
      r = this->t_.vals[0];
      for (int i = 1; i < BLOCK_DIM_X; ++i) r = op(r, this->t_.vals[i]);
    } else {
      std::memset(&r, 0xFF, sizeof(T));
    }
    return r;
  }
};

template <typename T, int BLOCK_DIM_X>
class BlockScan : public BlockCollective<T, BLOCK_DIM_X> {
  using Base = BlockCollective<T, BLOCK_DIM_X>;

 public:
  using typename Base::TempStorage;
  using Base::Base;
  void ExclusiveSum(T in, T& out) {
    T total;
    ExclusiveSum(in, out, total);
  }
  void ExclusiveSum(T in, T& out, T& aggregate) {
    const int tid = this->publish(in);
    T s = T(0);
    for (int i = 0; i < tid; ++i) s += this->t_.vals[i];
    out = s;
    for (int i = tid; i < BLOCK_DIM_X; ++i) s += this->t_.vals[i];
    aggregate = s;
  }
};

}  // namespace cub
