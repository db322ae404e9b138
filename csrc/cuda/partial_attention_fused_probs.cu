// CUDA fused-probabilities variant of dllm_core::partial_attention (semantics:
// dllm_core/ops/partial_attention.py): the output and the head-mean probabilities in one kernel
// that reads K and V once.  The two-pass path (partial_attention.cu + partial_attention_probs.cu)
// reads K twice, which bounds it near 3x of the baselines where few rows share a kv head.
//
// A thread-block cluster (sm_90) of C blocks owns one batch b and all its <= 32 rows per kv head
// (rows = (query row, head of the group) pairs, as in the main pass).  Block rank = ih * chunks + ik:
// it owns key chunk ik ([ik * Tc, (ik + 1) * Tc), Tc <= 512 keys) and kv-head slice ih (Hkv / slices
// consecutive kv heads, slices = C / chunks).  Per kv head: the block streams Q, then its chunk's K
// tiles, then its V tiles through one cp.async ring (items of 64 x D; the ring keeps prefetching
// across the head boundaries and the cluster barriers), and
//   A: S = Q K^T (log2 domain, masked keys -inf) into shared memory (float32, 32 x Tc), with online
//      per-row (max, sum) per warp;
//   stats: the warps' (max, sum) merged per row; with chunks > 1 published to the peers of the
//      same head slice, cluster barrier, merged over the chunks through distributed shared memory;
//   B: P = exp2(S - m) / l, added into a per-block accumulator (32 x Tc float32, persistent over
//      the block's heads: the head sum without atomics and without per-head probabilities in
//      global memory), written as a bf16/fp16 tile and multiplied by V (P normalised, so the
//      partial outputs of the chunks just add up);
//   output: chunks == 1: written out; else the partial output goes to shared memory, and after the
//      next cluster barrier (waited for after the next head's phase A, so its latency overlaps work)
//      block ik adds rows [ik * M / chunks, ..) of the chunks' partials and writes them.
// At the end the blocks of one key chunk add their accumulators (and the group's rows) through
// distributed shared memory, 1/H, and store their column slice of probs (B, n, T).
// Barriers per head with chunks > 1: two cluster barriers; a block's (max, sum) and partial-output
// buffers are rewritten only after a barrier that every peer reaches after reading them, so one
// buffer of each suffices.  Every block runs the same number of heads, so all reach every cluster
// barrier equally often (also blocks whose chunk lies beyond T: they publish (-inf, 0) and zero
// outputs), and the kernel ends with a cluster barrier so no block exits while peers read it.
// Warps: 8 = 2 row slabs (16 rows) x 4 quarters: in QK^T and P a warp owns 16 keys of every 64-key
// tile, in P V 16 * D / 64 output columns (P from the shared tile), so no cross-warp output sum.

#include "attention_tiles.cuh"

