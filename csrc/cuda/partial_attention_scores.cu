// Stored-scores pass of dllm_core::partial_attention as a kernel of its own (plan.probs_scores 1 or 2): the
// split merge and the head-mean probabilities from what the main pass stored (attention_scores.cuh),
// launched after the main pass as its programmatic dependent.  One warp per item.

#include "attention_scores.cuh"

namespace dllm_core {
namespace cuda {
namespace {

constexpr int kScoreThreads = 128, kScoreWarps = kScoreThreads / 32;

template <typename T, int D, bool HALF>
__global__ void __launch_bounds__(kScoreThreads) attn_scores_kernel(AttentionParams p, int splits) {
  __shared__ float table[kScoreWarps][kScoreMaxHeads];  // per-warp head lse / factors
  pdl_wait();  // everything read here is the main pass's output
  const int warp = threadIdx.x >> 5;
  scores_finish<T, D, HALF>(p, splits, static_cast<int64_t>(blockIdx.x) * kScoreWarps + warp,
                            static_cast<int64_t>(gridDim.x) * kScoreWarps, table[warp]);
}

template <typename T, int D>
cudaError_t launch_scores_typed(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  if (p.H > kScoreMaxHeads || p.scores == nullptr || p.scores_ld % 128 != 0 ||
      (plan.probs_scores == 2 && p.score_max == nullptr) || p.scores_ld < p.T)
    return cudaErrorInvalidValue;
  const bool half = plan.probs_scores == 2;
  const int64_t items = scores_combine_items<D>(p, plan.splits) +
                        (half ? scores_probs_items<true>(p) : scores_probs_items<false>(p));
  const int64_t blocks = (items + kScoreWarps - 1) / kScoreWarps;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  auto kernel = half ? attn_scores_kernel<T, D, true> : attn_scores_kernel<T, D, false>;
  return launch_chained(kernel, dim3(static_cast<unsigned>(blocks)), dim3(kScoreThreads), 0, stream,
                        plan.pdl == 1, p, plan.splits);
}

}  // namespace

cudaError_t launch_attention_scores_probs(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  return with_attention_types(p, [&](auto t, auto d) { return launch_scores_typed<decltype(t), decltype(d)::value>(p, plan, stream); });
}

}  // namespace cuda
}  // namespace dllm_core
