// CUDA kernel of dllm_core::silu_mul (semantics: dllm_core/ops/silu_mul.py).
//
// Element-wise over (rows, I) with 16-byte accesses when I and the pointers allow: gate and up are
// the two halves of each row of the fused projection output.  The roundings are eager PyTorch's on
// CUDA: silu = x / (1 + expf(-x)) in float32 cast to the dtype, then the product cast again.

#include <algorithm>

#include "device_utils.cuh"
#include "launchers.h"

namespace dllm_core {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) silu_mul_kernel(SiluMulParams p) {
  using V = Vec<T, VEC>;
  const int ivec = p.I / VEC;
  const int64_t total = p.rows * ivec;
  const T* in = static_cast<const T*>(p.gate_up);
  T* out = static_cast<T*>(p.out);
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < total;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = item / ivec;
    const int c = static_cast<int>(item % ivec) * VEC;
    const V g = *reinterpret_cast<const V*>(in + r * 2 * p.I + c);
    const V u = *reinterpret_cast<const V*>(in + r * 2 * p.I + p.I + c);
    V o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float x = to_float(g.v[j]);
      const T act = from_float<T>(x / (1.0f + expf(-x)));
      o.v[j] = from_float<T>(__fmul_rn(to_float(act), to_float(u.v[j])));
    }
    *reinterpret_cast<V*>(out + r * p.I + c) = o;
  }
}

template <typename T>
cudaError_t launch_typed(const SiluMulParams& p, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int vec = p.vec == kVec ? kVec : 1;
  const int64_t items = p.rows * (p.I / vec);
  const int blocks = static_cast<int>(std::min<int64_t>((items + kThreads - 1) / kThreads, 65535));
  if (vec == kVec)
    silu_mul_kernel<T, kVec><<<blocks, kThreads, 0, stream>>>(p);
  else
    silu_mul_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_silu_mul(const SiluMulParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.I == 0) return cudaSuccess;
  return with_element_type(p.dtype, [&](auto t) { return launch_typed<decltype(t)>(p, stream); });
}

}  // namespace cuda
}  // namespace dllm_core
