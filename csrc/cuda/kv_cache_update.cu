// CUDA kernel of dllm_core::kv_cache_update: RoPE(k) and v scattered into the caches in one pass.
//
// One block per (batch, new row).  The block first computes that row's D/2 (cos, sin) pairs into
// shared memory, then every head reuses them (rope_math.cuh, shared with the query RoPE of
// rope.cu).  Rotate-half pairs element i with i + D/2, so each thread loads VEC elements of both
// halves (16-byte accesses when the layout allows), rotates in float32 and writes both halves;
// v is a straight 16-byte copy.
// Rows outside [0, T) are skipped (the CPU kernel raises instead; checking here would need a sync).

#include "rope_math.cuh"
#include "launchers.h"

namespace dllm_core {
namespace cuda {
namespace {

constexpr int kThreads = 128;

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) kv_update_kernel(KvUpdateParams p) {
  extern __shared__ float cs[];  // cos[D/2] then sin[D/2]
  const int half = p.D / 2;
  float* sn = cs + half;
  const int br = blockIdx.x, b = br / p.n, r = br % p.n;
  const int64_t t = p.rows[br];
  if (t < 0 || t >= p.T) return;  // whole block takes the same branch
  const float pos = static_cast<float>(p.positions[br]);
  rope_cos_sin(pos, p.theta, p.D, cs, sn);
  __syncthreads();

  const T* kin = static_cast<const T*>(p.k) + b * p.k_s[0] + r * p.k_s[1];
  const T* vin = static_cast<const T*>(p.v) + b * p.v_s[0] + r * p.v_s[1];
  T* kout = static_cast<T*>(p.k_cache) + b * p.kc_s[0] + t * p.kc_s[1];
  T* vout = static_cast<T*>(p.v_cache) + b * p.vc_s[0] + t * p.vc_s[1];
  rope_rotate_row<T, VEC>(kin, p.k_s[2], kout, p.kc_s[2], p.H, p.D, cs, sn);

  using V = Vec<T, VEC>;
  const int dvecs = p.D / VEC;
  for (int item = threadIdx.x; item < p.H * dvecs; item += blockDim.x) {
    const int h = item / dvecs, d0 = (item % dvecs) * VEC;
    *reinterpret_cast<V*>(vout + h * p.vc_s[2] + d0) = *reinterpret_cast<const V*>(vin + h * p.v_s[2] + d0);
  }
}

template <typename T>
cudaError_t launch_typed(const KvUpdateParams& p, cudaStream_t stream) {
  const dim3 grid(p.B * p.n);
  const size_t smem = sizeof(float) * p.D;
  constexpr int kVec = 16 / sizeof(T);
  if (p.vec == kVec)
    kv_update_kernel<T, kVec><<<grid, kThreads, smem, stream>>>(p);
  else
    kv_update_kernel<T, 1><<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_kv_cache_update(const KvUpdateParams& p, cudaStream_t stream) {
  if (p.B == 0 || p.n == 0) return cudaSuccess;
  return with_element_type(p.dtype, [&](auto t) { return launch_typed<decltype(t)>(p, stream); });
}

}  // namespace cuda
}  // namespace dllm_core
