// CUDA kernel of dllm_core::kv_cache_update: RoPE(k) and v scattered into the caches in one pass.
//
// One block per (batch, new row).  The block first computes that row's D/2 (cos, sin) pairs into
// shared memory (angles exactly as the float32 reference: inv_freq = 1 / theta^(2i/D) rounded to
// float, angle = float(pos) * inv_freq), then every head reuses them.  Rotate-half pairs element i
// with i + D/2, so each thread loads VEC elements of both halves (16-byte accesses when the
// layout allows), rotates in float32 and writes both halves; v is a straight 16-byte copy.
// Rows outside [0, T) are skipped (the CPU kernel raises instead; checking here would need a sync).

#include "device_utils.cuh"
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
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(p.D);
    const float inv_freq = 1.0f / static_cast<float>(pow(static_cast<double>(p.theta), static_cast<double>(e)));
    sincosf(pos * inv_freq, &sn[i], &cs[i]);
  }
  __syncthreads();

  using V = Vec<T, VEC>;
  const T* kin = static_cast<const T*>(p.k) + b * p.k_s[0] + r * p.k_s[1];
  const T* vin = static_cast<const T*>(p.v) + b * p.v_s[0] + r * p.v_s[1];
  T* kout = static_cast<T*>(p.k_cache) + b * p.kc_s[0] + t * p.kc_s[1];
  T* vout = static_cast<T*>(p.v_cache) + b * p.vc_s[0] + t * p.vc_s[1];

  const int kvecs = half / VEC;  // vectors per half head
  for (int item = threadIdx.x; item < p.H * kvecs; item += blockDim.x) {
    const int h = item / kvecs, i0 = (item % kvecs) * VEC;
    const V x1 = *reinterpret_cast<const V*>(kin + h * p.k_s[2] + i0);
    const V x2 = *reinterpret_cast<const V*>(kin + h * p.k_s[2] + i0 + half);
    V y1, y2;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float a = to_float(x1.v[j]), c = to_float(x2.v[j]);
      const float co = cs[i0 + j], si = sn[i0 + j];
      y1.v[j] = from_float<T>(a * co - c * si);
      y2.v[j] = from_float<T>(c * co + a * si);
    }
    *reinterpret_cast<V*>(kout + h * p.kc_s[2] + i0) = y1;
    *reinterpret_cast<V*>(kout + h * p.kc_s[2] + i0 + half) = y2;
  }
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
  switch (p.dtype) {
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(p, stream);
    case DType::kFloat16: return launch_typed<__half>(p, stream);
    default: return launch_typed<float>(p, stream);
  }
}

}  // namespace cuda
}  // namespace dllm_core
