// CUDA kernel of dllm_core::certainty_density_topk (semantics: dllm_core/ops/certainty_density.py).
//
// One block (1024 threads) per sequence.  The extended known row ([R ones | known | R x
// known[G-1]], the reference's boundary rule) and the stencil weights live in shared memory;
// each thread keeps the 64-bit keys (order-preserving score bits << 32 | ~column) of its columns
// tid + s * 1024 in registers.  Descending key order is exactly the reference's: score descending,
// ties and the -inf of non-candidates (which complete short rows) by the lower column.  The keys
// are unique, so the top kk are found without a full sort: an MSB-first radix select (8-bit
// digits, a 256-bin shared histogram of the surviving prefix per pass, warp-aggregated) narrows
// the prefix of the kk-th largest key until every key sharing it is selected (usually 3-4 passes
// for float scores); the kk keys >= that prefix are gathered and sorted (one-warp shuffle bitonic
// for kk <= 32, else a shared bitonic over the next power of two).  kk > P / 2 (P = G rounded up
// to a power of two) skips the select and sorts all P keys.  G up to 16384 (128 KB of keys); the
// Python wrapper uses the reference beyond that.

#include "device_utils.cuh"
#include "launchers.h"

namespace dllm_core {
namespace cuda {
namespace {

constexpr int kThreads = 1024, kMaxColumns = 16384, kMaxRadius = 2048;
constexpr int kSlots = kMaxColumns / kThreads;  // keys per thread

// Monotone map of float bits to unsigned (larger float -> larger unsigned; NaN above +inf).
__device__ __forceinline__ uint32_t ordered_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Descending bitonic sort of keys[0, n) in shared memory (n a power of two), the whole block.
__device__ __forceinline__ void block_bitonic_desc(unsigned long long* keys, int n) {
  for (int k = 2; k <= n; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int t = threadIdx.x; t < n / 2; t += blockDim.x) {
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
}

__global__ void __launch_bounds__(kThreads) density_topk_kernel(DensityParams p, int P) {
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned long long* keys = reinterpret_cast<unsigned long long*>(smem);  // P
  float* w = reinterpret_cast<float*>(keys + P);                           // 2R + 1
  float* ext = w + 2 * p.radius + 1;                                       // G + 2R
  __shared__ float wsum;
  __shared__ int hist[2][256];
  __shared__ int s_rank, s_count, s_digit, s_taken;
  const int b = blockIdx.x, G = p.G, R = p.radius, kk = p.kk, tid = threadIdx.x, lane = tid & 31;
  const bool* known = p.known + static_cast<int64_t>(b) * G;

  for (int d = tid; d <= 2 * R; d += blockDim.x) {
    const float df = static_cast<float>(d - R);
    w[d] = expf(-(df * df) / p.two_sigma_sq);
  }
  const float right = known[G - 1] ? 1.f : 0.f;
  for (int j = tid; j < G + 2 * R; j += blockDim.x)
    ext[j] = j < R ? 1.f : (j < R + G ? (known[j - R] ? 1.f : 0.f) : right);
  for (int j = tid; j < 512; j += blockDim.x) hist[j >> 8][j & 255] = 0;
  if (tid == 0) s_taken = 0;
  __syncthreads();
  if (tid == 0) {  // same summation order as the CPU kernel
    float s = 0.f;
    for (int d = 0; d <= 2 * R; ++d) s += w[d];
    wsum = s;
  }
  __syncthreads();

  unsigned long long key[kSlots];  // column tid + s * kThreads; 0 (below every real key) past G
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int i = tid + s * kThreads;
    key[s] = 0ull;
    if (i < G) {
      float score = -INFINITY;
      if (p.candidates[static_cast<int64_t>(b) * G + i]) {
        float acc = 0.f;
        for (int d = 0; d <= 2 * R; ++d) acc += w[d] * ext[i + d];
        score = acc / wsum * p.confidence[static_cast<int64_t>(b) * G + i];
      }
      p.scores[static_cast<int64_t>(b) * G + i] = score;
      key[s] = (static_cast<unsigned long long>(ordered_bits(score)) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
    }
  }
  if (kk == 0) return;

  int n = P;  // keys to sort in shared memory
  if (2 * kk > P) {  // top kk is most of the row: sort everything (padding keys are 0)
#pragma unroll
    for (int s = 0; s < kSlots; ++s)
      if (tid + s * kThreads < P) keys[tid + s * kThreads] = key[s];
    __syncthreads();
  } else {
    // Radix select of the kk-th largest key: prefix/mask are its known high bits, rank its
    // position (1-based) among the keys sharing them.  Stop once all keys sharing the prefix are
    // selected (rank == count); the top kk are then exactly the keys >= prefix.
    unsigned long long prefix = 0ull, mask = 0ull;
    int rank = kk;
    for (int pass = 0, shift = 56; shift >= 0; ++pass, shift -= 8) {
      int* h = hist[pass & 1];
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        if (s * kThreads >= G) break;  // block-uniform
        const bool live = tid + s * kThreads < G && (key[s] & mask) == prefix;
        const int digit = live ? static_cast<int>((key[s] >> shift) & 255u) : -1;
        const unsigned peers = __match_any_sync(0xFFFFFFFFu, digit);
        if (live && lane == __ffs(peers) - 1) atomicAdd(&h[digit], __popc(peers));
      }
      __syncthreads();
      if (tid < 32) {  // warp 0: find the digit holding rank, counting from digit 255 down
        int c[8], sum = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          c[j] = h[255 - 8 * lane - j];
          sum += c[j];
        }
        int incl = sum;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const int v = __shfl_up_sync(0xFFFFFFFFu, incl, o);
          if (lane >= o) incl += v;
        }
        int before = incl - sum;
        if (before < rank && rank <= incl) {
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            if (rank <= before + c[j]) {
              s_digit = 255 - 8 * lane - j;
              s_rank = rank - before;
              s_count = c[j];
              break;
            }
            before += c[j];
          }
        }
        for (int j = lane; j < 256; j += 32) hist[(pass + 1) & 1][j] = 0;  // next pass's bins
      }
      __syncthreads();
      prefix |= static_cast<unsigned long long>(s_digit) << shift;
      mask |= 255ull << shift;
      rank = s_rank;
      if (rank == s_count) break;  // block-uniform
    }
    // Gather the kk keys >= prefix (any order), warp-aggregated slots.
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      if (s * kThreads >= G) break;
      const bool take = tid + s * kThreads < G && key[s] >= prefix;
      const unsigned ballot = __ballot_sync(0xFFFFFFFFu, take);
      int base = 0;
      if (lane == 0 && ballot) base = atomicAdd(&s_taken, __popc(ballot));
      base = __shfl_sync(0xFFFFFFFFu, base, 0);
      if (take) keys[base + __popc(ballot & ((1u << lane) - 1u))] = key[s];
    }
    n = 1;
    while (n < kk) n <<= 1;
    if (n <= 32) {  // one warp, keys in registers
      __syncthreads();
      if (tid < 32) {
        unsigned long long v = lane < kk ? keys[lane] : 0ull;
#pragma unroll
        for (int k = 2; k <= 32; k <<= 1) {
#pragma unroll
          for (int j = k >> 1; j > 0; j >>= 1) {
            const unsigned long long o = __shfl_xor_sync(0xFFFFFFFFu, v, j);
            const bool keep_max = ((lane & k) == 0) == ((lane & j) == 0);
            v = keep_max ? (v > o ? v : o) : (v < o ? v : o);
          }
        }
        if (lane < kk) p.top[static_cast<int64_t>(b) * kk + lane] = 0xFFFFFFFFu - static_cast<uint32_t>(v & 0xFFFFFFFFull);
      }
      return;
    }
    for (int j = kk + tid; j < n; j += blockDim.x) keys[j] = 0ull;
    __syncthreads();
  }
  block_bitonic_desc(keys, n);
  for (int j = tid; j < kk; j += blockDim.x)
    p.top[static_cast<int64_t>(b) * kk + j] = 0xFFFFFFFFu - static_cast<uint32_t>(keys[j] & 0xFFFFFFFFull);
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
