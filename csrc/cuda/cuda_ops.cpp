// CUDA registrations of the dllm_core ops: input checks, layouts, workspaces and the stream, then
// the raw-pointer launchers of csrc/cuda/*.cu (declared in launchers.h).  Compiled by the host
// compiler against torch; only built when setup.py builds the CUDA extension.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../check.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <tuple>

#include "launchers.h"

namespace dllm_core {
namespace {

namespace dc = dllm_core::cuda;

dc::DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return dc::DType::kBFloat16;
    case at::kHalf: return dc::DType::kFloat16;
    case at::kFloat: return dc::DType::kFloat32;
    default: DLLM_CHECK(false, "dllm_core: unsupported dtype ", t, " (expected bfloat16, float16 or float32)");
  }
}

void check_cuda(const char* op, std::initializer_list<const at::Tensor*> ts) {
  const auto dev = (*ts.begin())->device();
  for (const auto* t : ts)
    DLLM_CHECK(t->is_cuda() && t->device() == dev, op, ": expected CUDA tensors on one device, got ", t->device());
}

// True when 16-byte vectors of `t` are aligned: data pointer and the strides of dims [0, 3).
bool vec_aligned(const at::Tensor& t, int64_t vec) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0 || t.stride(3) != 1) return false;
  for (int d = 0; d < 3; ++d)
    if (t.stride(d) % vec != 0) return false;
  return true;
}

void copy_strides(int64_t (&dst)[3], const at::Tensor& t) {
  for (int d = 0; d < 3; ++d) dst[d] = t.stride(d);
}

void check_launch(cudaError_t err, const char* op) {
  DLLM_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

void kv_cache_update_cuda(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k_in,
                          const at::Tensor& v_in, const at::Tensor& rows_in, const at::Tensor& positions_in,
                          double theta) {
  const char* op = "kv_cache_update";
  DLLM_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes(), op, ": caches must both be (B, T, Hkv, D)");
  DLLM_CHECK(k_in.dim() == 4 && k_in.sizes() == v_in.sizes(), op, ": k and v must both be (B, q, Hkv, D)");
  DLLM_CHECK(k_in.size(0) == k_cache.size(0) && k_in.size(2) == k_cache.size(2) && k_in.size(3) == k_cache.size(3),
              op, ": k (B, q, Hkv, D) does not match the cache's (B, T, Hkv, D)");
  DLLM_CHECK(k_in.size(3) % 2 == 0, op, ": head_dim must be even for rotate-half RoPE");
  DLLM_CHECK(rows_in.dim() == 2 && rows_in.size(0) == k_in.size(0) && rows_in.size(1) == k_in.size(1) &&
                  rows_in.sizes() == positions_in.sizes(),
              op, ": rows and positions must be (B, q)");
  DLLM_CHECK(rows_in.scalar_type() == at::kLong && positions_in.scalar_type() == at::kLong, op,
              ": rows and positions must be int64");
  DLLM_CHECK(k_in.scalar_type() == k_cache.scalar_type() && v_in.scalar_type() == v_cache.scalar_type() &&
                  k_in.scalar_type() == v_in.scalar_type(),
              op, ": k, v and both caches must share one dtype");
  DLLM_CHECK(k_cache.stride(3) == 1 && v_cache.stride(3) == 1, op, ": the caches' last dim must be contiguous");
  check_cuda(op, {&k_cache, &v_cache, &k_in, &v_in, &rows_in, &positions_in});
  const c10::cuda::CUDAGuard guard(k_cache.device());
  const auto k = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  const auto v = v_in.stride(3) == 1 ? v_in : v_in.contiguous();
  const auto rows = rows_in.contiguous(), positions = positions_in.contiguous();

  dc::KvUpdateParams p{};
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.rows = rows.data_ptr<int64_t>();
  p.positions = positions.data_ptr<int64_t>();
  copy_strides(p.kc_s, k_cache);
  copy_strides(p.vc_s, v_cache);
  copy_strides(p.k_s, k);
  copy_strides(p.v_s, v);
  p.B = k.size(0), p.n = k.size(1), p.T = k_cache.size(1), p.H = k.size(2), p.D = k.size(3);
  p.theta = static_cast<float>(theta);
  p.dtype = to_dtype(k.scalar_type());
  const int64_t vec = 16 / k.element_size();
  const bool wide = (p.D / 2) % vec == 0 && vec_aligned(k_cache, vec) && vec_aligned(v_cache, vec) &&
                    vec_aligned(k, vec) && vec_aligned(v, vec);
  p.vec = wide ? static_cast<int>(vec) : 1;
  check_launch(dc::launch_kv_cache_update(p, c10::cuda::getCurrentCUDAStream().stream()), op);
}

