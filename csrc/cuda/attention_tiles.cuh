// Shared-memory tile helpers of the partial_attention kernels (partial_attention.cu, the main pass;
// partial_attention_probs.cu, the probability pass).  Tiles are [rows][D] in XOR-swizzled shared
// memory; a warp owns 16-row slabs and works on them with ldmatrix + mma.sync m16n8k16.
#pragma once

#include <type_traits>

#include "device_utils.cuh"
#include "launchers.h"
#include "pdl.cuh"

namespace dllm_core {
namespace cuda {

constexpr int kBlockN = 64;  // keys per K/V tile (both passes)
constexpr float kLog2e = 1.4426950408889634f;

// Element offset of 16-byte chunk `c` of row `r` in a swizzled [rows][D] tile: XOR-ing the chunk
// with the row's low 3 bits puts the 8 rows an ldmatrix reads into 8 different bank groups.
template <int D>
__device__ __forceinline__ int swz(int r, int c) { return r * D + ((c ^ (r & 7)) << 3); }

// ROWS rows x D of a [T][..][D] tensor (row stride in elements) -> swizzled shared tile; rows at or
// past rows_valid are zero-filled.  THREADS threads cooperate: each copies one 16-byte column chunk
// of every RSTEP-th row, so the loop unrolls to cp.asyncs whose source advances by one stride and
// whose destination is one of P precomputed bases plus an immediate (the row's swizzle repeats
// every 8 rows: P = 1 for RSTEP a multiple of 8, else 8 / RSTEP) instead of per-copy index math.
// HINT: the copies carry L2 cache policy `policy` (l2_policy).
template <int D, int ROWS, int THREADS, bool HINT = false, typename T>
__device__ __forceinline__ void load_rows(T* s, const T* g, int64_t row_stride, int rows_valid, uint64_t policy = 0) {
  auto copy = [policy](uint32_t dst, const void* src, bool ok) {
    if constexpr (HINT) cp_async16(dst, src, ok, policy); else cp_async16(dst, src, ok);
  };
  constexpr int C = D / 8, RSTEP = THREADS / C, P = RSTEP % 8 == 0 ? 1 : 8 / RSTEP;
  static_assert(THREADS % C == 0 && ROWS % RSTEP == 0 && (RSTEP % 8 == 0 || 8 % RSTEP == 0), "copy split");
  const int c = threadIdx.x % C, r0 = threadIdx.x / C;
  uint32_t dst[P];
#pragma unroll
  for (int j = 0; j < P; ++j) dst[j] = smem_addr(s + swz<D>(r0 + j * RSTEP, c) - j * RSTEP * D);
  const T* src = g + r0 * row_stride + c * 8;
  if (rows_valid >= ROWS) {  // full tile (all but the last): no per-row predicate or pointer select
#pragma unroll
    for (int k = 0; k < ROWS / RSTEP; ++k, src += RSTEP * row_stride)
      copy(dst[k % P] + k * RSTEP * D * static_cast<int>(sizeof(T)), src, true);
  } else {
#pragma unroll
    for (int k = 0; k < ROWS / RSTEP; ++k, src += RSTEP * row_stride) {
      const bool ok = r0 + k * RSTEP < rows_valid;
      copy(dst[k % P] + k * RSTEP * D * static_cast<int>(sizeof(T)), ok ? src : g, ok);
    }
  }
}

// ROWS query rows of a group-packed Q tile: packed row m -> (query row m / group, head h0 + m % group).
template <int D, int ROWS, int THREADS, typename T>
__device__ __forceinline__ void load_q(T* s, const AttentionParams& p, int b, int h0, int m0, int M, int group) {
  constexpr int C = D / 8;
  const T* q = static_cast<const T*>(p.q);
  for (int i = threadIdx.x; i < ROWS * C; i += THREADS) {
    const int r = i / C, c = i % C, m = m0 + r;
    const bool ok = m < M;
    const T* src = q;
    if (ok) src = q + b * p.q_s[0] + (m / group) * p.q_s[1] + (h0 + m % group) * p.q_s[2] + c * 8;
    cp_async16(smem_addr(s + swz<D>(r, c)), src, ok);
  }
}

// Byte offset in a swizzled [rows][D] 16-bit tile of the chunk `lane` feeds to an ldmatrix.x4 at
// row r (r % 8 == lane % 8) and chunk 2 k + hi.  swz puts that chunk at ((2k + hi) ^ (r % 8)) =
// (hi ^ lane % 8) ^ 2k, so the chunk of k step k is this offset ^ (k << 5): the row part is a
// multiple of the 2D-byte row and the chunk part stays below it.  With the row moved by a multiple
// of 8 (key blocks, slabs) as an immediate, an address costs one XOR and one add per k step.
template <int D>
__device__ __forceinline__ uint32_t ldsm_offset(int r, int hi, int lane) {
  return static_cast<uint32_t>(r * D * 2 + ((hi ^ (lane & 7)) << 4));
}

// L2 policy of a main pass's K (is_k) or V copies (plan.l2_hints & 1): evict-first where the block is their only
// reader, except K when the recomputing probability pass (SCORES == 0 with probabilities) reads it again.
template <int SCORES>
__device__ __forceinline__ uint64_t kv_l2_policy(const AttentionParams& p, bool is_k) {
  return l2_policy((p.l2_hints & 1) != 0 && !(is_k && SCORES == 0 && p.probs != nullptr));
}

// A fragment of 16 rows starting at row0 (a multiple of 16) of a swizzled tile, k step kk (16 columns).
template <int D, typename T>
__device__ __forceinline__ void a_fragment(uint32_t (&a)[4], const T* s, int row0, int kk, int lane) {
  static_assert(sizeof(T) == 2, "16-bit tiles");
  ldmatrix_x4(smem_addr(s) + (ldsm_offset<D>(row0 + (lane & 15), lane >> 4, lane) ^ (kk << 5)), a[0], a[1], a[2],
              a[3]);
}

// Rows row0..row0+15 of a swizzled Q tile as m16n8k16 A fragments (one per 16-wide k step).
template <int D, typename T>
__device__ __forceinline__ void q_fragments(uint32_t (&qf)[D / 16][4], const T* sQ, int row0, int lane) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) a_fragment<D>(qf[kk], sQ, row0, kk, lane);
}

