// The RoPE arithmetic shared by the key rotation of kv_cache_update.cu and the query rotation of
// rope.cu, so that queries and cached keys rotate bit-identically (tests assert it).
//
// NeoX rotate-half: element i pairs with i + D/2.  Angles as the float32 reference computes them:
// inv_freq = 1 / theta^(2i/D) (pow in double, rounded to float), angle = float(pos) * inv_freq.
#pragma once

#include "device_utils.cuh"

namespace dllm_core {
namespace cuda {

// The row's D/2 (cos, sin) pairs into shared memory (cs[0, D/2) cos, sn[0, D/2) sin), computed
// by the block's threads; the caller synchronises before reading them.
__device__ __forceinline__ void rope_cos_sin(float pos, float theta, int D, float* cs, float* sn) {
  for (int i = threadIdx.x; i < D / 2; i += blockDim.x) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(D);
    const float inv_freq = 1.0f / static_cast<float>(pow(static_cast<double>(theta), static_cast<double>(e)));
    sincosf(pos * inv_freq, &sn[i], &cs[i]);
  }
}

// Rotates the H heads of one row (head h at in + h * in_h, written to out + h * out_h; the last
// dim contiguous), VEC elements of both halves per access, float32 math; block-stride loop.
template <typename T, int VEC>
__device__ __forceinline__ void rope_rotate_row(const T* in, int64_t in_h, T* out, int64_t out_h, int H,
                                                int D, const float* cs, const float* sn) {
  using V = Vec<T, VEC>;
  const int half = D / 2, kvecs = half / VEC;  // vectors per half head
  for (int item = threadIdx.x; item < H * kvecs; item += blockDim.x) {
    const int h = item / kvecs, i0 = (item % kvecs) * VEC;
    const V x1 = *reinterpret_cast<const V*>(in + h * in_h + i0);
    const V x2 = *reinterpret_cast<const V*>(in + h * in_h + i0 + half);
    V y1, y2;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float a = to_float(x1.v[j]), c = to_float(x2.v[j]);
      const float co = cs[i0 + j], si = sn[i0 + j];
      y1.v[j] = from_float<T>(a * co - c * si);
      y2.v[j] = from_float<T>(c * co + a * si);
    }
    *reinterpret_cast<V*>(out + h * out_h + i0) = y1;
    *reinterpret_cast<V*>(out + h * out_h + i0 + half) = y2;
  }
}

}  // namespace cuda
}  // namespace dllm_core
