// CPU kernels of dllm_core::rms_norm and dllm_core::add_rms_norm (semantics: dllm_core/ops/rms_norm.py).
//
// One task per row.  The roundings follow the reference step by step: the residual sum rounded to the
// dtype, squares rounded to float32, mean = sum / N then + eps in float32 (torch's CPU mean divides),
// rstd = 1 / sqrt (torch's CPU rsqrt), x * rstd cast to the dtype, then weight * that in the dtype.
// Only the summation order of the squares differs from torch's cascade sum; a double accumulator
// keeps the float32 mean within rounding of the exact one, which is what the reference approximates.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../check.h"

#include <cmath>
#include <tuple>

namespace dllm_core {
namespace {

void check_norm_args(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  DLLM_CHECK(x.dim() >= 1, op, ": x must have at least one dimension");
  DLLM_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), op, ": weight must be (", x.size(-1),
              ",), got ", weight.sizes());
  DLLM_CHECK(weight.scalar_type() == x.scalar_type(), op, ": x and weight must share one dtype");
  DLLM_CHECK(x.device().is_cpu() && weight.device().is_cpu(), op, ": expected CPU tensors");
}

// src: rows to normalise (contiguous); when `delta` is given, src + delta is rounded into `sum` first.
template <typename scalar_t>
void norm_rows(const scalar_t* src, const scalar_t* delta, scalar_t* sum, const scalar_t* w, scalar_t* out,
               int64_t rows, int64_t N, float eps) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* x = src + r * N;
      if (delta != nullptr) {
        scalar_t* s = sum + r * N;
        const scalar_t* d = delta + r * N;
        for (int64_t i = 0; i < N; ++i) s[i] = static_cast<scalar_t>(static_cast<float>(x[i]) + static_cast<float>(d[i]));
        x = s;
      }
      double acc = 0.0;
      for (int64_t i = 0; i < N; ++i) {
        const float v = static_cast<float>(x[i]);
        const float sq = v * v;
        acc += static_cast<double>(sq);
      }
      const float mean = static_cast<float>(acc) / static_cast<float>(N);
      const float rstd = 1.0f / std::sqrt(mean + eps);
      scalar_t* o = out + r * N;
      for (int64_t i = 0; i < N; ++i) {
        const scalar_t normed = static_cast<scalar_t>(static_cast<float>(x[i]) * rstd);
        o[i] = static_cast<scalar_t>(static_cast<float>(w[i]) * static_cast<float>(normed));
      }
    }
  });
}

at::Tensor rms_norm_cpu(const at::Tensor& x_in, const at::Tensor& weight_in, double eps) {
  check_norm_args("rms_norm", x_in, weight_in);
  const auto x = x_in.contiguous(), weight = weight_in.contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t N = x.size(-1), rows = N == 0 ? 0 : x.numel() / N;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm_cpu", [&] {
    norm_rows<scalar_t>(x.data_ptr<scalar_t>(), nullptr, nullptr, weight.data_ptr<scalar_t>(),
                        out.data_ptr<scalar_t>(), rows, N, static_cast<float>(eps));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm_cpu(const at::Tensor& x_in, const at::Tensor& delta_in,
                                                    const at::Tensor& weight_in, double eps) {
  check_norm_args("add_rms_norm", x_in, weight_in);
  DLLM_CHECK(delta_in.sizes() == x_in.sizes() && delta_in.scalar_type() == x_in.scalar_type() &&
                  delta_in.device().is_cpu(),
              "add_rms_norm: delta must be a CPU tensor of x's shape and dtype");
  const auto x = x_in.contiguous(), delta = delta_in.contiguous(), weight = weight_in.contiguous();
  auto sum = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t N = x.size(-1), rows = N == 0 ? 0 : x.numel() / N;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add_rms_norm_cpu", [&] {
    norm_rows<scalar_t>(x.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), sum.data_ptr<scalar_t>(),
                        weight.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), rows, N, static_cast<float>(eps));
  });
  return {sum, out};
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm_core, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("add_rms_norm", &add_rms_norm_cpu);
}

}  // namespace dllm_core