// B fragments of key blocks 2jp, 2jp+1 (8 keys each) of a swizzled K tile for k step kk.
template <int D, typename T>
__device__ __forceinline__ void k_fragments(uint32_t& b0, uint32_t& b1, uint32_t& b2, uint32_t& b3, const T* sK,
                                            int jp, int kk, int lane) {
  static_assert(sizeof(T) == 2, "16-bit tiles");
  const uint32_t off = ldsm_offset<D>(((lane >> 4) << 3) + (lane & 7), (lane >> 3) & 1, lane) ^ (kk << 5);
  ldmatrix_x4(smem_addr(sK) + jp * 16 * D * 2 + off, b0, b1, b2, b3);
}

// B fragments (transposed) of a swizzled V tile for P V: keys 16 kk .. 16 kk + 15, output columns
// 16 dp .. 16 dp + 15 (two 8-column blocks).
template <int D, typename T>
__device__ __forceinline__ void v_fragments(uint32_t& b0, uint32_t& b1, uint32_t& b2, uint32_t& b3, const T* sV,
                                            int kk, int dp, int lane) {
  static_assert(sizeof(T) == 2, "16-bit tiles");
  const uint32_t off = ldsm_offset<D>((((lane >> 3) & 1) << 3) + (lane & 7), lane >> 4, lane) ^ (dp << 5);
  ldmatrix_x4_trans(smem_addr(sV) + kk * 16 * D * 2 + off, b0, b1, b2, b3);
}

