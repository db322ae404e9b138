// CUDA main pass of dllm_core::partial_attention (semantics: dllm_core/ops/partial_attention.py),
// the split combine and the launcher; the launch plan is in attention_plan.cu, the probability pass in
// partial_attention_probs.cu, the shared tile helpers in attention_tiles.cuh.
//
// Flash-style, mma.sync m16n8k16, float32 accumulation: a block owns kRows "query rows" of one
// (batch, kv head); with GQA those rows are (query row, head of the group) pairs, so the K/V tile
// it streams through shared memory serves every query head of the group.  Row-tile variants
// (WARPS warps x MT 16-row slabs each), picked per launch by plan_attention from the rows per
// (batch, kv head):
//   32 rows  = 2 warps x 16: few rows (MHA q <= 32) without idle warps;
//   64 rows  = 4 warps x 16: the original configuration, Q fragments kept in registers;
//   128 rows = 4 warps x 32: K/V streamed once per 128 rows, and every K/V fragment read from
//              shared memory feeds two MMAs (the 16-row warps were shared-memory bound); Q is
//              re-read from shared memory per tile to keep the 2x larger accumulators in registers.
// 64-key tiles stream with cp.async into XOR-swizzled shared memory (conflict-free ldmatrix) through
// a ring of STAGES buffers: 2 stages prefetch one tile ahead (two barriers per tile); 3 stages keep
// two tiles in flight while a tile is computed and need one barrier per tile, at 32 KB more shared
// memory (D = 128), so the plan uses them only where that costs no resident block.  Online softmax
// in the log2 domain (ex2.approx.ftz); padded/masked keys get -inf.  When the grid would
// not fill the GPU, the keys are split over blocks and a combine kernel merges the partial (max,
// sum, accumulator) triples (flash-decoding).  The pass also leaves the log2-sum-exp of every
// (batch, head, row) for the probability pass.

#include <cfloat>

#include "attention_combine.cuh"

