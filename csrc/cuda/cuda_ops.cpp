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
  const auto plan = dc::plan_attention(B, n, H, Hkv, T, D, return_probs, q.get_device());
  // With head slices the probability pass adds into probs with atomics: the main pass zeroes it.
  at::Tensor probs = return_probs ? at::empty({B, n, T}, f32) : at::empty({0}, f32);
  at::Tensor lse = return_probs ? at::empty({B, H, n}, f32) : at::Tensor();
  // Stored-scores modes: float32 scores (1) or float16 exponentials and float32 64-key-chunk maxima (2), rows
  // padded to 128 keys (aligned loads, and the main pass's tiles never pass the end of a row).
  const int64_t scores_ld = (T + 127) / 128 * 128;
  const int stored = return_probs ? plan.probs_scores : 0;
  at::Tensor scores = stored ? at::empty({B, H, n, scores_ld}, stored == 2 ? q.options().dtype(at::kHalf) : f32)
                             : at::Tensor();
  at::Tensor score_max = stored == 2 ? at::empty({B, H, n, scores_ld / 64}, f32) : at::Tensor();
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
  p.scores = stored ? scores.data_ptr() : nullptr;
  p.score_max = stored == 2 ? score_max.data_ptr<float>() : nullptr;
  p.scores_ld = scores_ld;
  copy_strides(p.q_s, q);
  copy_strides(p.k_s, k);
  copy_strides(p.v_s, v);
  p.mask_s0 = mask.stride(0);
  p.B = B, p.n = n, p.H = H, p.Hkv = Hkv, p.T = T, p.D = D;
  p.scale = static_cast<float>(scale);
  p.dtype = dtype;
  p.zero_probs = return_probs && plan.probs_scores == 0 && plan.head_slices > 1 ? 1 : 0;
  p.l2_hints = plan.l2_hints;
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

// ---- fused per-layer element-wise ops (rms_norm / add_rms_norm, silu_mul, rope) --------------
namespace dllm_core {
namespace {

namespace dc = dllm_core::cuda;

// 16-byte accesses need every pointer 16-byte aligned and rows of whole vectors.
bool ptrs_aligned(std::initializer_list<const at::Tensor*> ts) {
  for (const auto* t : ts)
    if (reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 != 0) return false;
  return true;
}

void check_norm_args_cuda(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  DLLM_CHECK(x.dim() >= 1, op, ": x must have at least one dimension");
  DLLM_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), op, ": weight must be (", x.size(-1), ",), got ",
              weight.sizes());
  DLLM_CHECK(weight.scalar_type() == x.scalar_type(), op, ": x and weight must share one dtype");
  DLLM_CHECK(x.size(-1) <= INT32_MAX, op, ": the last dim is too large");
}

std::tuple<at::Tensor, at::Tensor> norm_cuda(const char* op, const at::Tensor& x_in, const at::Tensor* delta_in,
                                             const at::Tensor& weight_in, double eps) {
  check_norm_args_cuda(op, x_in, weight_in);
  if (delta_in != nullptr) {
    DLLM_CHECK(delta_in->sizes() == x_in.sizes() && delta_in->scalar_type() == x_in.scalar_type(), op,
                ": delta must have x's shape and dtype");
    check_cuda(op, {&x_in, delta_in, &weight_in});
  } else {
    check_cuda(op, {&x_in, &weight_in});
  }
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous(), weight = weight_in.contiguous();
  const auto delta = delta_in != nullptr ? delta_in->contiguous() : at::Tensor();
  auto out = at::empty(x.sizes(), x.options());
  auto sum = delta_in != nullptr ? at::empty(x.sizes(), x.options()) : at::Tensor();
  dc::RmsNormParams p{};
  p.x = x.data_ptr();
  p.delta = delta_in != nullptr ? delta.data_ptr() : nullptr;
  p.weight = weight.data_ptr();
  p.sum = delta_in != nullptr ? sum.data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.N = static_cast<int>(x.size(-1));
  p.rows = p.N == 0 ? 0 : x.numel() / p.N;
  p.eps = static_cast<float>(eps);
  p.dtype = to_dtype(x.scalar_type());
  const int64_t vec = 16 / x.element_size();
  bool wide = p.N % vec == 0 && ptrs_aligned({&x, &weight, &out});
  if (delta_in != nullptr) wide = wide && ptrs_aligned({&delta, &sum});
  p.vec = wide ? static_cast<int>(vec) : 1;
  check_launch(dc::launch_rms_norm(p, c10::cuda::getCurrentCUDAStream().stream()), op);
  return {sum, out};
}

