// CPU kernel of dllm_core::kv_cache_update: RoPE on K fused with the row scatter into the caches.
//
// Semantics: dllm_core/ops/kv_cache_update.py.  Angles follow dllm_core/ops/rope.py step by step in
// float32 (inv_freq = 1 / theta^(2i/D), angle = float(pos) * inv_freq) so that keys match the
// reference to float32 rounding; rotate-half (GPT-NeoX) layout.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../check.h"
#include "rope_math.h"

#include <cmath>
#include <vector>

namespace dllm_core {
namespace {

template <typename scalar_t>
void update_rows(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k,
                 const at::Tensor& v, const at::Tensor& rows, const at::Tensor& positions,
                 const std::vector<float>& inv_freq) {
  const int64_t B = k.size(0), n = k.size(1), H = k.size(2), D = k.size(3), half = D / 2;
  // The caches are written in place, so they keep their strides; new rows were made contiguous.
  scalar_t* kc = k_cache.data_ptr<scalar_t>();
  scalar_t* vc = v_cache.data_ptr<scalar_t>();
  const auto ks = k_cache.strides(), vs = v_cache.strides();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  const int64_t* rp = rows.data_ptr<int64_t>();
  const int64_t* pp = positions.data_ptr<int64_t>();

  at::parallel_for(0, B * n, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> cs(half), sn(half);
    for (int64_t br = begin; br < end; ++br) {
      const int64_t b = br / n, t = rp[br];
      rope_cos_sin(pp[br], inv_freq, cs, sn);
      for (int64_t h = 0; h < H; ++h) {
        const scalar_t* y = vp + (br * H + h) * D;
        scalar_t* vo = vc + b * vs[0] + t * vs[1] + h * vs[2];
        rope_rotate_head(kp + (br * H + h) * D, 1, kc + b * ks[0] + t * ks[1] + h * ks[2], ks[3], cs, sn);
        for (int64_t d = 0; d < D; ++d) vo[d * vs[3]] = y[d];
      }
    }
  });
}

void kv_cache_update_cpu(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k,
                         const at::Tensor& v, const at::Tensor& rows, const at::Tensor& positions,
                         double theta) {
  DLLM_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes(),
              "kv_cache_update: k_cache and v_cache must both be (B, T, Hkv, D)");
  DLLM_CHECK(k.dim() == 4 && k.sizes() == v.sizes(), "kv_cache_update: k and v must both be (B, q, Hkv, D)");
  const int64_t B = k_cache.size(0), T = k_cache.size(1);
  DLLM_CHECK(k.size(0) == B && k.size(2) == k_cache.size(2) && k.size(3) == k_cache.size(3),
              "kv_cache_update: k (B, q, Hkv, D) does not match the cache's (B, T, Hkv, D)");
  DLLM_CHECK(k.size(3) % 2 == 0, "kv_cache_update: head_dim must be even for rotate-half RoPE");
  DLLM_CHECK(rows.dim() == 2 && rows.size(0) == B && rows.size(1) == k.size(1) && rows.sizes() == positions.sizes(),
              "kv_cache_update: rows and positions must be (B, q)");
  DLLM_CHECK(rows.scalar_type() == at::kLong && positions.scalar_type() == at::kLong,
              "kv_cache_update: rows and positions must be int64");
  DLLM_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == v_cache.scalar_type() &&
                  k.scalar_type() == v.scalar_type(),
              "kv_cache_update: k, v and both caches must share one dtype");
  for (const auto* t : {&k_cache, &v_cache, &k, &v, &rows, &positions})
    DLLM_CHECK(t->device().is_cpu(), "kv_cache_update: expected CPU tensors");
  if (rows.numel() == 0) return;
  const auto rc = rows.contiguous(), pc = positions.contiguous();
  // The reference's scatter_ rejects out-of-range rows; so do we, before writing anything.
  DLLM_CHECK(rc.min().item<int64_t>() >= 0 && rc.max().item<int64_t>() < T,
              "kv_cache_update: rows out of range [0, ", T, ")");
  const auto inv_freq = rope_inv_freq(k.size(3), theta);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, k.scalar_type(), "kv_cache_update_cpu", [&] {
    update_rows<scalar_t>(k_cache, v_cache, k.contiguous(), v.contiguous(), rc, pc, inv_freq);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm_core, CPU, m) { m.impl("kv_cache_update", &kv_cache_update_cpu); }

}  // namespace dllm_core
