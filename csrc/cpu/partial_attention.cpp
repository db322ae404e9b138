// CPU kernel of dllm_core::partial_attention (semantics: dllm_core/ops/partial_attention.py).
//
// Pass 1, one task per (batch, query row, head): online softmax over the unmasked keys in float32,
// keeping only a D-float accumulator, so nothing of size (B, H, q, T) is ever allocated.  It
// records each task's final max and sum.  Pass 2 (only when probabilities are requested), one
// task per (batch, query row): recompute the scores head by head, normalise them with the stored
// max/sum and accumulate the head mean straight into the (B, q, T) float32 output row.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../check.h"

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace dllm_core {
namespace {

template <typename scalar_t>
inline float dot(const float* q, const scalar_t* k, int64_t D) {
  float s = 0.f;
  for (int64_t d = 0; d < D; ++d) s += q[d] * static_cast<float>(k[d]);
  return s;
}

template <typename scalar_t>
void attention_cpu(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& mask,
                   float scale, at::Tensor& out, at::Tensor& probs, bool return_probs) {
  const int64_t B = q.size(0), n = q.size(1), H = q.size(2), D = q.size(3);
  const int64_t T = kc.size(1), Hkv = kc.size(2), group = H / Hkv;
  const scalar_t* qp = q.data_ptr<scalar_t>();  // contiguous (B, n, H, D)
  const scalar_t* kp = kc.data_ptr<scalar_t>();
  const scalar_t* vp = vc.data_ptr<scalar_t>();
  const auto ks = kc.strides(), vs = vc.strides();  // last stride is 1 (checked by the caller)
  const bool* mp = mask.data_ptr<bool>();           // contiguous (B, T)
  scalar_t* op = out.data_ptr<scalar_t>();
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  // Per-task softmax statistics, (B, n, H): the only state shared between the passes.
  std::vector<float> row_max(B * n * H), row_sum(B * n * H);

  at::parallel_for(0, B * n * H, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(D), acc(D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (n * H), h = task % H, g = h / group;
      for (int64_t d = 0; d < D; ++d) qf[d] = static_cast<float>(qp[task * D + d]) * scale;
      std::fill(acc.begin(), acc.end(), 0.f);
      float m = kNegInf, l = 0.f;
      for (int64_t t = 0; t < T; ++t) {
        if (!mp[b * T + t]) continue;
        const float s = dot(qf.data(), kp + b * ks[0] + t * ks[1] + g * ks[2], D);
        const scalar_t* vrow = vp + b * vs[0] + t * vs[1] + g * vs[2];
        if (s > m) {  // new maximum: rescale what was accumulated so far (exp(-inf) = 0 at first)
          const float a = std::exp(m - s);
          l = l * a + 1.f;
          for (int64_t d = 0; d < D; ++d) acc[d] = acc[d] * a + static_cast<float>(vrow[d]);
          m = s;
        } else {
          const float p = std::exp(s - m);
          l += p;
          for (int64_t d = 0; d < D; ++d) acc[d] += p * static_cast<float>(vrow[d]);
        }
      }
      // l == 0 (every key masked) gives 0/0 = NaN, as the reference's softmax over all -inf does.
      const float inv = 1.f / l;
      for (int64_t d = 0; d < D; ++d) op[task * D + d] = static_cast<scalar_t>(l > 0.f ? acc[d] * inv : NAN);
      row_max[task] = m;
      row_sum[task] = l;
    }
  });
  if (!return_probs) return;

  float* pp = probs.data_ptr<float>();  // contiguous (B, n, T)
  const float inv_heads = 1.f / static_cast<float>(H);
  at::parallel_for(0, B * n, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(D);
    for (int64_t br = begin; br < end; ++br) {
      const int64_t b = br / n;
      float* prow = pp + br * T;
      std::fill(prow, prow + T, 0.f);
      if (row_sum[br * H] == 0.f) {  // no key may be attended: the reference gives NaN
        std::fill(prow, prow + T, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      for (int64_t h = 0; h < H; ++h) {
        const int64_t g = h / group;
        for (int64_t d = 0; d < D; ++d) qf[d] = static_cast<float>(qp[(br * H + h) * D + d]) * scale;
        const float m = row_max[br * H + h], inv_l = 1.f / row_sum[br * H + h];
        for (int64_t t = 0; t < T; ++t) {
          if (!mp[b * T + t]) continue;
          const float s = dot(qf.data(), kp + b * ks[0] + t * ks[1] + g * ks[2], D);
          prow[t] += std::exp(s - m) * inv_l;
        }
      }
      for (int64_t t = 0; t < T; ++t) prow[t] *= inv_heads;
    }
  });
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
  // Keys and values are read row by row: the last dim must be contiguous, the rest may be strided.
  const auto kc = k_cache.stride(3) == 1 ? k_cache : k_cache.contiguous();
  const auto vc = v_cache.stride(3) == 1 ? v_cache : v_cache.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "partial_attention_cpu", [&] {
    attention_cpu<scalar_t>(q.contiguous(), kc, vc, key_mask.contiguous(), static_cast<float>(scale), out, probs,
                            return_probs);
  });
  return {out, probs};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm_core, CPU, m) { m.impl("partial_attention", &partial_attention_cpu); }

}  // namespace dllm_core
