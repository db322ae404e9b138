// CUDA kernel of dllm_core::argmax_confidence (semantics: dllm_core/ops/argmax_confidence.py).
//
// One block per logits row, one pass over it in the logits' dtype: each thread keeps an online
// (max, first index of the max, sum of exp(l - max)) over its elements, rescaling the sum when
// the max grows, with 16-byte loads (a scalar head up to the first 16-byte boundary and a scalar
// tail, so any V and row offset work); then a warp-shuffle and shared-memory reduction of those
// triples.  Float32 throughout.  Ties go to the lowest index and NaN counts as the maximum (the
// rules of torch.argmax); -inf logits (and `exclude`) add nothing to the sum; a row whose maximum
// is not finite gets NaN, as the reference's formula does.

#include "device_utils.cuh"
#include "launchers.h"

namespace dllm_core {
namespace cuda {
namespace {

// 4 blocks of 512 threads per SM (<= 32 registers, full occupancy): the 16 x 32 rows of a batch-16
// step run in one wave on an H100, with 2048 x 2 16-byte loads in flight per SM.
constexpr int kThreads = 512, kMinBlocks = 4;
constexpr int kUnroll = 2;  // 16-byte loads issued per thread before any is consumed (4 spills registers)

// A partial reduction: max, the lowest index holding it (-1: no element seen), sum exp(l - m).
struct MaxSum {
  float m;
  float s;
  int idx;
};

// Whether (a, ia) ranks before (b, ib) under torch.argmax's order.
__device__ __forceinline__ bool ranks_first(float a, int ia, float b, int ib) {
  const bool na = isnan(a), nb = isnan(b);
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

// Adds element l at index i; a thread's indices arrive in increasing order, so "strictly larger"
// keeps the lowest index of the max.
__device__ __forceinline__ void push(MaxSum& st, float l, int i) {
  if (isnan(st.m)) return;  // the first NaN is the answer and the sum is NaN already
  if (isnan(l)) {
    st = {l, l, i};
  } else if (l > st.m) {
    st.s = st.s * __expf(st.m - l) + 1.f;  // exp(-inf) = 0 clears the empty sum
    st.m = l;
    st.idx = i;
  } else if (l > -INFINITY) {
    st.s += __expf(l - st.m);
  } else if (st.idx < 0) {
    st.idx = i;  // a row of -inf only: torch.argmax answers its first index
  }
}

__device__ __forceinline__ MaxSum combine(const MaxSum& a, const MaxSum& b) {
  if (b.idx < 0) return a;
  if (a.idx < 0) return b;
  const bool a_first = ranks_first(a.m, a.idx, b.m, b.idx);
  const MaxSum& w = a_first ? a : b;
  const MaxSum& o = a_first ? b : a;
  MaxSum r = w;
  if (o.m > -INFINITY) r.s = w.s + o.s * __expf(o.m - w.m);  // an all -inf part adds nothing
  return r;
}

__device__ __forceinline__ MaxSum warp_reduce(MaxSum a) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    MaxSum b;
    b.m = __shfl_down_sync(0xffffffffu, a.m, off);
    b.s = __shfl_down_sync(0xffffffffu, a.s, off);
    b.idx = __shfl_down_sync(0xffffffffu, a.idx, off);
    a = combine(a, b);  // lanes reading past 31 get garbage, which lane 0 never reads
  }
  return a;
}

// Element k of a 16-byte vector of T as float (k is a constant once the loops are unrolled, so the
// vector stays in registers).
__device__ __forceinline__ uint32_t word(const int4& v, int w) {
  return static_cast<uint32_t>(w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w);
}
template <typename T> __device__ __forceinline__ float unpack(const int4& v, int k);
template <> __device__ __forceinline__ float unpack<float>(const int4& v, int k) { return __uint_as_float(word(v, k)); }
template <> __device__ __forceinline__ float unpack<__nv_bfloat16>(const int4& v, int k) {
  const uint32_t w = word(v, k / 2);  // little-endian: element 2i is the low half
  return __uint_as_float(k % 2 ? (w & 0xffff0000u) : (w << 16));
}
template <> __device__ __forceinline__ float unpack<__half>(const int4& v, int k) {
  const uint32_t w = word(v, k / 2);
  return __half2float(__ushort_as_half(static_cast<unsigned short>(k % 2 ? (w >> 16) : (w & 0xffffu))));
}

template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks) argmax_confidence_kernel(ArgmaxConfidenceParams p) {
  constexpr int VEC = 16 / sizeof(T);
  const int r = blockIdx.x, V = p.V, ex = p.exclude;
  const T* x = static_cast<const T*>(p.logits) + static_cast<int64_t>(r / p.inner) * p.s_outer +
               static_cast<int64_t>(r % p.inner) * p.s_inner;
  auto value = [ex](float v, int j) { return j == ex ? -INFINITY : v; };
  MaxSum st{-INFINITY, 0.f, -1};

  // Scalar head up to the first 16-byte boundary, then 16-byte vectors, then the scalar tail:
  // each thread's indices increase throughout.
  const int mis = static_cast<int>((reinterpret_cast<uintptr_t>(x) % 16) / sizeof(T));
  const int head = mis == 0 ? 0 : min(V, VEC - mis);
  if (static_cast<int>(threadIdx.x) < head) push(st, value(to_float(x[threadIdx.x]), threadIdx.x), threadIdx.x);
  const int nvec = (V - head) / VEC;
  const int4* xv = reinterpret_cast<const int4*>(x + head);
  for (int v0 = threadIdx.x; v0 < nvec; v0 += kThreads * kUnroll) {
    int4 buf[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int vi = v0 + u * kThreads;
      if (vi < nvec) buf[u] = __ldg(xv + vi);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int vi = v0 + u * kThreads;
      if (vi < nvec) {
        const int j0 = head + vi * VEC;
#pragma unroll
        for (int k = 0; k < VEC; ++k) push(st, value(unpack<T>(buf[u], k), j0 + k), j0 + k);
      }
    }
  }
  for (int j = head + nvec * VEC + threadIdx.x; j < V; j += kThreads) push(st, value(to_float(x[j]), j), j);

  __shared__ float sm[kThreads / 32], ss[kThreads / 32];
  __shared__ int si[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  st = warp_reduce(st);
  if (lane == 0) {
    sm[warp] = st.m;
    ss[warp] = st.s;
    si[warp] = st.idx;
  }
  __syncthreads();
  if (warp == 0) {
    st = lane < kThreads / 32 ? MaxSum{sm[lane], ss[lane], si[lane]} : MaxSum{-INFINITY, 0.f, -1};
    st = warp_reduce(st);
    if (lane == 0) {
      p.token[r] = st.idx;
      p.prob[r] = isfinite(st.m) ? 1.f / st.s : __int_as_float(0x7fc00000);  // NaN, as exp(inf - inf)
    }
  }
}

}  // namespace

cudaError_t launch_argmax_confidence(const ArgmaxConfidenceParams& p, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.outer) * p.inner;
  if (rows == 0) return cudaSuccess;
  if (p.V <= 0 || rows > 0x7fffffff) return cudaErrorInvalidValue;
  return with_element_type(p.dtype, [&](auto t) {
    argmax_confidence_kernel<decltype(t)><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace dllm_core