namespace dllm_core {
namespace cuda {
namespace {

template <typename T, int D, int WARPS, int MT, int STAGES>
struct MainConfig {
  static constexpr int kRows = WARPS * 16 * MT, kThreads = WARPS * 32;
  static constexpr size_t kSmem = sizeof(T) * D * (kRows + 2 * STAGES * kBlockN);  // Q + STAGES x (K, V)
  static_assert(MT == 1 || MT == 2, "one or two 16-row slabs per warp");
  static_assert(STAGES == 2 || STAGES == 3, "double buffer or 3-stage ring");
  static_assert(kBlockN == 64, "one warp ballot per column parity covers the tile's 64 keys");
  static_assert(kSmem <= 227 * 1024, "shared memory per block");
  static_assert((kBlockN * D / 8) % kThreads == 0 && (kRows * D / 8) % kThreads == 0, "even copy split");
};

// SCORES: the stored-scores mode, plan.probs_scores (0 none; 1 float32 scores; 2 float16 exponentials and
// chunk maxima; attention_scores.cuh).  A template value: the stores' registers cost the 128-row variant
// spills even where the branch is not taken.
template <typename T, int D, int WARPS, int MT, int STAGES, int SCORES>
__global__ void __launch_bounds__(WARPS * 32) attn_main_kernel(AttentionParams p, int tiles_per_split) {
  using Cfg = MainConfig<T, D, WARPS, MT, STAGES>;
  constexpr int kRows = Cfg::kRows, kThreads = Cfg::kThreads;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + kRows * D;             // STAGES stages
  T* sV = sK + STAGES * kBlockN * D;  // STAGES stages
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, row0 = warp * 16 * MT;
  const int b = blockIdx.z / p.Hkv, g = blockIdx.z % p.Hkv, split = blockIdx.y;
  const int group = p.H / p.Hkv, M = p.n * group, m0 = blockIdx.x * kRows;
  const int n_tiles = (p.T + kBlockN - 1) / kBlockN;
  const int tile_begin = split * tiles_per_split;
  const int tile_end = min(n_tiles, tile_begin + tiles_per_split);
  const T* kbase = static_cast<const T*>(p.k) + b * p.k_s[0] + g * p.k_s[2];
  const T* vbase = static_cast<const T*>(p.v) + b * p.v_s[0] + g * p.v_s[2];
  const bool* mask = p.mask + b * p.mask_s0;
  const float scale_log2 = p.scale * kLog2e;
  const uint64_t k_policy = kv_l2_policy<SCORES>(p, true), v_policy = kv_l2_policy<SCORES>(p, false);
  pdl_launch_dependents();  // the combine / probability kernel may take free SM slots now (pdl.cuh)
  const int64_t blocks_xy = static_cast<int64_t>(gridDim.x) * gridDim.y;
  zero_probs_share(p, blockIdx.x + gridDim.x * blockIdx.y + blocks_xy * blockIdx.z, blocks_xy * gridDim.z);

  auto load_kv = [&](int tile, int stage) {
    const int t0 = tile * kBlockN, valid = min(kBlockN, p.T - t0);
    load_rows<D, kBlockN, kThreads, true>(sK + stage * kBlockN * D, kbase + t0 * p.k_s[1], p.k_s[1], valid, k_policy);
    load_rows<D, kBlockN, kThreads, true>(sV + stage * kBlockN * D, vbase + t0 * p.v_s[1], p.v_s[1], valid, v_policy);
  };
  // Prologue: tiles 0 .. STAGES-2 of the split, one commit group each (Q rides with the first);
  // groups are committed even when empty so that "tile r landed" is always wait_group<STAGES-2>.
  load_q<D, kRows, kThreads>(sQ, p, b, g * group, m0, M, group);
#pragma unroll
  for (int r = 0; r < STAGES - 1; ++r) {
    if (tile_begin + r < tile_end) load_kv(tile_begin + r, r);
    cp_async_commit();
  }

  uint32_t qf[MT == 1 ? D / 16 : 1][4];  // MT == 1: Q fragments live in registers
  float o[MT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
  float m_run[MT][2], l_run[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) m_run[mt][0] = m_run[mt][1] = -INFINITY, l_run[mt][0] = l_run[mt][1] = 0.f;

  int stage = 0;  // tile r of the split lives in stage r % STAGES
  for (int tile = tile_begin; tile < tile_end; ++tile, stage = stage + 1 == STAGES ? 0 : stage + 1) {
    const int t0 = tile * kBlockN;
    // Attendable keys of the tile, read before the wait so the load latency overlaps the copy: lane
    // l reads keys 2l, 2l+1 and two ballots share them (bit i of valid[e] = key 2i + e); a thread's
    // column e of key block j (key 8j + 2(l%4) + e) is then bit 4j of valid[e] >> l%4.
    uint32_t valid[2];
    {
      const int t = t0 + 2 * lane;
      const bool k0 = t < p.T && mask[t], k1 = t + 1 < p.T && mask[t + 1];
      valid[0] = __ballot_sync(0xffffffffu, k0) >> (lane & 3);
      valid[1] = __ballot_sync(0xffffffffu, k1) >> (lane & 3);
    }
    if constexpr (STAGES == 2) {
      if (tile + 1 < tile_end) {  // prefetch the next tile into the other stage, then wait for this one
        load_kv(tile + 1, stage ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
    } else {
      cp_async_wait<STAGES - 2>();  // this tile landed (the STAGES-2 newer ones may still fly)
      __syncthreads();  // ... for every thread, and every warp is done with the previous tile, whose
                        // stage the next copy refills: no barrier at the end of the iteration
      const int fill = stage == 0 ? STAGES - 1 : stage - 1;
      if (tile + STAGES - 1 < tile_end) load_kv(tile + STAGES - 1, fill);
      cp_async_commit();
    }

    float s[MT][8][4];
    const T* sKs = sK + stage * kBlockN * D;
    if constexpr (MT == 1) {
      if (tile == tile_begin) q_fragments<D>(qf, sQ, row0, lane);
      qk_tile<D>(s[0], qf, sKs, lane);
    } else {
      qk_tile_smem<D, MT>(s, sQ, row0, sKs, lane);
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      // Scale into the log2 domain and mask; row max over the quad of lanes sharing a row.
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[mt][j][e] = (valid[e & 1] >> (4 * j)) & 1u ? s[mt][j][e] * scale_log2 : -INFINITY;
          mx[e >> 1] = fmaxf(mx[e >> 1], s[mt][j][e]);
        }
      if constexpr (SCORES == 1)  // 64-key tiles never pass the padded row (scores_ld, a multiple of 128)
        store_scores<false, 8>(p, b, g * group, group, m0 + row0 + 16 * mt + (lane >> 2), M, t0,
                               static_cast<int>(p.scores_ld), lane, m_run[mt],
                               [&](int j, int e) { return s[mt][j][e]; });
      float m_use[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = fmaxf(m_run[mt][r], mx[r]);
        m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // all masked so far: keep exp2 finite (gives 0)
        const float alpha = fast_exp2(m_run[mt][r] - m_use[r]);
        m_run[mt][r] = m_new;
        l_run[mt][r] *= alpha;
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn) {
          o[mt][dn][2 * r] *= alpha;
          o[mt][dn][2 * r + 1] *= alpha;
        }
      }
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[mt][j][e] = fast_exp2(s[mt][j][e] - m_use[e >> 1]);
          l_run[mt][e >> 1] += s[mt][j][e];
        }
      if constexpr (SCORES == 2)  // after the exponentials, with the max they used
        store_scores<true, 8>(p, b, g * group, group, m0 + row0 + 16 * mt + (lane >> 2), M, t0,
                              static_cast<int>(p.scores_ld), lane, m_run[mt],
                              [&](int j, int e) { return s[mt][j][e]; });
    }

    // O += P V: the S accumulators of key blocks 2kk, 2kk+1 are exactly the A fragment of k step
    // kk; each V fragment read from shared memory serves all MT slabs.
    const T* sVs = sV + stage * kBlockN * D;
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b0, b1, b2, b3;
        v_fragments<D>(b0, b1, b2, b3, sVs, kk, dp, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(o[mt][2 * dp], a[mt], b0, b1);
          mma16816<T>(o[mt][2 * dp + 1], a[mt], b2, b3);
        }
      }
    }
    if constexpr (STAGES == 2) __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }
  cp_async_wait<0>();  // an empty split still has the Q copy in flight

#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = l_run[mt][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int m = m0 + row0 + 16 * mt + (lane >> 2) + 8 * r;
      if (m >= M) continue;
      const int row = m / group, h = g * group + m % group;
      const int64_t bhr = (static_cast<int64_t>(b) * p.H + h) * p.n + row;
      if (gridDim.y == 1) {
        // l == 0 (every key masked): 0 * inf = NaN, as the reference's softmax gives.
        const float inv = 1.f / l;
        T* out = static_cast<T*>(p.out) + ((static_cast<int64_t>(b) * p.n + row) * p.H + h) * D + 2 * (lane & 3);
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn)
          *reinterpret_cast<uint32_t*>(out + dn * 8) = pack2<T>(o[mt][dn][2 * r] * inv, o[mt][dn][2 * r + 1] * inv);
        if (p.lse != nullptr && (lane & 3) == 0) p.lse[bhr] = l > 0.f ? m_run[mt][r] + log2f(l) : -INFINITY;
      } else {
        const int64_t part = static_cast<int64_t>(split) * p.B * p.H * p.n + bhr;
        float* po = p.part_o + part * D + 2 * (lane & 3);
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn)
          *reinterpret_cast<float2*>(po + dn * 8) = make_float2(o[mt][dn][2 * r], o[mt][dn][2 * r + 1]);
        if ((lane & 3) == 0) *reinterpret_cast<float2*>(p.part_ml + part * 2) = make_float2(m_run[mt][r], l);
      }
    }
}