std::tuple<at::Tensor, at::Tensor> partial_attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                          const at::Tensor& v_in, const at::Tensor& mask_in,
                                                          double scale, bool return_probs) {
  const char* op = "partial_attention";
  DLLM_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && k_in.sizes() == v_in.sizes(), op,
              ": expected q (B, q, H, D) and caches (B, T, Hkv, D)");
  const int64_t B = q_in.size(0), n = q_in.size(1), H = q_in.size(2), D = q_in.size(3), T = k_in.size(1);
  const int64_t Hkv = k_in.size(2);
  DLLM_CHECK(k_in.size(0) == B && k_in.size(3) == D && Hkv > 0 && H % Hkv == 0, op,
              ": caches must be (B, T, Hkv, D) with H % Hkv == 0");
  DLLM_CHECK(mask_in.dim() == 2 && mask_in.size(0) == B && mask_in.size(1) == T && mask_in.scalar_type() == at::kBool,
              op, ": key_mask must be a (B, T) bool tensor");
  DLLM_CHECK(q_in.scalar_type() == k_in.scalar_type() && q_in.scalar_type() == v_in.scalar_type(), op,
              ": q and the caches must share one dtype");
  const auto dtype = to_dtype(q_in.scalar_type());
  DLLM_CHECK(dc::attention_supported(dtype, static_cast<int>(D)), op,
              ": the CUDA kernel takes bfloat16/float16 with head_dim 64 or 128 (got ", q_in.scalar_type(), ", ", D,
              "); dllm_core.ops.partial_attention uses the reference for other inputs");
  check_cuda(op, {&q_in, &k_in, &v_in, &mask_in});
  const c10::cuda::CUDAGuard guard(q_in.device());
  // cp.async moves 16-byte chunks: rows must start 16-byte aligned (normally true; else copy).
  const auto q = vec_aligned(q_in, 8) ? q_in : q_in.contiguous();
  const auto k = vec_aligned(k_in, 8) ? k_in : k_in.contiguous();
  const auto v = vec_aligned(v_in, 8) ? v_in : v_in.contiguous();
  const auto mask = mask_in.stride(1) == 1 ? mask_in : mask_in.contiguous();
  const auto f32 = q.options().dtype(at::kFloat);

  auto out = at::empty(q.sizes(), q.options());
  if (T == 0) {  // nothing to attend: the reference's empty softmax gives zeros
    out.zero_();
    return {out, return_probs ? at::empty({B, n, 0}, f32) : at::empty({0}, f32)};
  }
  const auto plan = dc::plan_attention(B, n, H, Hkv, T, return_probs, q.get_device());
  at::Tensor probs = !return_probs ? at::empty({0}, f32)
                     : plan.head_slices > 1 ? at::zeros({B, n, T}, f32) : at::empty({B, n, T}, f32);
  at::Tensor lse = return_probs ? at::empty({B, H, n}, f32) : at::Tensor();
  at::Tensor part_o, part_ml;
  if (plan.splits > 1) {
    part_o = at::empty({plan.splits, B, H, n, D}, f32);
    part_ml = at::empty({plan.splits, B, H, n, 2}, f32);
  }
  dc::AttentionParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.mask = mask.data_ptr<bool>();
  p.out = out.data_ptr();
  p.probs = return_probs ? probs.data_ptr<float>() : nullptr;
  p.lse = return_probs ? lse.data_ptr<float>() : nullptr;
  p.part_o = plan.splits > 1 ? part_o.data_ptr<float>() : nullptr;
  p.part_ml = plan.splits > 1 ? part_ml.data_ptr<float>() : nullptr;
  copy_strides(p.q_s, q);
  copy_strides(p.k_s, k);
  copy_strides(p.v_s, v);
  p.mask_s0 = mask.stride(0);
  p.B = B, p.n = n, p.H = H, p.Hkv = Hkv, p.T = T, p.D = D;
  p.scale = static_cast<float>(scale);
  p.dtype = dtype;
  check_launch(dc::launch_partial_attention(p, plan, c10::cuda::getCurrentCUDAStream().stream()), op);
  return {out, probs};
}

