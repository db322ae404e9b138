// CUDA kernels of dllm_core::rms_norm and dllm_core::add_rms_norm (semantics: dllm_core/ops/rms_norm.py).
//
// One block per row, 16-byte accesses when the row length and pointers allow (else one element per
// access).  Pass 1 (add_rms_norm) rounds x + delta to the dtype, stores it as `sum` and accumulates
// the squares; a warp-shuffle block reduction gives the sum of squares.  Pass 2 re-reads the row
// (the thread's own elements, hot in L1/L2) and writes weight * dtype(x * rstd).  The roundings are
// the reference's as eager PyTorch computes them on CUDA: squares rounded to float32 (no FMA into
// the accumulator), mean = sum * (1 / N) (torch's CUDA mean multiplies by a float factor), + eps,
// rsqrtf, then two dtype roundings.  Only the order of the float32 sum differs from torch's reduction.

#include <algorithm>

#include "device_utils.cuh"
#include "launchers.h"

namespace dllm_core {
namespace cuda {
namespace {

constexpr int kMaxThreads = 1024;

__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[kMaxThreads / 32];
  __shared__ float total;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = (blockDim.x + 31) / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < warps ? warp_sums[lane] : 0.0f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) w += __shfl_xor_sync(0xffffffffu, w, off);
    if (lane == 0) total = w;
  }
  __syncthreads();
  return total;
}

template <typename T, int VEC, bool ADD>
__global__ void __launch_bounds__(kMaxThreads) rms_norm_kernel(RmsNormParams p) {
  using V = Vec<T, VEC>;
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + row * p.N;
  const T* w = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out) + row * p.N;
  T* sum = ADD ? static_cast<T*>(p.sum) + row * p.N : nullptr;
  const int nvec = p.N / VEC;

  float acc = 0.0f;
  for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
    V a = *reinterpret_cast<const V*>(x + i * VEC);
    if (ADD) {
      const V d = *reinterpret_cast<const V*>(static_cast<const T*>(p.delta) + row * p.N + i * VEC);
#pragma unroll
      for (int j = 0; j < VEC; ++j) a.v[j] = from_float<T>(__fadd_rn(to_float(a.v[j]), to_float(d.v[j])));
      *reinterpret_cast<V*>(sum + i * VEC) = a;
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float f = to_float(a.v[j]);
      acc = __fadd_rn(acc, __fmul_rn(f, f));
    }
  }
  const float total = block_sum(acc);
  const float rstd = rsqrtf(__fadd_rn(__fmul_rn(total, 1.0f / static_cast<float>(p.N)), p.eps));

  const T* src = ADD ? sum : x;  // this thread's own stores of pass 1: visible without a barrier
  for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
    const V a = *reinterpret_cast<const V*>(src + i * VEC);
    const V g = *reinterpret_cast<const V*>(w + i * VEC);
    V o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const T normed = from_float<T>(__fmul_rn(to_float(a.v[j]), rstd));
      o.v[j] = from_float<T>(__fmul_rn(to_float(g.v[j]), to_float(normed)));
    }
    *reinterpret_cast<V*>(out + i * VEC) = o;
  }
}

template <typename T, bool ADD>
cudaError_t launch_typed(const RmsNormParams& p, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int vec = p.vec == kVec ? kVec : 1;
  const int nvec = p.N / vec;
  // One vector per thread where possible (rows are few during decoding: latency, not throughput).
  const int threads = std::min(kMaxThreads, std::max(32, (nvec + 31) / 32 * 32));
  const dim3 grid(p.rows);
  if (vec == kVec)
    rms_norm_kernel<T, kVec, ADD><<<grid, threads, 0, stream>>>(p);
  else
    rms_norm_kernel<T, 1, ADD><<<grid, threads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <bool ADD>
cudaError_t launch_add(const RmsNormParams& p, cudaStream_t stream) {
  return with_element_type(p.dtype, [&](auto t) { return launch_typed<decltype(t), ADD>(p, stream); });
}

}  // namespace

cudaError_t launch_rms_norm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.N == 0) return cudaSuccess;
  return p.delta != nullptr ? launch_add<true>(p, stream) : launch_add<false>(p, stream);
}

}  // namespace cuda
}  // namespace dllm_core
