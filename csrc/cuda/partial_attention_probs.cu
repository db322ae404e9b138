// CUDA probability pass of dllm_core::partial_attention (semantics: dllm_core/ops/partial_attention.py):
// the head-mean probabilities (B, q, T) float32, without materialising (B, H, q, T).
//
// A block owns 64 keys x kRows query rows of one batch and loops over heads, recomputing the
// scores with the tensor cores and normalising them with the log2-sum-exp the main pass left, so
// the head mean is summed in registers.  Variants: 32 rows = 2 warps (q <= 32: no idle warps),
// 64 rows = 4 warps (the original); with key halves (KS = 2, plan field probs_key_halves) twice the warps,
// two per 16-row slab, each taking 32 of the tile's 64 keys.  Q tiles and K tiles (one per kv head) stream through a ring of
// STAGES buffers with cp.async: 2 stages fetch one head ahead; 3 stages fetch two heads ahead, at
// 50% more shared memory (plan field probs_stages).  A head's compute (a 64-key Q K^T) is much shorter
// than an L2 round trip, so with one head in flight each head pays most of that latency.  The next
// head's log-sum-exp is fetched one head ahead so its global-load latency hides behind the MMAs.
// For small grids the query heads are sliced over blocks that add their parts with float atomics
// (into the output the main pass zeroed); where T % 4 == 0 each thread stores or adds float4s (one
// sm_90 vector atomic per four floats: the atomics were a large part of the batch-1 pass).  Launched
// as a programmatic dependent (pdl.cuh): the first head's copies and Q K^T run before pdl_wait(),
// under the main pass or the combine.
//
// Bytes: besides the output, the pass reads K once (each block's key tile once per kv head; the
// blocks sharing a key tile are adjacent in launch order so K comes from DRAM once) and Q once per
// key tile, mostly from L2.

#include "attention_tiles.cuh"

namespace dllm_core {
namespace cuda {
namespace {

template <typename T, int D, int WARPS, int STAGES, int KS = 1>
struct ProbsConfig {
  static constexpr int kRows = WARPS * 16, kThreads = WARPS * KS * 32;
  static constexpr size_t kSmem = sizeof(T) * D * STAGES * (kRows + kBlockN);  // STAGES x (Q, K)
  static_assert(STAGES == 2 || STAGES == 3, "one or two heads in flight");
  static_assert(kSmem <= 227 * 1024, "shared memory per block");
  static_assert((kBlockN * D / 8) % kThreads == 0 && (kRows * D / 8) % kThreads == 0, "even copy split");
};

// Min blocks per SM = the plan's residency assumption at D = 128, shared-memory bound (2 stages: 4 / 3,
// 3 stages: 3 / 2): keeps ptxas from trading it away for registers (64 rows, 2 stages sit at ~166 of
// the 168 that 3 blocks allow).
// KS = 2: twice the warps, each pair of warps sharing a 16-row slab and taking 32 of the tile's 64 keys
// (half the dependent MMA / exponential chain per warp; the batch-1 pass is latency bound).  The same
// block counts hold with twice the threads: the halved accumulators fit (64 rows, 2 stages: 78 of 85).
template <typename T, int D, int WARPS, int STAGES, int KS>
__global__ void __launch_bounds__(WARPS * KS * 32, (WARPS == 2 ? 4 : 3) - (STAGES - 2))
    attn_probs_kernel(AttentionParams p, int row_blocks, int heads_per_slice) {
  using Cfg = ProbsConfig<T, D, WARPS, STAGES, KS>;
  constexpr int kRows = Cfg::kRows, kThreads = Cfg::kThreads, NB = 8 / KS;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);  // STAGES stages
  T* sK = sQ + STAGES * kRows * D;     // STAGES stages
  const int warp = KS == 1 ? threadIdx.x >> 5 : (threadIdx.x >> 5) % WARPS, lane = threadIdx.x & 31;
  const int c0 = KS == 1 ? 0 : (threadIdx.x >> 5) / WARPS * 8 * NB;  // this warp's keys: columns c0 ..
  // Blocks sharing a key tile are adjacent in launch order (x fastest), so K is read from DRAM once.
  const int b = blockIdx.z, t0 = blockIdx.y * kBlockN;
  const int r0 = (blockIdx.x % row_blocks) * kRows, slice = blockIdx.x / row_blocks;
  const int group = p.H / p.Hkv;
  const int h_begin = slice * heads_per_slice, h_end = h_begin + heads_per_slice;
  // K tile of kv head j in stage (j - kv_first) % STAGES: a slice may start or end inside a GQA group.
  // That stage last held kv head j - STAGES, whose last head is at least STAGES - 1 heads before j's
  // first, so the ring's end-of-iteration barrier has released it when j's copy is issued.
  const int kv_first = h_begin / group;
  const int valid_keys = min(kBlockN, p.T - t0);
  const T* kbase = static_cast<const T*>(p.k) + b * p.k_s[0] + t0 * p.k_s[1];
  const T* qbase = static_cast<const T*>(p.q) + b * p.q_s[0] + r0 * p.q_s[1];
  const float scale_log2 = p.scale * kLog2e;
  const int my_row = r0 + warp * 16 + (lane >> 2);  // and my_row + 8