namespace dllm_core {
namespace cuda {
namespace {

constexpr int kWarps = 8, kThreads = kWarps * 32;

template <int D>
struct FusedConfig {
  static constexpr int kStages = D == 128 ? 4 : 8;  // 64 KB of K/V ring either way (48 / 56 KB in flight)
  static constexpr int kStage = kBlockN * D;        // elements per ring item
  static constexpr int kNdp = D / 64;               // 16-column output blocks per warp in P V
  static_assert(D == 64 || D == 128, "head dims");
  static_assert((kBlockN * D / 8) % kThreads == 0, "even copy split");
};

// Shared-memory layout in bytes (host: launch size and occupancy; device: carving).
struct FusedLayout {
  int p, mlw, ml, s, acc, o, total;
  __host__ __device__ FusedLayout(int D, int tc, int chunks) {
    p = (D == 128 ? 4 : 8) * kBlockN * D * 2;  // after the ring
    mlw = p + 2 * kFusedRows * kBlockN * 2;    // P tiles, double-buffered
    ml = mlw + 4 * kFusedRows * 8;             // per-quarter (max, sum)
    s = ml + kFusedRows * 8;                   // merged (max, sum): read by the peers
    acc = s + kFusedRows * (tc + 8) * 4;       // S; rows padded by 8 floats: conflict-free float2
    o = acc + kFusedRows * (tc + 8) * 4;       // probability accumulator: read by the peers
    total = o + (chunks > 1 ? kFusedRows * (D + 8) * 4 : 0);  // partial output: read by the peers
  }
};

// (max, sum) pairs in the log2 domain merged in index order; all -inf -> (-inf, 0).
template <int N>
__device__ __forceinline__ float2 merge_ml(const float2 (&x)[N], int count) {
  float m = -INFINITY, l = 0.f;
#pragma unroll
  for (int q = 0; q < N; ++q)
    if (q < count) m = fmaxf(m, x[q].x);
#pragma unroll
  for (int q = 0; q < N; ++q)
    if (q < count && x[q].x != -INFINITY) l += fast_exp2(x[q].x - m) * x[q].y;
  return make_float2(m, l);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1) attn_fused_probs_kernel(AttentionParams p, int tc, int chunks) {
  using Cfg = FusedConfig<D>;
  constexpr int S = Cfg::kStages, kNdp = Cfg::kNdp, kRows = kFusedRows;
  extern __shared__ __align__(128) unsigned char smem[];
  const FusedLayout L(D, tc, chunks);
  T* ring = reinterpret_cast<T*>(smem);
  T* sP = reinterpret_cast<T*>(smem + L.p);
  float2* sMLw = reinterpret_cast<float2*>(smem + L.mlw);
  float2* sML = reinterpret_cast<float2*>(smem + L.ml);
  float* sS = reinterpret_cast<float*>(smem + L.s);
  float* sAcc = reinterpret_cast<float*>(smem + L.acc);
  float* sO = reinterpret_cast<float*>(smem + L.o);
  const int ld = tc + 8;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int quarter = warp & 3, row0 = 16 * (warp >> 2), my_row = row0 + (lane >> 2);  // and my_row + 8
  const int rank = static_cast<int>(cluster_ctarank()), slices = static_cast<int>(cluster_nctarank()) / chunks;
  const int ik = rank % chunks, ih = rank / chunks, b = blockIdx.y;
  const int group = p.H / p.Hkv, M = p.n * group;
  const int groups = static_cast<int>(gridDim.z), heads = p.Hkv / (slices * groups);  // kv heads per block
  const int g0 = (static_cast<int>(blockIdx.z) * slices + ih) * heads;
  const int k0 = ik * tc;
  const int nt = min(tc / kBlockN, max(0, (p.T - k0 + kBlockN - 1) / kBlockN));  // tiles below T
  const int per = 1 + 2 * nt, total = heads * per;  // ring items per head: Q, K tiles, V tiles
  const T* kbase = static_cast<const T*>(p.k) + b * p.k_s[0];
  const T* vbase = static_cast<const T*>(p.v) + b * p.v_s[0];
  const bool* mask = p.mask + b * p.mask_s0;
  const float scale_log2 = p.scale * kLog2e;

  auto issue = [&](int j) {  // item j into stage j % S
    if (j >= total) return;
    const int i = j / per, r = j - i * per, g = g0 + i;
    T* dst = ring + (j % S) * Cfg::kStage;
    if (r == 0) {
      load_q<D, kRows, kThreads>(dst, p, b, g * group, 0, M, group);
    } else if (r <= nt) {
      const int t0 = k0 + (r - 1) * kBlockN;
      load_rows<D, kBlockN, kThreads>(dst, kbase + g * p.k_s[2] + t0 * p.k_s[1], p.k_s[1], p.T - t0);
    } else {
      const int t0 = k0 + (r - 1 - nt) * kBlockN;
      load_rows<D, kBlockN, kThreads>(dst, vbase + g * p.v_s[2] + t0 * p.v_s[1], p.v_s[1], p.T - t0);
    }
  };
#pragma unroll
  for (int r = 0; r < S - 1; ++r) {  // one commit group per item, empty ones included
    issue(r);
    cp_async_commit();
  }
  for (int i = tid; i < kRows * ld / 4; i += kThreads) reinterpret_cast<float4*>(sAcc)[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  int item = 0;
  // Item `item` landed and every warp is done with the previous one, whose stage is refilled now.
  auto next = [&]() -> const T* {
    cp_async_wait<S - 2>();
    __syncthreads();
    issue(item + S - 1);
    cp_async_commit();
    return ring + (item++ % S) * Cfg::kStage;
  };

  // Chunks > 1: rows [ik * rows, ..) of head g's output = the sum of the chunks' partials.
  auto reduce_o = [&](int g) {
    constexpr int kVec = D / 4;
    const int rows = (M + chunks - 1) / chunks, r_begin = ik * rows, r_end = min(M, r_begin + rows);
    for (int idx = tid; idx < (r_end - r_begin) * kVec; idx += kThreads) {
      const int m = r_begin + idx / kVec, c = (idx % kVec) * 4;
      const uint32_t local = smem_addr(sO + m * (D + 8) + c);
      float4 v[kFusedMaxCluster];
#pragma unroll
      for (int q = 0; q < kFusedMaxCluster; ++q)
        if (q < chunks) v[q] = ld_dsmem_f4(dsmem_addr(local, ih * chunks + q));
      float4 a = v[0];
#pragma unroll
      for (int q = 1; q < kFusedMaxCluster; ++q)
        if (q < chunks) a.x += v[q].x, a.y += v[q].y, a.z += v[q].z, a.w += v[q].w;
      const int row = m / group, h = g * group + m % group;
      T* out = static_cast<T*>(p.out) + ((static_cast<int64_t>(b) * p.n + row) * p.H + h) * D + c;
      *reinterpret_cast<uint2*>(out) = make_uint2(pack2<T>(a.x, a.y), pack2<T>(a.z, a.w));
    }
  };

  uint32_t qf[D / 16][4];
  float o[2 * kNdp][4];
  for (int i = 0; i < heads; ++i) {
    const int g = g0 + i;
    q_fragments<D>(qf, next(), row0, lane);

    // Phase A: S = Q K^T over the chunk, this warp's 16 keys of each tile.
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
    for (int t = 0; t < nt; ++t) {
      const int kt = k0 + t * kBlockN + 16 * quarter + 2 * (lane & 3);
      bool ok[2][2];  // [8-key block][column parity], read before the wait
#pragma unroll
      for (int jb = 0; jb < 2; ++jb)
#pragma unroll
        for (int e = 0; e < 2; ++e) ok[jb][e] = kt + 8 * jb + e < p.T && mask[kt + 8 * jb + e];
      const T* sK = next();
      float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t b0, b1, b2, b3;
        k_fragments<D>(b0, b1, b2, b3, sK, quarter, kk, lane);
        mma16816<T>(s[0], qf[kk], b0, b1);
        mma16816<T>(s[1], qf[kk], b2, b3);
      }
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int jb = 0; jb < 2; ++jb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[jb][e] = ok[jb][e & 1] ? s[jb][e] * scale_log2 : -INFINITY;
          mx[e >> 1] = fmaxf(mx[e >> 1], s[jb][e]);
        }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = fmaxf(m_run[r], mx[r]), m_use = m_new == -INFINITY ? 0.f : m_new;
        l_run[r] *= fast_exp2(m_run[r] - m_use);
        m_run[r] = m_new;
        float* srow = sS + (my_row + 8 * r) * ld + t * kBlockN + 16 * quarter + 2 * (lane & 3);
#pragma unroll
        for (int jb = 0; jb < 2; ++jb) {
          l_run[r] += fast_exp2(s[jb][2 * r] - m_use) + fast_exp2(s[jb][2 * r + 1] - m_use);
          *reinterpret_cast<float2*>(srow + 8 * jb) = make_float2(s[jb][2 * r], s[jb][2 * r + 1]);
        }
      }
    }
    // Deferred: the previous head's output, once every chunk has published its partial.
    if (chunks > 1 && i > 0) {
      cluster_wait();
      reduce_o(g - 1);
    }

