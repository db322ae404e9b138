// Stored-scores modes of dllm_core::partial_attention: the work after a main pass that stored, per (batch,
// head, query row) and key (p.scores, (B, H, n, scores_ld)), either its scaled, masked log2-domain scores as
// float32 (plan.probs_scores == 1; probability = exp2(s - lse)) or its exponentials exp2(s - m) as float16
// with the running max m of every 64-key chunk (== 2, p.score_max; probability = exp2(s - m) exp2(m - lse):
// half the bytes, relative rounding 2^-11).
//
// The recomputing probability pass (partial_attention_probs.cu) redoes Q K^T on the tensor cores, one
// dependent chain of copies and MMAs per head; at batch 1 that chain, not memory, sets its time, and
// main -> combine -> probabilities costs a kernel boundary each.  Here the rest is independent loads:
//   - combine items: the split merge of a warp's rows (combine_chunk; 128 / D rows per warp);
//   - probability items: 32 (float32) or 64 (float16) keys of one (batch, query row) per warp, its lanes 4
//     head groups x 8 columns of 4 or 8 keys (one 16-byte load per head: a head group's loads of one head are
//     128 contiguous bytes; 8-byte float16 loads over 32 keys made the pass 40% of DRAM bandwidth at LLaDA-8B
//     batch 16, ncu).  Each lane sums the probabilities over its group's heads and the groups add up by
//     shuffles.  The row's per-head lse (or factor exp2(m - lse)) comes from a per-warp table that the warp
//     fills itself (lanes over heads: the split partials' log2-sum-exp merge), after it has issued its first
//     heads' loads, so the latencies overlap.
// Run by a kernel of its own after the main pass (partial_attention_scores.cu).  Running it inside the
// main pass after a grid-wide barrier (cooperative launch) was measured slower (docs/kernels.md).
#pragma once

#include <type_traits>

#include "attention_combine.cuh"