  // Which of this thread's 2 NB accumulator columns are attendable keys (the same for every head).
  uint32_t valid = 0;
#pragma unroll
  for (int j = 0; j < NB; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int c = c0 + j * 8 + 2 * (lane & 3) + e;
      if (c < valid_keys && p.mask[b * p.mask_s0 + t0 + c]) valid |= 1u << (2 * j + e);
    }

  auto issue = [&](int h) {
    const int i = h - h_begin;
    // Q rows of head h are rows of stride q_s[1]: the precomputed-address copy of load_rows (load_q's
    // per-chunk index math was a fifth of the loop's instructions).
    load_rows<D, kRows, kThreads>(sQ + (i % STAGES) * kRows * D, qbase + h * p.q_s[2], p.q_s[1], p.n - r0);
    if (i == 0 || h % group == 0) {  // the slice's first head, or the first of a new kv head
      T* dst = sK + ((h / group - kv_first) % STAGES) * kBlockN * D;
      load_rows<D, kBlockN, kThreads>(dst, kbase + (h / group) * p.k_s[2], p.k_s[1], valid_keys);
    }
  };
  auto read_lse = [&](int h, float (&dst)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = my_row + 8 * r;
      dst[r] = row < p.n ? p.lse[(static_cast<int64_t>(b) * p.H + h) * p.n + row] : 0.f;
    }
  };
  float acc[NB][4];
#pragma unroll
  for (int j = 0; j < NB; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  float lse[2], lse_next[2] = {0.f, 0.f};
  // One commit group per head, empty past the slice's end, so "all but the newest STAGES - 1 groups
  // complete" always means head h has landed.
#pragma unroll
  for (int j = 0; j < STAGES - 1; ++j) {
    if (h_begin + j < h_end) issue(h_begin + j);
    cp_async_commit();
  }
  for (int h = h_begin; h < h_end; ++h) {
    const int i = h - h_begin;
    if (h + STAGES - 1 < h_end) issue(h + STAGES - 1);
    cp_async_commit();
    cp_async_wait<STAGES - 1>();
    __syncthreads();
    uint32_t qf[D / 16][4];
    q_fragments<D>(qf, sQ + (i % STAGES) * kRows * D, warp * 16, lane);
    float s[NB][4];
    qk_tile<D, NB>(s, qf, sK + ((h / group - kv_first) % STAGES) * kBlockN * D + c0 * D, lane);
    if (i == 0) {  // everything so far read only inputs; the log-sum-exp comes from the kernel before
      pdl_wait();
      read_lse(h, lse);
    }
    if (h + 1 < h_end) read_lse(h + 1, lse_next);  // consumed next iteration
    if (valid == (1u << (2 * NB)) - 1) {  // all columns attendable (so every row's lse is finite): no selects
#pragma unroll
      for (int j = 0; j < NB; ++j)
#pragma unroll
        for (int x = 0; x < 4; ++x) acc[j][x] += fast_exp2(s[j][x] * scale_log2 - lse[x >> 1]);
    } else {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float fill = lse[r] == -INFINITY ? NAN : 0.f;  // no attendable key at all: NaN, as the reference
#pragma unroll
        for (int j = 0; j < NB; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            acc[j][2 * r + e] += (valid >> (2 * j + e)) & 1u ? fast_exp2(s[j][2 * r + e] * scale_log2 - lse[r]) : fill;
      }
    }
    lse[0] = lse_next[0], lse[1] = lse_next[1];
    __syncthreads();
  }

  const float inv_heads = 1.f / static_cast<float>(p.H);
  const bool atomic = gridDim.x > row_blocks;
  float* pbase = p.probs + static_cast<int64_t>(b) * p.n * p.T + t0;
  if ((p.T & 3) == 0) {
    // Rows are 16-byte aligned: lanes pair up (lane ^ 1 holds the next two columns) and swap halves,
    // the even lane taking 4 columns of row my_row, the odd one 4 of row my_row + 8, so each thread
    // stores (or, with head slices, adds: one vector atomic for four float ones) a float4 per key block.
    const bool odd = lane & 1;
    const int row = my_row + (odd ? 8 : 0);
#pragma unroll
    for (int j = 0; j < NB; ++j) {
      const float give0 = odd ? acc[j][0] : acc[j][2], give1 = odd ? acc[j][1] : acc[j][3];
      const float got0 = __shfl_xor_sync(0xffffffffu, give0, 1), got1 = __shfl_xor_sync(0xffffffffu, give1, 1);
      const float x0 = odd ? got0 : acc[j][0], x1 = odd ? got1 : acc[j][1];
      const float x2 = odd ? acc[j][2] : got0, x3 = odd ? acc[j][3] : got1;
      const float4 v = make_float4(x0 * inv_heads, x1 * inv_heads, x2 * inv_heads, x3 * inv_heads);
      const int c = c0 + j * 8 + 2 * (lane & 3) - (odd ? 2 : 0);
      if (row >= p.n || c >= valid_keys) continue;
      float* dst = pbase + static_cast<int64_t>(row) * p.T + c;
      if (c + 3 < valid_keys) {
#if __CUDA_ARCH__ >= 900
        if (atomic) { atomicAdd(reinterpret_cast<float4*>(dst), v); continue; }
#else
        if (atomic) {
          atomicAdd(dst, v.x), atomicAdd(dst + 1, v.y), atomicAdd(dst + 2, v.z), atomicAdd(dst + 3, v.w);
          continue;
        }
#endif
        *reinterpret_cast<float4*>(dst) = v;
        continue;
      }
      const float e[4] = {v.x, v.y, v.z, v.w};
      for (int k = 0; k < 4 && c + k < valid_keys; ++k) atomic ? (void)atomicAdd(dst + k, e[k]) : (void)(dst[k] = e[k]);
    }
    return;
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = my_row + 8 * r;
    if (row >= p.n) continue;
    float* prow = pbase + static_cast<int64_t>(row) * p.T;
#pragma unroll
    for (int j = 0; j < NB; ++j) {
      const int c = c0 + j * 8 + 2 * (lane & 3);
      const float v0 = acc[j][2 * r] * inv_heads, v1 = acc[j][2 * r + 1] * inv_heads;
      if (c < valid_keys) atomic ? (void)atomicAdd(prow + c, v0) : (void)(prow[c] = v0);
      if (c + 1 < valid_keys) atomic ? (void)atomicAdd(prow + c + 1, v1) : (void)(prow[c + 1] = v1);
    }
  }
}

template <typename T, int D, int WARPS, int STAGES, int KS>
cudaError_t launch_probs_ks(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  using Cfg = ProbsConfig<T, D, WARPS, STAGES, KS>;
  auto kernel = attn_probs_kernel<T, D, WARPS, STAGES, KS>;
  cudaError_t err = set_chain_smem(kernel, Cfg::kSmem);
  if (err != cudaSuccess) return err;
  const dim3 grid(plan.row_blocks * plan.head_slices, (p.T + kBlockN - 1) / kBlockN, p.B);
  return launch_chained(kernel, grid, dim3(Cfg::kThreads), Cfg::kSmem, stream, plan.pdl == 1, p, plan.row_blocks,
                        p.H / plan.head_slices);
}

template <typename T, int D, int WARPS, int STAGES>
cudaError_t launch_probs(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  return plan.probs_key_halves == 1 ? launch_probs_ks<T, D, WARPS, STAGES, 2>(p, plan, stream)
                                    : launch_probs_ks<T, D, WARPS, STAGES, 1>(p, plan, stream);
}

template <typename T, int D>
cudaError_t launch_probs_typed(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  if (plan.row_blocks * plan.probs_rows < p.n || p.H % plan.head_slices != 0) return cudaErrorInvalidValue;
  const int variant = plan.probs_rows * 10 + plan.probs_stages;
  return variant == 322   ? launch_probs<T, D, 2, 2>(p, plan, stream)
         : variant == 323 ? launch_probs<T, D, 2, 3>(p, plan, stream)
         : variant == 642 ? launch_probs<T, D, 4, 2>(p, plan, stream)
         : variant == 643 ? launch_probs<T, D, 4, 3>(p, plan, stream)
                          : cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_attention_probs(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  return with_attention_types(p, [&](auto t, auto d) { return launch_probs_typed<decltype(t), decltype(d)::value>(p, plan, stream); });
}

}  // namespace cuda
}  // namespace dllm_core