    // Row statistics: quarters -> block (sML), then over the chunks of this head slice.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
      l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
      if ((lane & 3) == 0) sMLw[quarter * kRows + my_row + 8 * r] = make_float2(m_run[r], l_run[r]);
    }
    __syncthreads();
    if (tid < kRows) {
      const float2 x[4] = {sMLw[tid], sMLw[kRows + tid], sMLw[2 * kRows + tid], sMLw[3 * kRows + tid]};
      sML[tid] = merge_ml(x, 4);
    }
    if (chunks > 1) {
      cluster_arrive();
      cluster_wait();
    } else {
      __syncthreads();
    }
    float m_use[2], inv_l[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float2 ml;
      if (chunks == 1) {
        ml = sML[my_row + 8 * r];
      } else {
        const uint32_t local = smem_addr(sML + my_row + 8 * r);
        float2 x[kFusedMaxCluster];
#pragma unroll
        for (int q = 0; q < kFusedMaxCluster; ++q)
          if (q < chunks) x[q] = ld_dsmem_f2(dsmem_addr(local, ih * chunks + q));
        ml = merge_ml(x, chunks);
      }
      m_use[r] = ml.x == -INFINITY ? 0.f : ml.x;
      inv_l[r] = 1.f / ml.y;  // no attendable key in the row: 0 * inf = NaN, as the reference
    }