std::tuple<at::Tensor, at::Tensor> certainty_density_topk_cuda(const at::Tensor& known_in,
                                                               const at::Tensor& confidence_in,
                                                               const at::Tensor& candidates_in, double sigma,
                                                               int64_t k) {
  const char* op = "certainty_density_topk";
  DLLM_CHECK(known_in.dim() == 2 && known_in.sizes() == confidence_in.sizes() &&
                  known_in.sizes() == candidates_in.sizes(),
              op, ": known, confidence and candidates must all be (B, G)");
  DLLM_CHECK(known_in.scalar_type() == at::kBool && candidates_in.scalar_type() == at::kBool, op,
              ": known and candidates must be bool");
  DLLM_CHECK(at::isFloatingType(confidence_in.scalar_type()), op, ": confidence must be floating");
  DLLM_CHECK(sigma > 0.0 && k >= 0, op, ": needs sigma > 0 and k >= 0");
  check_cuda(op, {&known_in, &confidence_in, &candidates_in});
  const int64_t B = known_in.size(0), G = known_in.size(1), kk = std::min(k, G);
  const int64_t R = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(5.0 * sigma)));
  DLLM_CHECK(G <= dc::density_max_columns() && R <= dc::density_max_radius(), op, ": the CUDA kernel takes G <= ",
              dc::density_max_columns(), " and ceil(5 sigma) <= ", dc::density_max_radius(),
              "; dllm_core.ops.certainty_density_topk uses the reference beyond");
  const c10::cuda::CUDAGuard guard(known_in.device());
  const auto known = known_in.contiguous(), candidates = candidates_in.contiguous();
  const auto confidence = confidence_in.to(at::kFloat).contiguous();
  auto scores = at::empty({B, G}, confidence.options());
  auto top = at::empty({B, kk}, confidence.options().dtype(at::kLong));
  dc::DensityParams p{};
  p.known = known.data_ptr<bool>();
  p.confidence = confidence.data_ptr<float>();
  p.candidates = candidates.data_ptr<bool>();
  p.scores = scores.data_ptr<float>();
  p.top = top.data_ptr<int64_t>();
  p.B = B, p.G = G, p.kk = kk, p.radius = R;
  p.two_sigma_sq = static_cast<float>(2.0 * sigma * sigma);
  check_launch(dc::launch_certainty_density_topk(p, c10::cuda::getCurrentCUDAStream().stream()), op);
  return {scores, top};
}

std::tuple<at::Tensor, at::Tensor> argmax_confidence_cuda(const at::Tensor& logits_in, int64_t exclude) {
  const char* op = "argmax_confidence";
  DLLM_CHECK(logits_in.dim() >= 1 && logits_in.size(-1) > 0, op, ": logits must be (..., V) with V >= 1");
  const int64_t V = logits_in.size(-1);
  DLLM_CHECK(exclude < V, op, ": exclude=", exclude, " is not a vocabulary id (V=", V, "); pass -1 for none");
  DLLM_CHECK(V <= INT32_MAX, op, ": V=", V, " is too large");
  const auto dtype = to_dtype(logits_in.scalar_type());
  check_cuda(op, {&logits_in});
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto lead = logits_in.sizes().slice(0, logits_in.dim() - 1);
  auto token = at::empty(lead, logits_in.options().dtype(at::kLong));
  auto prob = at::empty(lead, logits_in.options().dtype(at::kFloat));
  if (token.numel() == 0) return {token, prob};
  DLLM_CHECK(token.numel() <= INT32_MAX, op, ": too many rows (", token.numel(), ")");
  // Rows as (outer, inner) with strides, so a slice such as logits[:, :r] needs no copy.
  at::Tensor logits = logits_in.stride(-1) == 1 ? logits_in : logits_in.contiguous();
  if (logits.dim() > 3) logits = logits.flatten(0, -3);
  dc::ArgmaxConfidenceParams p{};
  p.logits = logits.data_ptr();
  p.token = token.data_ptr<int64_t>();
  p.prob = prob.data_ptr<float>();
  if (logits.dim() == 1) {
    p.outer = 1, p.inner = 1, p.s_outer = 0, p.s_inner = 0;
  } else if (logits.dim() == 2) {
    p.outer = 1, p.inner = logits.size(0), p.s_outer = 0, p.s_inner = logits.stride(0);
  } else {
    p.outer = logits.size(0), p.inner = logits.size(1), p.s_outer = logits.stride(0), p.s_inner = logits.stride(1);
  }
  p.V = static_cast<int>(V);
  p.exclude = exclude < 0 ? -1 : static_cast<int>(exclude);
  p.dtype = dtype;
  check_launch(dc::launch_argmax_confidence(p, c10::cuda::getCurrentCUDAStream().stream()), op);
  return {token, prob};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm_core, CUDA, m) {
  m.impl("kv_cache_update", &kv_cache_update_cuda);
  m.impl("partial_attention", &partial_attention_cuda);
  m.impl("certainty_density_topk", &certainty_density_topk_cuda);
  m.impl("argmax_confidence", &argmax_confidence_cuda);
}

}  // namespace dllm_core
