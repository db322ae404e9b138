// Interface between the torch glue (cuda_ops.cpp, compiled by the host compiler against torch) and
// the CUDA kernels (*.cu, compiled by nvcc against the CUDA headers only, which keeps nvcc away
// from torch's headers: faster builds, and the kernels can be compile-checked without CUDA torch).
// Everything here is plain data: raw pointers, element strides, sizes.  Launchers return the launch's
// error code, which the glue turns into a Python exception.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dllm_core {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// ---- kv_cache_update -------------------------------------------------------------------------
struct KvUpdateParams {
  void* k_cache;          // (B, T, H, D), strides kc_s for (b, t, h), last dim contiguous
  void* v_cache;          // same shape, strides vc_s
  const void* k;          // (B, n, H, D) pre-RoPE keys, strides k_s for (b, row, h)
  const void* v;          // (B, n, H, D), strides v_s
  const int64_t* rows;    // (B, n) contiguous: cache rows to write
  const int64_t* positions;  // (B, n) contiguous: RoPE positions
  int64_t kc_s[3], vc_s[3], k_s[3], v_s[3];
  int B, n, T, H, D;
  float theta;
  DType dtype;
  int vec;  // elements per access: 16 bytes' worth when every pointer and stride allows it, else 1
};
cudaError_t launch_kv_cache_update(const KvUpdateParams& p, cudaStream_t stream);

// ---- partial_attention -----------------------------------------------------------------------
struct AttentionPlan {
  int splits;           // key-range splits of the main pass (flash-decoding); 1 = write out directly
  int tiles_per_split;  // 64-key tiles per split
  int row_blocks;       // probability pass: probs_rows-row blocks of the query rows
  int head_slices;      // probability pass: query-head slices summed with atomics (1 = plain stores)
  int rows;             // main pass: rows per block, 32 (2 warps x 16), 64 (4 x 16) or 128 (4 x 32)
  int probs_rows;       // probability pass: query rows per block, 32 (2 warps) or 64 (4 warps)
  int probs_stages;     // probability pass: Q/K ring stages, 2 (one head in flight) or 3 (two)
  int stages;           // main pass: K/V tiles in the shared-memory ring, 2 (double buffer) or 3; 3 (128-key stages) with mma = 1
  int mma;              // main pass: 0 mma.sync (the row tiles above), 1 wgmma (sm_90a, 128 rows, warp-specialised, fixed 3-stage ring)
  int pdl;              // 1: the combine and probability kernels are launched as programmatic dependents (pdl.cuh)
  int probs_key_halves; // probability pass: 1 = two warps per 16-row slab, each taking 32 of the tile's 64 keys
  int probs_scores;     // 1 / 2: the main pass stores its float32 scores / float16 exponentials and one
                        // streaming pass merges the splits and sums the probabilities from them
                        // (attention_scores.cuh) instead of the combine + recomputing probability pass (0)
  int l2_hints;         // bits: 1 = the main pass copies K/V evict-first (read once); 2 = the stored-scores pass
                        // discards the scratch lines it has read (no write-back of dead data); 4 = the main pass
                        // stores the scores evict-last (kept in L2 for the streaming pass)
  int tma;              // 1: the wgmma main pass copies K/V tiles with the bulk tensor copy engine (tma.cuh), where
                        // K and V's strides allow (else cp.async, as with 0); 0 with mma = 0
};
struct AttentionParams {
  const void* q;          // (B, n, H, D), strides q_s for (b, row, h), last dim contiguous
  const void* k;          // (B, T, Hkv, D), strides k_s
  const void* v;          // (B, T, Hkv, D), strides v_s
  const bool* mask;       // (B, T), row stride mask_s0, column stride 1
  void* out;              // (B, n, H, D) contiguous, q's dtype
  float* probs;           // (B, n, T) contiguous float32, or null; zeroed by the main pass when zero_probs
  float* lse;             // (B, H, n) log2-sum-exp of the scaled scores; needed when probs != null
  float* part_o;          // (splits, B, H, n, D) partial accumulators when splits > 1
  float* part_ml;         // (splits, B, H, n, 2) partial (max, sum) when splits > 1
  void* scores;           // plan.probs_scores, (B, H, n, scores_ld) written by the main pass, else null; scores_ld =
                          // T rounded up to 128.  Mode 1: float32 scaled log2-domain scores s (-inf where masked);
                          // mode 2: float16 exponentials exp2(s - m), m the row's running max after the key's
                          // 64-key chunk (score_max)
  float* score_max;       // mode 2: (B, H, n, scores_ld / 64) float32 m per 64-key chunk (-inf: no attendable key
                          // yet); else null
  int64_t scores_ld;
  int64_t q_s[3], k_s[3], v_s[3], mask_s0;
  int B, n, H, Hkv, T, D;
  float scale;
  DType dtype;
  int zero_probs;         // 1: the main pass zeroes probs (the probability pass adds head slices with atomics)
  int l2_hints;           // plan.l2_hints
};
bool attention_supported(DType dtype, int head_dim);  // bf16/fp16 with D in {64, 128}
AttentionPlan plan_attention(int B, int n, int H, int Hkv, int T, int D, bool probs, int device);
cudaError_t launch_partial_attention(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream);