namespace dllm_core {
namespace cuda {

constexpr int kScoreMaxHeads = 256;  // per-warp lse / factor table (the plan checks H against it)
constexpr int kScoreHeadGroups = 4, kScoreColumnGroups = 32 / kScoreHeadGroups;
// Keys per lane and per item: one 16-byte load per head, 4 float32 scores or 8 float16 exponentials.
template <bool HALF>
constexpr int kScoreLaneKeys = HALF ? 8 : 4;
template <bool HALF>
constexpr int kScoreWarpKeys = kScoreLaneKeys<HALF> * kScoreColumnGroups;
constexpr int kScorePreload = 8;  // heads per lane whose values are loaded before the table (32 heads)

// Log2-sum-exp of (batch b, head h, query row row): merged from the split partials, or the main pass's own.
__device__ __forceinline__ float scores_row_lse(const AttentionParams& p, int splits, int b, int h, int row) {
  const int64_t bhr = (static_cast<int64_t>(b) * p.H + h) * p.n + row;
  if (splits == 1) return p.lse[bhr];
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.n;
  float m = -INFINITY, l = 0.f;
#pragma unroll 4
  for (int s = 0; s < splits; ++s) {
    const float2 ml = *reinterpret_cast<const float2*>(p.part_ml + (s * rows + bhr) * 2);
    if (ml.x == -INFINITY) continue;  // no attendable key in this split
    if (ml.x > m) {
      l = l * exp2f(m - ml.x) + ml.y;  // exp2f(-inf) = 0 for the first split
      m = ml.x;
    } else {
      l += ml.y * exp2f(ml.x - m);
    }
  }
  return l > 0.f ? m + log2f(l) : -INFINITY;
}

// Items of the work after the main pass: combine items first (none unsplit), then probability items.
template <int D>
__host__ __device__ __forceinline__ int64_t scores_combine_items(const AttentionParams& p, int splits) {
  constexpr int kRowsPerWarp = 128 / D;
  return splits > 1 ? (static_cast<int64_t>(p.B) * p.H * p.n + kRowsPerWarp - 1) / kRowsPerWarp : 0;
}
template <bool HALF>
__host__ __device__ __forceinline__ int64_t scores_probs_items(const AttentionParams& p) {
  return static_cast<int64_t>(p.B) * p.n * ((p.T + kScoreWarpKeys<HALF> - 1) / kScoreWarpKeys<HALF>);
}

// One probability item: kScoreWarpKeys keys of (batch, query row); table: this warp's kScoreMaxHeads floats.
// HALF (plan.probs_scores == 2): float16 exponentials, table = per-head factor exp2(m - lse) of the item's
// 64-key chunk; else float32 scores, table = per-head lse.
template <bool HALF>
__device__ __forceinline__ void scores_probs_item(const AttentionParams& p, int splits, int64_t item, float* table) {
  constexpr int KL = kScoreLaneKeys<HALF>, WK = kScoreWarpKeys<HALF>;
  using Elem = std::conditional_t<HALF, __half, float>;
  const int lane = threadIdx.x & 31;
  const int chunks = (p.T + WK - 1) / WK;
  const int chunk = static_cast<int>(item % chunks), row = static_cast<int>(item / chunks % p.n);
  const int b = static_cast<int>(item / chunks / p.n);
  const int hg = lane / kScoreColumnGroups, c = chunk * WK + (lane % kScoreColumnGroups) * KL;
  // Head h of this lane's group: stored values of (b, h, row) at keys c .. c + KL - 1 (scores_ld is a multiple
  // of 128: in bounds and 16-byte aligned even past T; those keys are not stored below).
  const Elem* sbase =
      static_cast<const Elem*>(p.scores) + (static_cast<int64_t>(b) * p.H * p.n + row) * p.scores_ld + c;
  const int64_t head_stride = static_cast<int64_t>(p.n) * p.scores_ld;
  auto load = [&](int h) { return *reinterpret_cast<const uint4*>(sbase + h * head_stride); };

  uint4 pre[kScorePreload];
#pragma unroll
  for (int i = 0; i < kScorePreload; ++i) {
    const int h = hg + kScoreHeadGroups * i;
    pre[i] = h < p.H ? load(h) : make_uint4(0u, 0u, 0u, 0u);
  }
  // A row with no attendable key has lse = -inf (and m = -inf): NaN below, as the reference.
  const int64_t max_ld = p.scores_ld / kBlockN, max_col = static_cast<int64_t>(chunk) * WK / kBlockN;
  for (int h = lane; h < p.H; h += 32) {
    const float lse = scores_row_lse(p, splits, b, h, row);
    if constexpr (HALF)  // at most 1; 0 for a chunk with no attendable key (m = -inf) in a row with some
      table[h] = exp2f(p.score_max[((static_cast<int64_t>(b) * p.H + h) * p.n + row) * max_ld + max_col] - lse);
    else
      table[h] = lse;
  }
  __syncwarp();

  float acc[KL];
#pragma unroll
  for (int k = 0; k < KL; ++k) acc[k] = 0.f;
  auto add = [&](const uint4& x, int h) {
    const float t = table[h];
    const uint32_t w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (HALF) {
        const float2 e = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
        acc[2 * i] += e.x * t, acc[2 * i + 1] += e.y * t;
      } else {
        acc[i] += fast_exp2(__uint_as_float(w[i]) - t);
      }
    }
  };
#pragma unroll
  for (int i = 0; i < kScorePreload; ++i) {
    const int h = hg + kScoreHeadGroups * i;
    if (h < p.H) add(pre[i], h);
  }
#pragma unroll 8
  for (int h = hg + kScoreHeadGroups * kScorePreload; h < p.H; h += kScoreHeadGroups) add(load(h), h);
  __syncwarp();  // the table is rewritten by the warp's next item; every lane's loads have returned
  if ((p.l2_hints & 2) != 0 && lane % kScoreColumnGroups == 0) {
    // The group's 8 lanes read one 128-byte line per head (128-byte aligned: scores_ld is a multiple of 128
    // keys, the buffer 512-byte aligned), read by no one else: drop it instead of writing dead scratch back.
    for (int h = hg; h < p.H; h += kScoreHeadGroups) discard_l2_line(sbase + h * head_stride);
  }
  // Sum the head groups (lanes l, l + 8, l + 16, l + 24 share their keys).
#pragma unroll
  for (int k = 0; k < KL; ++k) {
    acc[k] += __shfl_xor_sync(0xffffffffu, acc[k], 8);
    acc[k] += __shfl_xor_sync(0xffffffffu, acc[k], 16);
  }
  if (hg != 0) return;
  const float inv_heads = 1.f / static_cast<float>(p.H);
  float* dst = p.probs + (static_cast<int64_t>(b) * p.n + row) * p.T + c;
#pragma unroll
  for (int k4 = 0; k4 < KL / 4; ++k4) {
    const int cc = c + 4 * k4;
    if (cc >= p.T) break;
    const float* a = acc + 4 * k4;
    if ((p.T & 3) == 0) {  // 16-byte aligned rows, and cc + 3 < T
      *reinterpret_cast<float4*>(dst + 4 * k4) = make_float4(a[0] * inv_heads, a[1] * inv_heads, a[2] * inv_heads,
                                                             a[3] * inv_heads);
    } else {
      for (int k = 0; k < 4 && cc + k < p.T; ++k) dst[4 * k4 + k] = a[k] * inv_heads;
    }
  }
}

// Warp `w` of `warps` (whole warps; every lane calls) takes items w, w + warps, ...
template <typename T, int D, bool HALF>
__device__ __forceinline__ void scores_finish(const AttentionParams& p, int splits, int64_t w, int64_t warps,
                                              float* table) {
  constexpr int kRowThreads = D / 4, kRowsPerWarp = 32 / kRowThreads;
  const int lane = threadIdx.x & 31;
  const int64_t combine = scores_combine_items<D>(p, splits), total = combine + scores_probs_items<HALF>(p);
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.n;
  for (int64_t item = w; item < total; item += warps) {
    if (item < combine) {
      const int64_t bhr = item * kRowsPerWarp + lane / kRowThreads;
      if (bhr < rows) combine_chunk<T, D>(p, splits, rows, bhr, (lane % kRowThreads) * 4);
    } else {
      scores_probs_item<HALF>(p, splits, item - combine, table);
    }
  }
}

}  // namespace cuda
}  // namespace dllm_core
