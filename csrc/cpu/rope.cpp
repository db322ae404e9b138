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

#include <cmath>
#include <vector>

namespace dllm_core {
namespace {

// Must stay identical to rope_inv_freq in kv_cache_update.cpp.
std::vector<float> query_inv_freq(int64_t D, double theta) {
  std::vector<float> inv(D / 2);
  const double base = static_cast<double>(static_cast<float>(theta));
  for (int64_t i = 0; i < D / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(D);
    inv[i] = 1.0f / static_cast<float>(std::pow(base, static_cast<double>(e)));
  }
  return inv;
}

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
  const auto inv_freq = query_inv_freq(D, theta);
  const auto xs = x.strides();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rope_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t* pp = positions.data_ptr<int64_t>();
    at::parallel_for(0, B * n, 16, [&](int64_t begin, int64_t end) {
      std::vector<float> cs(half), sn(half);
      for (int64_t br = begin; br < end; ++br) {
        const int64_t b = br / n, r = br % n;
        const float pos = static_cast<float>(pp[br]);
        for (int64_t i = 0; i < half; ++i) {
          const float angle = pos * inv_freq[i];
          cs[i] = std::cos(angle);
          sn[i] = std::sin(angle);
        }
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* xi = xp + b * xs[0] + r * xs[1] + h * xs[2];
          scalar_t* o = op + (br * H + h) * D;
          for (int64_t i = 0; i < half; ++i) {
            const float x1 = static_cast<float>(xi[i * xs[3]]), x2 = static_cast<float>(xi[(i + half) * xs[3]]);
            o[i] = static_cast<scalar_t>(x1 * cs[i] - x2 * sn[i]);
            o[i + half] = static_cast<scalar_t>(x2 * cs[i] + x1 * sn[i]);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm_core, CPU, m) { m.impl("rope", &rope_cpu); }

}  // namespace dllm_core