// ---- certainty_density_topk ------------------------------------------------------------------
struct DensityParams {
  const bool* known;       // (B, G) contiguous
  const float* confidence; // (B, G) contiguous float32
  const bool* candidates;  // (B, G) contiguous
  float* scores;           // (B, G) float32 out
  int64_t* top;            // (B, kk) int64 out, kk = min(k, G)
  int B, G, kk, radius;
  float two_sigma_sq;  // (float)(2 sigma^2), rounded once on the host as the reference does
};
int density_max_columns();  // the largest G one block can sort in shared memory
int density_max_radius();
cudaError_t launch_certainty_density_topk(const DensityParams& p, cudaStream_t stream);

// ---- argmax_confidence -----------------------------------------------------------------------
struct ArgmaxConfidenceParams {
  const void* logits;      // rows (o, i) at o * s_outer + i * s_inner elements, each V contiguous elements
  int64_t* token;          // (outer * inner) int64 out
  float* prob;             // (outer * inner) float32 out
  int64_t s_outer, s_inner;
  int outer, inner, V;
  int exclude;             // vocabulary id read as -inf; < 0: none
  DType dtype;
};
cudaError_t launch_argmax_confidence(const ArgmaxConfidenceParams& p, cudaStream_t stream);

// ---- fused per-layer element-wise ops (rms_norm / add_rms_norm, silu_mul, rope) --------------
struct RmsNormParams {
  const void* x;       // (rows, N) contiguous
  const void* delta;   // (rows, N) contiguous for add_rms_norm; null for rms_norm
  const void* weight;  // (N,) contiguous
  void* sum;           // (rows, N) contiguous: x + delta rounded to the dtype (add_rms_norm only)
  void* out;           // (rows, N) contiguous
  int64_t rows;
  int N;
  float eps;
  DType dtype;
  int vec;  // elements per access: 16 bytes' worth when N and every pointer allow it, else 1
};
cudaError_t launch_rms_norm(const RmsNormParams& p, cudaStream_t stream);

struct SiluMulParams {
  const void* gate_up;  // (rows, 2I) contiguous: [gate | up]
  void* out;            // (rows, I) contiguous
  int64_t rows;
  int I;
  DType dtype;
  int vec;  // as above
};
cudaError_t launch_silu_mul(const SiluMulParams& p, cudaStream_t stream);

struct RopeParams {
  const void* x;             // (B, n, H, D), strides x_s for (b, row, h), last dim contiguous
  void* out;                 // (B, n, H, D) contiguous
  const int64_t* positions;  // (B, n) contiguous
  int64_t x_s[3];
  int B, n, H, D;
  float theta;
  DType dtype;
  int vec;  // as above (D / 2 must be a multiple of it)
};
cudaError_t launch_rope(const RopeParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace dllm_core
