// CPU kernel of dllm_core::rope: the query RoPE (semantics: dllm_core/ops/rope.py apply_rope).
//
// The angles and the rotation are those of the key RoPE in csrc/cpu/kv_cache_update.cpp, line for
// line (inv_freq = 1 / theta^(2i/D) with pow in double rounded to float, angle = float(pos) *
// inv_freq, float32 rotate-half), so queries and cached keys are rotated bit-identically.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../check.h"
#include "rope_math.h"

#include <cmath>
#include <vector>

namespace dllm_core {
namespace {

at::Tensor rope_cpu(const at::Tensor& x, const at::Tensor& positions_in, double theta) {
  DLLM_CHECK(x.dim() == 4, "rope: x must be (B, n, H, D), got ", x.sizes());
  DLLM_CHECK(x.size(3) % 2 == 0, "rope: head_dim must be even for rotate-half RoPE");
  DLLM_CHECK(positions_in.dim() == 2 && positions_in.size(0) == x.size(0) && positions_in.size(1) == x.size(1),
              "rope: positions must be (B, n) = (", x.size(0), ", ", x.size(1), "), got ", positions_in.sizes());
  DLLM_CHECK(positions_in.scalar_type() == at::kLong, "rope: positions must be int64");
  DLLM_CHECK(x.device().is_cpu() && positions_in.device().is_cpu(), "rope: expected CPU tensors");
  const int64_t B = x.size(0), n = x.size(1), H = x.size(2), D = x.size(3), half = D / 2;
  auto out = at::empty({B, n, H, D}, x.options());
  if (out.numel() == 0) return out;
  const auto positions = positions_in.contiguous();
  const auto inv_freq = rope_inv_freq(D, theta);
  const auto xs = x.strides();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rope_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t* pp = positions.data_ptr<int64_t>();
    at::parallel_for(0, B * n, 16, [&](int64_t begin, int64_t end) {
      std::vector<float> cs(half), sn(half);
      for (int64_t br = begin; br < end; ++br) {
        const int64_t b = br / n, r = br % n;
        rope_cos_sin(pp[br], inv_freq, cs, sn);
        for (int64_t h = 0; h < H; ++h)
          rope_rotate_head(xp + b * xs[0] + r * xs[1] + h * xs[2], xs[3], op + (br * H + h) * D, 1, cs, sn);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm_core, CPU, m) { m.impl("rope", &rope_cpu); }

}  // namespace dllm_core