// Merges the key splits of each (batch, head, row): blockDim = (D / 4, 4), one row per y; leaves the
// merged log2-sum-exp for the probability pass.
template <typename T, int D>
__global__ void attn_combine_kernel(AttentionParams p, int splits) {
  pdl_launch_dependents();
  pdl_wait();  // the main pass's partials (every block waits: the probability pass relies on it)
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.n;
  const int64_t bhr = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (bhr >= rows) return;
  const float lse = combine_chunk<T, D>(p, splits, rows, bhr, threadIdx.x * 4);
  if (p.lse != nullptr && threadIdx.x == 0) p.lse[bhr] = lse;
}


template <typename T, int D, int WARPS, int MT, int STAGES>
cudaError_t launch_main(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  using Cfg = MainConfig<T, D, WARPS, MT, STAGES>;
  const int mode = p.scores == nullptr ? 0 : plan.probs_scores;
  auto kernel = mode == 2   ? attn_main_kernel<T, D, WARPS, MT, STAGES, 2>
                : mode == 1 ? attn_main_kernel<T, D, WARPS, MT, STAGES, 1>
                            : attn_main_kernel<T, D, WARPS, MT, STAGES, 0>;
  cudaError_t err = set_chain_smem(kernel, Cfg::kSmem);
  if (err != cudaSuccess) return err;
  const int M = p.n * (p.H / p.Hkv);
  const dim3 grid((M + Cfg::kRows - 1) / Cfg::kRows, plan.splits, p.B * p.Hkv);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmem, stream>>>(p, plan.tiles_per_split);  // a plain launch: see pdl.cuh
  return cudaGetLastError();
}

template <typename T, int D, int STAGES>
cudaError_t launch_rows(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  return plan.rows == 32    ? launch_main<T, D, 2, 1, STAGES>(p, plan, stream)
         : plan.rows == 64  ? launch_main<T, D, 4, 1, STAGES>(p, plan, stream)
         : plan.rows == 128 ? launch_main<T, D, 4, 2, STAGES>(p, plan, stream)
                            : cudaErrorInvalidValue;
}

template <typename T, int D>
cudaError_t launch_typed(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  cudaError_t err = plan.mma == 1      ? launch_attention_wgmma(p, plan, stream)
                    : plan.stages == 2 ? launch_rows<T, D, 2>(p, plan, stream)
                    : plan.stages == 3 ? launch_rows<T, D, 3>(p, plan, stream)
                                       : cudaErrorInvalidValue;
  if (err != cudaSuccess) return err;
  if (p.scores != nullptr) return launch_attention_scores_probs(p, plan, stream);  // instead of the two below
  if (plan.splits > 1) {
    const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.n;
    err = launch_chained(attn_combine_kernel<T, D>, dim3(static_cast<unsigned>((rows + 3) / 4)), dim3(D / 4, 4), 0,
                         stream, plan.pdl == 1, p, plan.splits);
    if (err != cudaSuccess) return err;
  }
  return p.probs != nullptr ? launch_attention_probs(p, plan, stream) : cudaSuccess;
}

}  // namespace

cudaError_t launch_partial_attention(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  if (p.B == 0 || p.n == 0 || p.T == 0) return cudaSuccess;
  return with_attention_types(p, [&](auto t, auto d) { return launch_typed<decltype(t), decltype(d)::value>(p, plan, stream); });
}

}  // namespace cuda
}  // namespace dllm_core
