// CPU kernel of dllm_core::argmax_confidence (semantics: dllm_core/ops/argmax_confidence.py).
//
// Per row, in float32 read straight from the logits' dtype (no float32 copy of the logits): one pass
// for the maximum and its first index (NaN counts as the maximum, like torch.argmax), a second for
// sum exp(l - max) in float32 chunks.  Rows whose maximum is not finite get NaN, as the reference's formula does.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../check.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace dllm_core {
namespace {

// Rows of (..., V) logits as (outer, inner) pairs with element strides, so that slices such as
// logits[:, :r] of a graph's static buffer need no copy.  Leading dims beyond two are flattened
// (a view when the strides allow it).
struct RowLayout {
  at::Tensor t;  // last dim contiguous
  int64_t outer, inner, s_outer, s_inner;
};

RowLayout row_layout(const at::Tensor& logits) {
  at::Tensor t = logits.stride(-1) == 1 ? logits : logits.contiguous();
  if (t.dim() > 3) t = t.flatten(0, -3);
  if (t.dim() == 1) return {t, 1, 1, 0, 0};
  if (t.dim() == 2) return {t, 1, t.size(0), 0, t.stride(0)};
  return {t, t.size(0), t.size(1), t.stride(0), t.stride(1)};
}

template <typename scalar_t>
void argmax_confidence_rows(const RowLayout& lay, int64_t V, int64_t exclude, int64_t* tok, float* prob) {
  const scalar_t* base = lay.t.data_ptr<scalar_t>();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  at::parallel_for(0, lay.outer * lay.inner, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* x = base + (r / lay.inner) * lay.s_outer + (r % lay.inner) * lay.s_inner;
      auto value = [&](int64_t j) {
        return j == exclude ? -std::numeric_limits<float>::infinity() : static_cast<float>(x[j]);
      };
      float best = value(0);
      int64_t arg = 0;
      for (int64_t j = 1; j < V && !std::isnan(best); ++j) {
        const float l = value(j);
        if (l > best || std::isnan(l)) {
          best = l;
          arg = j;
        }
      }
      tok[r] = arg;
      if (!std::isfinite(best)) {  // NaN, or a max of +-inf: exp(inf - inf) is NaN in the reference
        prob[r] = nan;
        continue;
      }
      // float32 terms and partial sums over chunks of kChunk, chunk totals added in double: a
      // single running float sum over ~1e5 terms would drift by ~1e-5 relative.
      constexpr int64_t kChunk = 1024;
      double total = 0.0;
      for (int64_t c = 0; c < V; c += kChunk) {
        float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        const int64_t stop = std::min(V, c + kChunk);
        for (int64_t j = c; j < stop; ++j) acc[j % 8] += std::exp(value(j) - best);
        total += static_cast<double>(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])));
      }
      prob[r] = 1.f / static_cast<float>(total);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> argmax_confidence_cpu(const at::Tensor& logits, int64_t exclude) {
  DLLM_CHECK(logits.dim() >= 1 && logits.size(-1) > 0, "argmax_confidence: logits must be (..., V) with V >= 1");
  const auto dt = logits.scalar_type();
  DLLM_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "argmax_confidence: logits must be float32, float16 or bfloat16, got ", dt);
  DLLM_CHECK(logits.device().is_cpu(), "argmax_confidence: expected a CPU tensor");
  const int64_t V = logits.size(-1);
  DLLM_CHECK(exclude < V, "argmax_confidence: exclude=", exclude, " is not a vocabulary id (V=", V,
              "); pass -1 for none");
  const auto lead = logits.sizes().slice(0, logits.dim() - 1);
  auto token = at::empty(lead, logits.options().dtype(at::kLong));
  auto prob = at::empty(lead, logits.options().dtype(at::kFloat));
  if (token.numel() == 0) return {token, prob};
  const RowLayout lay = row_layout(logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "argmax_confidence_cpu", [&] {
    argmax_confidence_rows<scalar_t>(lay, V, exclude, token.data_ptr<int64_t>(), prob.data_ptr<float>());
  });
  return {token, prob};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm_core, CPU, m) { m.impl("argmax_confidence", &argmax_confidence_cpu); }

}  // namespace dllm_core