at::Tensor rms_norm_cuda(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return std::get<1>(norm_cuda("rms_norm", x, nullptr, weight, eps));
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm_cuda(const at::Tensor& x, const at::Tensor& delta,
                                                     const at::Tensor& weight, double eps) {
  return norm_cuda("add_rms_norm", x, &delta, weight, eps);
}

at::Tensor silu_mul_cuda(const at::Tensor& gate_up_in) {
  const char* op = "silu_mul";
  DLLM_CHECK(gate_up_in.dim() >= 1 && gate_up_in.size(-1) % 2 == 0, op,
              ": gate_up must be (..., 2I) with an even last dim, got ", gate_up_in.sizes());
  check_cuda(op, {&gate_up_in});
  const c10::cuda::CUDAGuard guard(gate_up_in.device());
  const auto gu = gate_up_in.contiguous();
  auto shape = gu.sizes().vec();
  shape.back() /= 2;
  auto out = at::empty(shape, gu.options());
  dc::SiluMulParams p{};
  p.gate_up = gu.data_ptr();
  p.out = out.data_ptr();
  p.I = static_cast<int>(shape.back());
  p.rows = p.I == 0 ? 0 : out.numel() / p.I;
  p.dtype = to_dtype(gu.scalar_type());
  const int64_t vec = 16 / gu.element_size();
  p.vec = p.I % vec == 0 && ptrs_aligned({&gu, &out}) ? static_cast<int>(vec) : 1;
  check_launch(dc::launch_silu_mul(p, c10::cuda::getCurrentCUDAStream().stream()), op);
  return out;
}

at::Tensor rope_cuda(const at::Tensor& x_in, const at::Tensor& positions_in, double theta) {
  const char* op = "rope";
  DLLM_CHECK(x_in.dim() == 4, op, ": x must be (B, n, H, D), got ", x_in.sizes());
  DLLM_CHECK(x_in.size(3) % 2 == 0, op, ": head_dim must be even for rotate-half RoPE");
  DLLM_CHECK(positions_in.dim() == 2 && positions_in.size(0) == x_in.size(0) && positions_in.size(1) == x_in.size(1),
              op, ": positions must be (B, n) = (", x_in.size(0), ", ", x_in.size(1), "), got ", positions_in.sizes());
  DLLM_CHECK(positions_in.scalar_type() == at::kLong, op, ": positions must be int64");
  check_cuda(op, {&x_in, &positions_in});
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.stride(3) == 1 ? x_in : x_in.contiguous();
  const auto positions = positions_in.contiguous();
  auto out = at::empty(x.sizes(), x.options());
  dc::RopeParams p{};
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  p.positions = positions.data_ptr<int64_t>();
  copy_strides(p.x_s, x);
  p.B = x.size(0), p.n = x.size(1), p.H = x.size(2), p.D = x.size(3);
  p.theta = static_cast<float>(theta);
  p.dtype = to_dtype(x.scalar_type());
  const int64_t vec = 16 / x.element_size();
  p.vec = (p.D / 2) % vec == 0 && vec_aligned(x, vec) && vec_aligned(out, vec) ? static_cast<int>(vec) : 1;
  check_launch(dc::launch_rope(p, c10::cuda::getCurrentCUDAStream().stream()), op);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm_core, CUDA, m) {
  m.impl("rms_norm", &rms_norm_cuda);
  m.impl("add_rms_norm", &add_rms_norm_cuda);
  m.impl("silu_mul", &silu_mul_cuda);
  m.impl("rope", &rope_cuda);
}

}  // namespace dllm_core
