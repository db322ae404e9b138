// CPU kernel of dllm_core::partial_attention (semantics: dllm_core/ops/partial_attention.py).
//
// One task per batch row: its queries are scored against the whole cache with one batched BLAS
// matmul over the kv heads (float32 scores (H, q, T) of this batch row only, so nothing of size
// (B, H, q, T) ever exists), masked, soft-maxed in float32 and multiplied by V; the head mean goes
// straight into the (B, q, T) probability row when asked.  An earlier scalar online-softmax loop
// was 2-30x slower than the reference's einsum at every size we tried (measured on 1 thread:
// benchmarks/results/cpu_attention_2026-11-23.txt), which is why the work goes through BLAS.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../check.h"

#include <limits>
#include <tuple>

namespace dllm_core {
namespace {

// Attention of batch b's rows: one batched matmul over the kv heads, each kv head's group of query
// heads stacked as rows.  Writes out[b] and, when defined, the head mean into probs[b].
void attend_batch(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& mask,
                  double scale, int64_t b, at::Tensor& out, at::Tensor& probs) {
  const int64_t n = q.size(1), H = q.size(2), D = q.size(3), Hkv = kc.size(2), group = H / Hkv;
  // (n, H, D) -> (Hkv, group * n, D): rows of one kv head's query heads, head-major
  const auto qb = q[b].reshape({n, Hkv, group, D}).permute({1, 2, 0, 3}).reshape({Hkv, group * n, D})
                      .to(at::kFloat);
  const auto k = kc[b].permute({1, 0, 2}).to(at::kFloat);  // (Hkv, T, D)
  const auto v = vc[b].permute({1, 0, 2}).to(at::kFloat);
  auto s = at::matmul(qb, k.transpose(1, 2)).mul_(scale);  // (Hkv, group * n, T)
  s.masked_fill_(mask[b].logical_not(), -std::numeric_limits<float>::infinity());
  const auto p = at::softmax(s, -1);  // a row with every key masked is NaN, as in the reference
  // (Hkv, group * n, D) -> (n, H, D)
  out[b].copy_(at::matmul(p, v).reshape({Hkv, group, n, D}).permute({2, 0, 1, 3}).reshape({n, H, D}));
  if (probs.defined()) {
    auto row = probs[b];
    at::mean_out(row, p.reshape({H, n, -1}), {0});
  }
}

void attention_cpu(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& mask,
                   double scale, at::Tensor& out, at::Tensor& probs) {
  const int64_t B = q.size(0);
  // Batches are independent (each owns its probability row): spread them over threads when there
  // are enough; otherwise keep the BLAS calls themselves multi-threaded.
  if (B >= at::get_num_threads()) {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) attend_batch(q, kc, vc, mask, scale, b, out, probs);
    });
  } else {
    for (int64_t b = 0; b < B; ++b) attend_batch(q, kc, vc, mask, scale, b, out, probs);
  }
}

std::tuple<at::Tensor, at::Tensor> partial_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache,
                                                         const at::Tensor& v_cache, const at::Tensor& key_mask,
                                                         double scale, bool return_probs) {
  DLLM_CHECK(q.dim() == 4 && k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes(),
              "partial_attention: expected q (B, q, H, D) and caches (B, T, Hkv, D)");
  const int64_t B = q.size(0), n = q.size(1), H = q.size(2), D = q.size(3), T = k_cache.size(1);
  DLLM_CHECK(k_cache.size(0) == B && k_cache.size(3) == D && k_cache.size(2) > 0 && H % k_cache.size(2) == 0,
              "partial_attention: caches must be (B, T, Hkv, D) with H % Hkv == 0");
  DLLM_CHECK(key_mask.dim() == 2 && key_mask.size(0) == B && key_mask.size(1) == T &&
                  key_mask.scalar_type() == at::kBool,
              "partial_attention: key_mask must be a (B, T) bool tensor");
  DLLM_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(),
              "partial_attention: q and the caches must share one dtype");
  for (const auto* t : {&q, &k_cache, &v_cache, &key_mask})
    DLLM_CHECK(t->device().is_cpu(), "partial_attention: expected CPU tensors");
  auto out = at::empty(q.sizes(), q.options());
  auto probs = return_probs ? at::empty({B, n, T}, q.options().dtype(at::kFloat))
                            : at::empty({0}, q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {out, probs};
  at::Tensor acc = return_probs ? probs : at::Tensor();
  // The kernel's own ATen calls must not record autograd history (inputs may require grad).
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  attention_cpu(q, k_cache, v_cache, key_mask, scale, out, acc);
  return {out, probs};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm_core, CPU, m) { m.impl("partial_attention", &partial_attention_cpu); }

}  // namespace dllm_core
