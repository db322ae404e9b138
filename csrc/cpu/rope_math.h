// The RoPE arithmetic of the CPU kernels, shared by kv_cache_update (keys) and rope (queries) so
// that both rotate bit-identically: NeoX rotate-half, float32 angles as the reference computes them.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace dllm_core {

// inv_freq[i] = 1 / theta^(2i / D), rounded like the float32 reference (pow rounded, then divided).
inline std::vector<float> rope_inv_freq(int64_t D, double theta) {
  std::vector<float> inv(D / 2);
  const double base = static_cast<double>(static_cast<float>(theta));
  for (int64_t i = 0; i < D / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(D);
    inv[i] = 1.0f / static_cast<float>(std::pow(base, static_cast<double>(e)));
  }
  return inv;
}

// cos / sin of angle = float(pos) * inv_freq[i], for the D/2 pairs of one position.
inline void rope_cos_sin(int64_t position, const std::vector<float>& inv_freq, std::vector<float>& cs,
                         std::vector<float>& sn) {
  const float pos = static_cast<float>(position);
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const float angle = pos * inv_freq[i];
    cs[i] = std::cos(angle);
    sn[i] = std::sin(angle);
  }
}

// One head: out[i] = x1 cos - x2 sin, out[i + half] = x2 cos + x1 sin (x1 = in[i], x2 = in[i + half]),
// in float32; element strides of the input and output heads given.
template <typename scalar_t>
inline void rope_rotate_head(const scalar_t* in, int64_t in_stride, scalar_t* out, int64_t out_stride,
                             const std::vector<float>& cs, const std::vector<float>& sn) {
  const int64_t half = static_cast<int64_t>(cs.size());
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = static_cast<float>(in[i * in_stride]), x2 = static_cast<float>(in[(i + half) * in_stride]);
    out[i * out_stride] = static_cast<scalar_t>(x1 * cs[i] - x2 * sn[i]);
    out[(i + half) * out_stride] = static_cast<scalar_t>(x2 * cs[i] + x1 * sn[i]);
  }
}

}  // namespace dllm_core
