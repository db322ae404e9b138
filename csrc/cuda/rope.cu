// CUDA kernel of dllm_core::rope: the query RoPE (semantics: dllm_core/ops/rope.py apply_rope).
//
// The key RoPE of csrc/cuda/kv_cache_update.cu (both use rope_math.cuh), writing a new contiguous
// tensor instead of cache rows, so queries and cached keys are rotated bit-identically: one block
// per (batch, row), the row's D/2 (cos, sin) pairs in shared memory, reused by every head; 16-byte
// loads of both rotate-half halves when the (possibly strided, e.g. sliced from a fused QKV
// output) input allows.

#include "rope_math.cuh"
#include "launchers.h"

namespace dllm_core {
namespace cuda {
namespace {

constexpr int kThreads = 128;

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) rope_kernel(RopeParams p) {
  extern __shared__ float cs[];  // cos[D/2] then sin[D/2]
  const int half = p.D / 2;
  float* sn = cs + half;
  const int br = blockIdx.x, b = br / p.n, r = br % p.n;
  const float pos = static_cast<float>(p.positions[br]);
  rope_cos_sin(pos, p.theta, p.D, cs, sn);
  __syncthreads();

  const T* xin = static_cast<const T*>(p.x) + b * p.x_s[0] + r * p.x_s[1];
  T* xout = static_cast<T*>(p.out) + static_cast<int64_t>(br) * p.H * p.D;
  rope_rotate_row<T, VEC>(xin, p.x_s[2], xout, p.D, p.H, p.D, cs, sn);
}

template <typename T>
cudaError_t launch_typed(const RopeParams& p, cudaStream_t stream) {
  const dim3 grid(p.B * p.n);
  const size_t smem = sizeof(float) * p.D;
  constexpr int kVec = 16 / sizeof(T);
  if (p.vec == kVec)
    rope_kernel<T, kVec><<<grid, kThreads, smem, stream>>>(p);
  else
    rope_kernel<T, 1><<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_rope(const RopeParams& p, cudaStream_t stream) {
  if (p.B == 0 || p.n == 0 || p.H == 0 || p.D == 0) return cudaSuccess;
  return with_element_type(p.dtype, [&](auto t) { return launch_typed<decltype(t)>(p, stream); });
}

}  // namespace cuda
}  // namespace dllm_core
