// CPU kernel of dllm_core::silu_mul (semantics: dllm_core/ops/silu_mul.py).
//
// out = silu(gate) * up with the reference's two roundings: silu computed in float32 as
// x / (1 + exp(-x)) and cast to the dtype, then the product of two dtype values cast again.
// torch's own CPU silu uses a vectorised exp in its main loop, which may differ from std::exp in
// the last float32 bit, so results can differ from the reference by one unit in the last place.

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

at::Tensor silu_mul_cpu(const at::Tensor& gate_up_in) {
  DLLM_CHECK(gate_up_in.dim() >= 1 && gate_up_in.size(-1) % 2 == 0,
              "silu_mul: gate_up must be (..., 2I) with an even last dim, got ", gate_up_in.sizes());
  DLLM_CHECK(gate_up_in.device().is_cpu(), "silu_mul: expected a CPU tensor");
  const auto gu = gate_up_in.contiguous();
  const int64_t I = gu.size(-1) / 2, rows = I == 0 ? 0 : gu.numel() / (2 * I);
  std::vector<int64_t> shape(gu.sizes().begin(), gu.sizes().end());
  shape.back() = I;
  auto out = at::empty(shape, gu.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gu.scalar_type(), "silu_mul_cpu", [&] {
    const scalar_t* src = gu.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(I, 1)), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* gate = src + r * 2 * I;
        const scalar_t* up = gate + I;
        scalar_t* o = dst + r * I;
        for (int64_t i = 0; i < I; ++i) {
          const float g = static_cast<float>(gate[i]);
          const scalar_t act = static_cast<scalar_t>(g / (1.0f + std::exp(-g)));
          o[i] = static_cast<scalar_t>(static_cast<float>(act) * static_cast<float>(up[i]));
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm_core, CPU, m) { m.impl("silu_mul", &silu_mul_cpu); }

}  // namespace dllm_core
