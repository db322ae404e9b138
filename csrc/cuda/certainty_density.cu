// CUDA kernel of dllm_core::certainty_density_topk (semantics: dllm_core/ops/certainty_density.py).
//
// One block (1024 threads) per sequence, everything in shared memory: the extended known row
// ([R ones | known | R x known[G-1]], the reference's boundary rule), the stencil weights, the
// scores, then a bitonic sort of 64-bit keys (order-preserving score bits << 32 | ~column), whose
// descending order is exactly the reference's: score descending, ties and the -inf of
// non-candidates (which complete short rows) by the lower column.  G up to 16384 (128 KB of
// keys); the Python wrapper uses the reference beyond that.

#include "device_utils.cuh"
#include "launchers.h"

namespace dllm_core {
namespace cuda {
namespace {

constexpr int kThreads = 1024, kMaxColumns = 16384, kMaxRadius = 2048;

// Monotone map of float bits to unsigned (larger float -> larger unsigned; NaN above +inf).
__device__ __forceinline__ uint32_t ordered_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void __launch_bounds__(kThreads) density_topk_kernel(DensityParams p, int P) {
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned long long* keys = reinterpret_cast<unsigned long long*>(smem);  // P
  float* w = reinterpret_cast<float*>(keys + P);                           // 2R + 1
  float* ext = w + 2 * p.radius + 1;                                       // G + 2R
  __shared__ float wsum;
  const int b = blockIdx.x, G = p.G, R = p.radius;
  const bool* known = p.known + static_cast<int64_t>(b) * G;

  for (int d = threadIdx.x; d <= 2 * R; d += blockDim.x) {
    const float df = static_cast<float>(d - R);
    w[d] = expf(-(df * df) / p.two_sigma_sq);
  }
  const float right = known[G - 1] ? 1.f : 0.f;
  for (int j = threadIdx.x; j < G + 2 * R; j += blockDim.x)
    ext[j] = j < R ? 1.f : (j < R + G ? (known[j - R] ? 1.f : 0.f) : right);
  __syncthreads();
  if (threadIdx.x == 0) {  // same summation order as the CPU kernel
    float s = 0.f;
    for (int d = 0; d <= 2 * R; ++d) s += w[d];
    wsum = s;
  }
  __syncthreads();

  for (int i = threadIdx.x; i < P; i += blockDim.x) {
    unsigned long long key = 0ull;  // padding sorts below every real key (even -inf ones)
    if (i < G) {
      float score = -INFINITY;
      if (p.candidates[static_cast<int64_t>(b) * G + i]) {
        float acc = 0.f;
        for (int d = 0; d <= 2 * R; ++d) acc += w[d] * ext[i + d];
        score = acc / wsum * p.confidence[static_cast<int64_t>(b) * G + i];
      }
      p.scores[static_cast<int64_t>(b) * G + i] = score;
      key = (static_cast<unsigned long long>(ordered_bits(score)) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
    }
    keys[i] = key;
  }
  __syncthreads();

  // Bitonic sort, descending; each thread handles pairs (i, i + j) with i's bit j clear.
  for (int k = 2; k <= P; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int t = threadIdx.x; t < P / 2; t += blockDim.x) {
        const int i = 2 * j * (t / j) + (t % j), ixj = i + j;
        const unsigned long long a = keys[i], c = keys[ixj];
        const bool descending = (i & k) == 0;
        if (descending ? (a < c) : (a > c)) {
          keys[i] = c;
          keys[ixj] = a;
        }
      }
      __syncthreads();
    }
  }
  for (int j = threadIdx.x; j < p.kk; j += blockDim.x)
    p.top[static_cast<int64_t>(b) * p.kk + j] = 0xFFFFFFFFu - static_cast<uint32_t>(keys[j] & 0xFFFFFFFFull);
}

}  // namespace

int density_max_columns() { return kMaxColumns; }
int density_max_radius() { return kMaxRadius; }

cudaError_t launch_certainty_density_topk(const DensityParams& p, cudaStream_t stream) {
  if (p.B == 0 || p.G == 0) return cudaSuccess;
  if (p.G > kMaxColumns || p.radius > kMaxRadius) return cudaErrorInvalidValue;
  int P = 1;
  while (P < p.G) P <<= 1;
  const size_t smem = sizeof(unsigned long long) * P + sizeof(float) * (2 * p.radius + 1 + p.G + 2 * p.radius);
  cudaError_t err = cudaFuncSetAttribute(density_topk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  density_topk_kernel<<<p.B, kThreads, smem, stream>>>(p, P);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace dllm_core