    // Phase B: P of tile t + 1 (this warp's 16 keys: accumulator and the P tile) while P V runs on
    // tile t; the ring barrier of the next item publishes the P tile.
    auto produce_p = [&](int t) {
      T* dst = sP + (t & 1) * kRows * kBlockN;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = my_row + 8 * r, col = t * kBlockN + 16 * quarter + 2 * (lane & 3);
#pragma unroll
        for (int jb = 0; jb < 2; ++jb) {
          const float2 sv = *reinterpret_cast<const float2*>(sS + row * ld + col + 8 * jb);
          const float p0 = fast_exp2(sv.x - m_use[r]) * inv_l[r], p1 = fast_exp2(sv.y - m_use[r]) * inv_l[r];
          float2* acc = reinterpret_cast<float2*>(sAcc + row * ld + col + 8 * jb);
          float2 a = *acc;
          a.x += p0, a.y += p1;
          *acc = a;
          *reinterpret_cast<uint32_t*>(dst + swz<kBlockN>(row, 2 * quarter + jb) + 2 * (lane & 3)) = pack2<T>(p0, p1);
        }
      }
    };
#pragma unroll
    for (int d = 0; d < 2 * kNdp; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
    if (nt > 0) produce_p(0);
    for (int t = 0; t < nt; ++t) {
      const T* sV = next();
      if (t + 1 < nt) produce_p(t + 1);
      const T* sp = sP + (t & 1) * kRows * kBlockN;
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t a[4];
        a_fragment<kBlockN>(a, sp, row0, kk, lane);
#pragma unroll
        for (int d = 0; d < kNdp; ++d) {
          uint32_t b0, b1, b2, b3;
          v_fragments<D>(b0, b1, b2, b3, sV, kk, quarter * kNdp + d, lane);
          mma16816<T>(o[2 * d], a, b0, b1);
          mma16816<T>(o[2 * d + 1], a, b2, b3);
        }
      }
    }

    // This head's output (columns 16 (quarter kNdp + d) + 8 hf + 2 (lane % 4), rows my_row, my_row + 8).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int m = my_row + 8 * r;
      if (chunks == 1 && m >= M) continue;
      T* out = chunks == 1 ? static_cast<T*>(p.out) + ((static_cast<int64_t>(b) * p.n + m / group) * p.H + g * group +
                                                       m % group) * D
                           : nullptr;
#pragma unroll
      for (int d = 0; d < kNdp; ++d)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int col = 16 * (quarter * kNdp + d) + 8 * hf + 2 * (lane & 3);
          const float v0 = o[2 * d + hf][2 * r], v1 = o[2 * d + hf][2 * r + 1];
          if (chunks == 1)
            *reinterpret_cast<uint32_t*>(out + col) = pack2<T>(v0, v1);
          else
            *reinterpret_cast<float2*>(sO + m * (D + 8) + col) = make_float2(v0, v1);
        }
    }
    if (chunks > 1) cluster_arrive();  // partial output published; waited for after the next phase A
  }
  if (chunks > 1) {
    cluster_wait();  // also: every peer's accumulator is final
    reduce_o(g0 + heads - 1);
  } else {
    cluster_arrive();
    cluster_wait();
  }

  // Probabilities: this block's column slice of its key chunk, summed over the head slices (the
  // blocks of the same chunk) and the group's rows of each query row, / H; with several kv-head
  // groups (clusters) per batch, added into the zeroed output with atomics.
  {
    const bool atomic = groups > 1;
    const int width = ((tc + slices - 1) / slices + 3) & ~3;
    const int c_begin = ih * width, c_end = min(min(tc, p.T - k0), c_begin + width);
    const int w4 = (c_end - c_begin + 3) >> 2;
    const float inv_heads = 1.f / static_cast<float>(p.H);
    for (int idx = tid; w4 > 0 && idx < p.n * w4; idx += kThreads) {
      const int row = idx / w4, c = c_begin + (idx - row * w4) * 4;
      float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int jg = 0; jg < group; ++jg) {
        const uint32_t local = smem_addr(sAcc + (row * group + jg) * ld + c);
        float4 v[kFusedMaxCluster];
#pragma unroll
        for (int q = 0; q < kFusedMaxCluster; ++q)
          if (q < slices) v[q] = ld_dsmem_f4(dsmem_addr(local, q * chunks + ik));
#pragma unroll
        for (int q = 0; q < kFusedMaxCluster; ++q)
          if (q < slices) sum.x += v[q].x, sum.y += v[q].y, sum.z += v[q].z, sum.w += v[q].w;
      }
      sum.x *= inv_heads, sum.y *= inv_heads, sum.z *= inv_heads, sum.w *= inv_heads;
      float* dst = p.probs + (static_cast<int64_t>(b) * p.n + row) * p.T + k0 + c;
      if ((p.T & 3) == 0 && c + 4 <= c_end) {  // 16-byte aligned: T, k0 and c are multiples of 4
        if (atomic)
          atomicAdd(reinterpret_cast<float4*>(dst), sum);
        else
          *reinterpret_cast<float4*>(dst) = sum;
      } else {
        const float e[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
        for (int q = 0; q < 4; ++q)
          if (c + q < c_end) atomic ? (void)atomicAdd(dst + q, e[q]) : (void)(dst[q] = e[q]);
      }
    }
  }
  cluster_arrive();  // no block exits while a peer may still read its shared memory
  cluster_wait();
}