// s[j] (keys 8j..8j+7 of the tile, NB blocks) = Q K^T for 16 rows whose A fragments are in registers.
template <int D, int NB = 8, typename T>
__device__ __forceinline__ void qk_tile(float (&s)[NB][4], const uint32_t (&qf)[D / 16][4], const T* sK, int lane) {
  static_assert(NB % 2 == 0, "key blocks come in pairs");
#pragma unroll
  for (int j = 0; j < NB; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int jp = 0; jp < NB / 2; ++jp) {  // two 8-key column blocks per ldmatrix.x4
      uint32_t b0, b1, b2, b3;
      k_fragments<D>(b0, b1, b2, b3, sK, jp, kk, lane);
      mma16816<T>(s[2 * jp], qf[kk], b0, b1);
      mma16816<T>(s[2 * jp + 1], qf[kk], b2, b3);
    }
  }
}

// s[mt][j] = Q K^T for MT 16-row slabs (rows row0 + 16 mt ..) read from the shared Q tile per k
// step: every K fragment loaded from shared memory feeds MT MMAs (the point of MT > 1).
template <int D, int MT, typename T>
__device__ __forceinline__ void qk_tile_smem(float (&s)[MT][8][4], const T* sQ, int row0, const T* sK, int lane) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) a_fragment<D>(a[mt], sQ, row0 + 16 * mt, kk, lane);
#pragma unroll
    for (int jp = 0; jp < 4; ++jp) {
      uint32_t b0, b1, b2, b3;
      k_fragments<D>(b0, b1, b2, b3, sK, jp, kk, lane);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma16816<T>(s[mt][2 * jp], a[mt], b0, b1);
        mma16816<T>(s[mt][2 * jp + 1], a[mt], b2, b3);
      }
    }
  }
}

// Stored-scores modes (plan.probs_scores): writes this thread's part of a 16-row slab, in the m16n8k16
// accumulator layout that both main passes use: at(j, e) is column 8 j + 2 (lane % 4) + e % 2 of key block j
// (NB blocks from key t0, a multiple of 64) in packed row m + 8 (e / 2) (packed row -> query row m / group,
// head h0 + m % group; rows past M are not stored).  Keys at or past key_end are not stored (a wgmma tile may
// run into the next split).
// - HALF = false (mode 1): at() is the scaled, masked (-inf) log2-domain score, stored as float32.
// - HALF = true (mode 2): at() is the exponential exp2(s - m) the main pass just computed, in [0, 1], stored as
//   float16 (relative rounding 2^-11); one lane of each row's quad also writes that row's running max m
//   (m_run[e / 2]) into every 64-key chunk of the tile that starts before key_end.  Half the bytes of mode 1,
//   for calls where the stores and their reads are what the pass costs.
// Whole tiles' stores carry an evict-last L2 policy where the plan expects the values to stay in L2 until the
// streaming pass reads them (plan.l2_hints bit 4), else normal priority (as the tail's plain stores).
template <bool HALF, int NB, typename At>
__device__ __forceinline__ void store_scores(const AttentionParams& p, int b, int h0, int group, int m, int M, int t0,
                                             int key_end, int lane, const float (&m_run)[2], At at) {
  using Elem = std::conditional_t<HALF, __half, float>;
  auto pair = [](float x, float y) {
    if constexpr (HALF) return __floats2half2_rn(x, y); else return make_float2(x, y);
  };
  auto one = [](float x) {
    if constexpr (HALF) return __float2half_rn(x); else return x;
  };
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int mr = m + 8 * r;
    if (mr >= M) continue;
    const int c = t0 + 2 * (lane & 3);
    const int64_t bhr = (static_cast<int64_t>(b) * p.H + h0 + mr % group) * p.n + mr / group;
    Elem* dst = static_cast<Elem*>(p.scores) + bhr * p.scores_ld + c;
    if (t0 + 8 * NB <= key_end) {
      const uint64_t policy = l2_policy(false, (p.l2_hints & 4) != 0);  // evict-last: plan.l2_hints bit 4
#pragma unroll
      for (int j = 0; j < NB; ++j) store_with_policy(dst + 8 * j, pair(at(j, 2 * r), at(j, 2 * r + 1)), policy);
    } else {
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        if (c + 8 * j < key_end) dst[8 * j] = one(at(j, 2 * r));
        if (c + 8 * j + 1 < key_end) dst[8 * j + 1] = one(at(j, 2 * r + 1));
      }
    }
    if constexpr (HALF) {
      if ((lane & 3) == 0) {
        float* mx = p.score_max + bhr * (p.scores_ld / kBlockN) + t0 / kBlockN;
#pragma unroll
        for (int k = 0; k < NB / 8; ++k)
          if (t0 + kBlockN * k < key_end) mx[k] = m_run[r];
      }
    }
  }
}

