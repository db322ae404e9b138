// Split merge of the partial_attention main pass (flash-decoding), shared by the combine kernel
// (partial_attention.cu) and the stored-scores probability pass (partial_attention_scores.cu).
#pragma once

#include "attention_tiles.cuh"

namespace dllm_core {
namespace cuda {

// A split main pass leaves, per split s and (batch, head, row) bhr of the B * H * n rows, the running
// max m and sum l of its keys' exp2 scores (part_ml) and the unnormalised output (part_o).
// combine_chunk loads kSplitChunk splits' partials at once before using any: a loop with one dependent
// load per split pays an L2 round trip per split.
constexpr int kSplitChunk = 8;

// Four output columns d..d+3 of row bhr, merged and rounded to T (l == 0, every key masked: NaN, as the
// reference's softmax gives); returns the row's log2-sum-exp (-inf when l == 0).
template <typename T, int D>
__device__ __forceinline__ float combine_chunk(const AttentionParams& p, int splits, int64_t rows, int64_t bhr, int d) {
  float m = -INFINITY, l = 0.f, acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int s0 = 0; s0 < splits; s0 += kSplitChunk) {
    float2 ml[kSplitChunk];
    float4 po[kSplitChunk];
#pragma unroll
    for (int j = 0; j < kSplitChunk; ++j) {
      const bool ok = s0 + j < splits;
      const int64_t part = (s0 + j) * rows + bhr;
      ml[j] = ok ? *reinterpret_cast<const float2*>(p.part_ml + part * 2) : make_float2(-INFINITY, 0.f);
      po[j] = ok ? *reinterpret_cast<const float4*>(p.part_o + part * D + d) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    float m_new = m;
#pragma unroll
    for (int j = 0; j < kSplitChunk; ++j) m_new = fmaxf(m_new, ml[j].x);
    if (m_new == -INFINITY) continue;  // no attendable key so far
    const float alpha = exp2f(m - m_new);  // 0 when m = -inf
    l *= alpha, acc[0] *= alpha, acc[1] *= alpha, acc[2] *= alpha, acc[3] *= alpha;
#pragma unroll
    for (int j = 0; j < kSplitChunk; ++j) {
      const float w = ml[j].x == -INFINITY ? 0.f : exp2f(ml[j].x - m_new);  // an empty split weighs nothing
      l += w * ml[j].y;
      acc[0] += w * po[j].x, acc[1] += w * po[j].y, acc[2] += w * po[j].z, acc[3] += w * po[j].w;
    }
    m = m_new;
  }
  const int64_t row = bhr % p.n, h = (bhr / p.n) % p.H, b = bhr / (static_cast<int64_t>(p.n) * p.H);
  T* out = static_cast<T*>(p.out) + ((b * p.n + row) * p.H + h) * D + d;
  const float inv = 1.f / l;
  *reinterpret_cast<uint2*>(out) = make_uint2(pack2<T>(acc[0] * inv, acc[1] * inv), pack2<T>(acc[2] * inv, acc[3] * inv));
  return l > 0.f ? m + log2f(l) : -INFINITY;
}

}  // namespace cuda
}  // namespace dllm_core