template <typename T, int D>
cudaError_t launch_fused(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  const int cluster = plan.fused_probs, chunks = plan.fused_chunks, groups = plan.fused_groups;
  if (cluster < 1 || cluster > kFusedMaxCluster || chunks < 1 || cluster % chunks != 0 || groups < 1 ||
      p.Hkv % (cluster / chunks * groups) != 0 || p.n * (p.H / p.Hkv) > kFusedRows || p.probs == nullptr)
    return cudaErrorInvalidValue;
  const int tc = fused_chunk_keys(p.T, chunks);
  if (tc > kFusedMaxChunk) return cudaErrorInvalidValue;
  const size_t smem = FusedLayout(D, tc, chunks).total;
  auto kernel = attn_fused_probs_kernel<T, D>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(cluster, p.B, groups);
  cfg.blockDim = dim3(kThreads, 1, 1);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  err = cudaLaunchKernelEx(&cfg, kernel, p, tc, chunks);
  return err != cudaSuccess ? err : cudaGetLastError();
}

}  // namespace

int fused_probs_max_clusters(int cluster, int chunks, int T, int device) {
  const int tc = fused_chunk_keys(T, chunks);
  if (cluster < 1 || cluster > kFusedMaxCluster || chunks < 1 || tc > kFusedMaxChunk) return 0;
  // Cache per (device, cluster, 64-key tiles per chunk, partial-output buffer or not); value + 1.
  static int cache[16][kFusedMaxCluster + 1][kFusedMaxChunk / kBlockN + 1][2] = {};
  int* slot = device >= 0 && device < 16 ? &cache[device][cluster][tc / kBlockN][chunks > 1] : nullptr;
  if (slot != nullptr && *slot > 0) return *slot - 1;
  const size_t smem = FusedLayout(128, tc, chunks).total;  // the larger head dim decides
  auto kernel = attn_fused_probs_kernel<__nv_bfloat16, 128>;
  int clusters = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) == cudaSuccess) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(cluster, 1, 1);
    cfg.blockDim = dim3(kThreads, 1, 1);
    cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cluster;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) clusters = 0;
  }
  cudaGetLastError();  // a failed query must not surface as a later launch's error
  if (slot != nullptr) *slot = clusters + 1;
  return clusters;
}

cudaError_t launch_attention_fused_probs(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  const bool bf16 = p.dtype == DType::kBFloat16;
  if (p.D == 128) return bf16 ? launch_fused<__nv_bfloat16, 128>(p, plan, stream) : launch_fused<__half, 128>(p, plan, stream);
  if (p.D == 64) return bf16 ? launch_fused<__nv_bfloat16, 64>(p, plan, stream) : launch_fused<__half, 64>(p, plan, stream);
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace dllm_core