// Block `block` of `blocks` zeroes its share of the (B, n, T) float32 probabilities when p.zero_probs
// (the probability pass adds its head slices into them with atomics): the main pass does it, where it
// costs a few stores per block, instead of a memset node ahead of it.  Shares are multiples of 4
// floats, so the float4 stores stay 16-byte aligned (probs is a fresh allocation).
__device__ __forceinline__ void zero_probs_share(const AttentionParams& p, int64_t block, int64_t blocks) {
  if (!p.zero_probs) return;
  const int64_t total = static_cast<int64_t>(p.B) * p.n * p.T;
  const int64_t per = ((total + blocks - 1) / blocks + 3) & ~int64_t{3};
  const int64_t begin = block * per, end = total < begin + per ? total : begin + per;
  for (int64_t i = begin + 4 * threadIdx.x; i < end; i += 4 * static_cast<int64_t>(blockDim.x)) {
    if (i + 4 <= end) {
      *reinterpret_cast<float4*>(p.probs + i) = make_float4(0.f, 0.f, 0.f, 0.f);
    } else {
      for (int64_t j = i; j < end; ++j) p.probs[j] = 0.f;
    }
  }
}

// Sets a chain kernel's dynamic shared memory and asks for the largest shared-memory carveout.  An SM's
// L1 / shared split is fixed while any block is resident on it; a split sized for the main pass alone can
// leave no room beside it for a dependent kernel's blocks (programmatic launch).  Measured on the H100:
// 7-10% faster with probabilities at LLaDA-8B batch 1 q=64 T=512, neutral elsewhere (docs/kernels.md).
// DLLM_CORE_ATTN_CARVEOUT=0 leaves the split to the driver (A/B benchmarks).
template <typename Kernel>
cudaError_t set_chain_smem(Kernel kernel, size_t smem) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const char* env = std::getenv("DLLM_CORE_ATTN_CARVEOUT");
  const bool max_shared = env == nullptr || std::strcmp(env, "0") != 0;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                              max_shared ? static_cast<int>(cudaSharedmemCarveoutMaxShared)
                                         : static_cast<int>(cudaSharedmemCarveoutDefault));
}

// Host side: returns f(T{}, std::integral_constant<int, D>{}) for the attention kernels' element type T
// (bfloat16 or float16) and head dim D (64 or 128) of p; cudaErrorInvalidValue for anything else.
template <typename F>
cudaError_t with_attention_types(const AttentionParams& p, F&& f) {
  using D64 = std::integral_constant<int, 64>;
  using D128 = std::integral_constant<int, 128>;
  if (p.dtype != DType::kBFloat16 && p.dtype != DType::kFloat16) return cudaErrorInvalidValue;
  const bool bf16 = p.dtype == DType::kBFloat16;
  if (p.D == 128) return bf16 ? f(__nv_bfloat16{}, D128{}) : f(__half{}, D128{});
  if (p.D == 64) return bf16 ? f(__nv_bfloat16{}, D64{}) : f(__half{}, D64{});
  return cudaErrorInvalidValue;
}

// Probability pass (partial_attention_probs.cu); plan.probs_rows picks its row-tile variant.
cudaError_t launch_attention_probs(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream);

// Stored-scores probability pass with the split merge (partial_attention_scores.cu), plan.probs_scores 1 or 2.
cudaError_t launch_attention_scores_probs(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream);

// Multiprocessor count of a device (attention_plan.cu; cached).
int num_sms(int device);

// wgmma main pass (partial_attention_wgmma.cu), plan.mma == 1; wgmma_available: the device can run it.
cudaError_t launch_attention_wgmma(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream);
bool wgmma_available(int device);

}  // namespace cuda
}  // namespace dllm_core
