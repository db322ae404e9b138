// CUDA kernel of dllm_core::rope: the query RoPE (semantics: dllm_core/ops/rope.py apply_rope).
//
// The key RoPE of csrc/cuda/kv_cache_update.cu, line for line, writing a new contiguous tensor
// instead of cache rows, so queries and cached keys are rotated bit-identically: one block per
// (batch, row), the row's D/2 (cos, sin) pairs in shared memory (inv_freq = 1 / theta^(2i/D) with
// pow in double rounded to float, angle = float(pos) * inv_freq), reused by every head; 16-byte
// loads of both rotate-half halves when the (possibly strided, e.g. sliced from a fused QKV
// output) input allows.

#include "device_utils.cuh"
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
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(p.D);
    const float inv_freq = 1.0f / static_cast<float>(pow(static_cast<double>(p.theta), static_cast<double>(e)));
    sincosf(pos * inv_freq, &sn[i], &cs[i]);
  }
  __syncthreads();

  using V = Vec<T, VEC>;
  const T* xin = static_cast<const T*>(p.x) + b * p.x_s[0] + r * p.x_s[1];
  T* xout = static_cast<T*>(p.out) + static_cast<int64_t>(br) * p.H * p.D;

  const int kvecs = half / VEC;  // vectors per half head
  for (int item = threadIdx.x; item < p.H * kvecs; item += blockDim.x) {
    const int h = item / kvecs, i0 = (item % kvecs) * VEC;
    const V x1 = *reinterpret_cast<const V*>(xin + h * p.x_s[2] + i0);
    const V x2 = *reinterpret_cast<const V*>(xin + h * p.x_s[2] + i0 + half);
    V y1, y2;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float a = to_float(x1.v[j]), c = to_float(x2.v[j]);
      const float co = cs[i0 + j], si = sn[i0 + j];
      y1.v[j] = from_float<T>(a * co - c * si);
      y2.v[j] = from_float<T>(c * co + a * si);
    }
    *reinterpret_cast<V*>(xout + h * p.D + i0) = y1;
    *reinterpret_cast<V*>(xout + h * p.D + i0 + half) = y2;
  }
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
  switch (p.dtype) {
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(p, stream);
    case DType::kFloat16: return launch_typed<__half>(p, stream);
    default: return launch_typed<float>(p, stream);
  }
}

}  // namespace cuda
}  // namespace dllm_core
