// CPU kernel of dllm_core::certainty_density_topk (semantics: dllm_core/ops/certainty_density.py).
//
// The density is the reference's truncated Gaussian stencil (R = ceil(5 sigma)) evaluated directly,
// with the same boundary rule: columns left of the region count as known, columns right of it
// count as known only when the last column is.  Top-k is a partial sort under the reference's
// order: score descending, ties (and the -inf of non-candidates, which complete short rows) by
// the lower column.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../check.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <tuple>
#include <vector>

namespace dllm_core {
namespace {

int64_t density_radius(double sigma) { return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(5.0 * sigma))); }

std::tuple<at::Tensor, at::Tensor> certainty_density_topk_cpu(const at::Tensor& known, const at::Tensor& confidence,
                                                              const at::Tensor& candidates, double sigma,
                                                              int64_t k) {
  DLLM_CHECK(known.dim() == 2 && known.sizes() == confidence.sizes() && known.sizes() == candidates.sizes(),
              "certainty_density_topk: known, confidence and candidates must all be (B, G)");
  DLLM_CHECK(known.scalar_type() == at::kBool && candidates.scalar_type() == at::kBool,
              "certainty_density_topk: known and candidates must be bool");
  DLLM_CHECK(at::isFloatingType(confidence.scalar_type()), "certainty_density_topk: confidence must be floating");
  DLLM_CHECK(sigma > 0.0 && k >= 0, "certainty_density_topk: needs sigma > 0 and k >= 0");
  for (const auto* t : {&known, &confidence, &candidates})
    DLLM_CHECK(t->device().is_cpu(), "certainty_density_topk: expected CPU tensors");
  const int64_t B = known.size(0), G = known.size(1), kk = std::min(k, G);
  auto scores = at::empty({B, G}, confidence.options().dtype(at::kFloat));
  auto top = at::empty({B, kk}, confidence.options().dtype(at::kLong));
  if (B == 0 || G == 0) return {scores, top};

  // Stencil weights exactly as the reference computes them in float32.
  const int64_t R = density_radius(sigma);
  const float denom = static_cast<float>(2.0 * sigma * sigma);  // rounded once, as the reference
  std::vector<float> w(2 * R + 1);
  float wsum = 0.f;
  for (int64_t d = -R; d <= R; ++d) {
    const float df = static_cast<float>(d);
    w[d + R] = std::exp(-(df * df) / denom);
    wsum += w[d + R];
  }
  const auto kn = known.contiguous(), cd = candidates.contiguous();
  const auto cf = confidence.to(at::kFloat).contiguous();
  const bool* kp = kn.data_ptr<bool>();
  const bool* cp = cd.data_ptr<bool>();
  const float* fp = cf.data_ptr<float>();
  float* sp = scores.data_ptr<float>();
  int64_t* tp = top.data_ptr<int64_t>();

  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> ext(G + 2 * R);
    std::vector<int64_t> order(G);
    for (int64_t b = begin; b < end; ++b) {
      const bool* kr = kp + b * G;
      // Extended row [R ones | known | R x known[G-1]], so the stencil needs no boundary tests.
      std::fill(ext.begin(), ext.begin() + R, 1.f);
      for (int64_t j = 0; j < G; ++j) ext[R + j] = kr[j] ? 1.f : 0.f;
      std::fill(ext.begin() + R + G, ext.end(), kr[G - 1] ? 1.f : 0.f);
      float* srow = sp + b * G;
      for (int64_t i = 0; i < G; ++i) {
        if (!cp[b * G + i]) {
          srow[i] = -std::numeric_limits<float>::infinity();
          continue;
        }
        float acc = 0.f;
        for (int64_t d = 0; d <= 2 * R; ++d) acc += w[d] * ext[i + d];
        srow[i] = acc / wsum * fp[b * G + i];
      }
      // torch.sort(descending, stable) order; NaN (a NaN confidence) sorts first, as in torch.
      std::iota(order.begin(), order.end(), int64_t{0});
      std::partial_sort(order.begin(), order.begin() + kk, order.end(), [srow](int64_t a, int64_t c) {
        const float sa = srow[a], sc = srow[c];
        const bool na = std::isnan(sa), nc = std::isnan(sc);
        if (na != nc) return na;
        if (!na && sa != sc) return sa > sc;
        return a < c;
      });
      std::copy(order.begin(), order.begin() + kk, tp + b * kk);
    }
  });
  return {scores, top};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm_core, CPU, m) { m.impl("certainty_density_topk", &certainty_density_topk_cpu); }

}  // namespace dllm_core
