// Cluster variant of dllm_core::partial_attention (semantics: dllm_core/ops/partial_attention.py) for small
// grids (batch 1): the output and the head-mean probabilities in one kernel, where the split path runs a main
// pass and a second kernel (split combine, or the stored-scores streaming pass), each kernel boundary costing
// microseconds at these sizes (docs/kernels.md, "Against the targets").
//
// A thread-block cluster (sm_90) of C blocks owns one (batch, kv head, row tile); rows are (query row, head of
// the group) pairs as in the main pass, 32 (2 slabs of 16) or 64 (4 slabs) per tile.  Block `rank` owns the
// keys of 64-key tiles [rank * tpb, (rank + 1) * tpb) (tpb = tiles per block <= KG, the block's key groups)
// and holds all of them at once: Q and K, then V, are copied in two cp.async groups, no ring.  Warp (slab,
// key group kg) owns 16 rows x tile kg:
//   1. S = Q K^T (log2 domain, masked and padded keys -inf), its row max m_w and P = exp2(S - m_w), row sums
//      l_w; P stays in registers.  (m_w, l_w) go to shared memory and the cluster barrier is arrived at;
//   2. while the barrier completes: wait for V, O_w = P V (unnormalised, relative to m_w);
//   3. after the barrier each thread merges its two rows' (m, l) over all C x KG warps of the cluster
//      (distributed shared memory): f = exp2(m_w - m) / l.  Probabilities P f / H are added into the
//      (B, q, T) output with float atomics (sm_90 float4 where T % 4 == 0) across heads, after
//      griddepcontrol.wait: the output is zeroed by a small kernel launched just before this one, of which
//      this kernel is a programmatic dependent (pdl.cuh), so the zeroing overlaps its loads;
//   4. O_w f is summed over the key groups into the block's float32 output tile in shared memory; after a second cluster
//      barrier block `rank` sums its 1/C share of the tile over the C blocks (fixed order: the output is
//      deterministic) and writes it; a last barrier keeps every block resident while peers read it.
// Rows without an attendable key get max -inf and sum 0: f = NaN, so NaN output and probabilities, as the
// reference's softmax.  The plan (attention_plan.cu, plan.cluster) takes it where the grid fits one wave.

#include <algorithm>

#include "attention_tiles.cuh"
#include "cluster.cuh"

namespace dllm_core {
namespace cuda {
namespace {

// The float32 output tile's rows are padded by kOPad floats: the fragment layout's 8 rows of a warp store then
// fall into different banks.
constexpr int kOPad = 8;

// Shared-memory layout in bytes of a block with `rows` rows and `kg` key groups (tiles): Q, K tiles, V tiles,
// the float32 output tile, the per-warp (max, sum) of each row.
struct ClusterLayout {
  int k, v, o, stat, total;
  __host__ __device__ ClusterLayout(int D, int rows, int kg) {
    k = rows * D * 2;
    v = k + kg * kBlockN * D * 2;
    o = v + kg * kBlockN * D * 2;
    stat = o + rows * (D + kOPad) * 4;
    total = stat + kg * rows * 8;
  }
};

// (m, l) += (m2, l2): log2-domain softmax statistics; empty = (-inf, 0).
__device__ __forceinline__ void merge_stat(float& m, float& l, float m2, float l2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;
  l = l * fast_exp2(m - mn) + l2 * fast_exp2(m2 - mn);
  m = mn;
}

template <typename T, int D, int RS, int KG>
__global__ void __launch_bounds__(RS * KG * 32) attn_cluster_kernel(AttentionParams p, int tiles_per_block) {
  constexpr int R = RS * 16, kThreads = RS * KG * 32;
  extern __shared__ __align__(128) unsigned char smem[];
  const ClusterLayout L(D, R, KG);
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = reinterpret_cast<T*>(smem + L.k);
  T* sV = reinterpret_cast<T*>(smem + L.v);
  float* sO = reinterpret_cast<float*>(smem + L.o);
  float2* sStat = reinterpret_cast<float2*>(smem + L.stat);
  const uint32_t rank = cluster_ctarank(), C = cluster_nctarank();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, slab = warp % RS, kg = warp / RS;
  const int b = blockIdx.z / p.Hkv, g = blockIdx.z % p.Hkv;
  const int group = p.H / p.Hkv, M = p.n * group, m0 = blockIdx.y * R;
  const int n_tiles = (p.T + kBlockN - 1) / kBlockN, tile0 = static_cast<int>(rank) * tiles_per_block;
  const int tiles = max(0, min(tiles_per_block, n_tiles - tile0));
  const T* kbase = static_cast<const T*>(p.k) + b * p.k_s[0] + g * p.k_s[2];
  const T* vbase = static_cast<const T*>(p.v) + b * p.v_s[0] + g * p.v_s[2];
  const uint64_t policy = l2_policy((p.l2_hints & 1) != 0);  // evict-first where this row tile is K/V's only reader

  // Copies: Q and the block's K tiles, then its V tiles (two commit groups).
  load_q<D, R, kThreads>(sQ, p, b, g * group, m0, M, group);
  for (int i = 0; i < tiles; ++i) {
    const int t0 = (tile0 + i) * kBlockN;
    load_rows<D, kBlockN, kThreads, true>(sK + i * kBlockN * D, kbase + t0 * p.k_s[1], p.k_s[1],
                                          min(kBlockN, p.T - t0), policy);
  }
  cp_async_commit();
  for (int i = 0; i < tiles; ++i) {
    const int t0 = (tile0 + i) * kBlockN;
    load_rows<D, kBlockN, kThreads, true>(sV + i * kBlockN * D, vbase + t0 * p.v_s[1], p.v_s[1],
                                          min(kBlockN, p.T - t0), policy);
  }
  cp_async_commit();

  // This warp's tile: attendable keys (ballots as in the main pass: bit 4j of valid[e] >> lane % 4 is column
  // e of key block j), read while the copies fly.
  const bool has = kg < tiles;
  const int t0 = (tile0 + kg) * kBlockN;
  uint32_t valid[2] = {0u, 0u};
  if (has) {
    const bool* mask = p.mask + b * p.mask_s0;
    const int t = t0 + 2 * lane;
    const bool k0 = t < p.T && mask[t], k1 = t + 1 < p.T && mask[t + 1];
    valid[0] = __ballot_sync(0xffffffffu, k0) >> (lane & 3);
    valid[1] = __ballot_sync(0xffffffffu, k1) >> (lane & 3);
  }
  cp_async_wait<1>();
  __syncthreads();

  // 1. S, its row max and exponentials, row sums.
  float s[1][8][4];
  float m_w[2] = {-INFINITY, -INFINITY}, l_w[2] = {0.f, 0.f};
  if (has) {
    qk_tile_smem<D, 1>(s, sQ, slab * 16, sK + kg * kBlockN * D, lane);
    const float scale_log2 = p.scale * kLog2e;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[0][j][e] = (valid[e & 1] >> (4 * j)) & 1u ? s[0][j][e] * scale_log2 : -INFINITY;
        m_w[e >> 1] = fmaxf(m_w[e >> 1], s[0][j][e]);
      }
    float m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      m_w[r] = fmaxf(m_w[r], __shfl_xor_sync(0xffffffffu, m_w[r], 1));
      m_w[r] = fmaxf(m_w[r], __shfl_xor_sync(0xffffffffu, m_w[r], 2));
      m_use[r] = m_w[r] == -INFINITY ? 0.f : m_w[r];  // all masked: exp2(-inf - 0) = 0
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[0][j][e] = fast_exp2(s[0][j][e] - m_use[e >> 1]);
        l_w[e >> 1] += s[0][j][e];
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l_w[r] += __shfl_xor_sync(0xffffffffu, l_w[r], 1);
      l_w[r] += __shfl_xor_sync(0xffffffffu, l_w[r], 2);
    }
  }
  const int row_a = slab * 16 + (lane >> 2);  // this thread's rows: row_a, row_a + 8
  if ((lane & 3) == 0) {
    sStat[kg * R + row_a] = make_float2(m_w[0], l_w[0]);
    sStat[kg * R + row_a + 8] = make_float2(m_w[1], l_w[1]);
  }
  cluster_arrive();  // statistics published

  // 2. O_w = P V while the barrier completes.
  cp_async_wait<0>();
  __syncthreads();
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  if (has) {
    const T* sVs = sV + kg * kBlockN * D;
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack2<T>(s[0][2 * kk][0], s[0][2 * kk][1]);
      a[1] = pack2<T>(s[0][2 * kk][2], s[0][2 * kk][3]);
      a[2] = pack2<T>(s[0][2 * kk + 1][0], s[0][2 * kk + 1][1]);
      a[3] = pack2<T>(s[0][2 * kk + 1][2], s[0][2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b0, b1, b2, b3;
        v_fragments<D>(b0, b1, b2, b3, sVs, kk, dp, lane);
        mma16816<T>(o[2 * dp], a, b0, b1);
        mma16816<T>(o[2 * dp + 1], a, b2, b3);
      }
    }
  }
  cluster_wait();

  // 3. The rows' statistics over the cluster: the quad's lanes take every 4th (block, key group) entry.
  float f[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float m = -INFINITY, l = 0.f;
    const uint32_t base = smem_addr(sStat + row_a + 8 * r);
#pragma unroll 4
    for (int e = lane & 3; e < static_cast<int>(C) * KG; e += 4) {
      const float2 v = ld_dsmem_f2(dsmem_addr(base + (e % KG) * R * 8, e / KG));
      merge_stat(m, l, v.x, v.y);
    }
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, x), l2 = __shfl_xor_sync(0xffffffffu, l, x);
      merge_stat(m, l, m2, l2);
    }
    f[r] = fast_exp2(m_w[r] - m) / l;  // m = -inf (no attendable key): NaN, as the reference
  }

  if (p.probs != nullptr && has) {
    pdl_wait();  // the zeroing kernel is done
    const float inv_h = 1.f / static_cast<float>(p.H);
    const float fp[2] = {f[0] * inv_h, f[1] * inv_h};
    const bool vec = (p.T & 3) == 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int c = t0 + 8 * j + 2 * (lane & 3);
      if (vec) {
        // Lanes l, l ^ 1 hold adjacent key pairs of both rows: the even lane takes 4 keys of row_a, the odd
        // one 4 keys of row_a + 8 (one float4 atomic each).
        const bool odd = lane & 1;
        const float x0 = odd ? s[0][j][0] : s[0][j][2], x1 = odd ? s[0][j][1] : s[0][j][3];
        const float y0 = __shfl_xor_sync(0xffffffffu, x0, 1), y1 = __shfl_xor_sync(0xffffffffu, x1, 1);
        const int r = odd ? 1 : 0, m = m0 + row_a + 8 * r, c4 = t0 + 8 * j + 4 * ((lane >> 1) & 1);
        if (m >= M || c4 >= p.T) continue;
        const float4 v = odd ? make_float4(y0 * fp[1], y1 * fp[1], s[0][j][2] * fp[1], s[0][j][3] * fp[1])
                             : make_float4(s[0][j][0] * fp[0], s[0][j][1] * fp[0], y0 * fp[0], y1 * fp[0]);
        float* dst = p.probs + (static_cast<int64_t>(b) * p.n + m / group) * p.T + c4;
        atomicAdd(reinterpret_cast<float4*>(dst), v);
      } else {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int m = m0 + row_a + 8 * r;
          if (m >= M) continue;
          float* dst = p.probs + (static_cast<int64_t>(b) * p.n + m / group) * p.T + c;
          if (c < p.T) atomicAdd(dst, s[0][j][2 * r] * fp[r]);
          if (c + 1 < p.T) atomicAdd(dst + 1, s[0][j][2 * r + 1] * fp[r]);
        }
      }
    }
  }

  // 4. The block's output tile: key group 0 stores its part (zeros in a block past the keys), the others add
  // theirs in turn (plain adds between block barriers: float atomics on shared memory were measured 3x slower).
  constexpr int S = D + kOPad;
#pragma unroll 1
  for (int k = 0; k < KG; ++k) {
    if (kg == k && (k == 0 || has)) {
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float2* dst = reinterpret_cast<float2*>(sO + (row_a + 8 * r) * S + dn * 8 + 2 * (lane & 3));
          const float2 v = has ? make_float2(o[dn][2 * r] * f[r], o[dn][2 * r + 1] * f[r]) : make_float2(0.f, 0.f);
          if (k == 0) {
            *dst = v;
          } else {
            const float2 x = *dst;
            *dst = make_float2(x.x + v.x, x.y + v.y);
          }
        }
    }
    if (k + 1 < KG) __syncthreads();
  }
  cluster_arrive();
  cluster_wait();
  // This block's 1/C share of the tile, summed over the C blocks in rank order; the C loads of a float4 are issued
  // together (each is a round trip across the cluster).
  constexpr int kTotal4 = R * D / 4;
  const int per = (kTotal4 + static_cast<int>(C) - 1) / static_cast<int>(C);
  const int end = min(kTotal4, (static_cast<int>(rank) + 1) * per);
  for (int i = static_cast<int>(rank) * per + threadIdx.x; i < end; i += kThreads) {
    const int row = 4 * i / D, d = 4 * i % D, m = m0 + row;
    if (m >= M) continue;
    const uint32_t local = smem_addr(sO + row * S + d);
    float4 v[kClusterMaxSize];
#pragma unroll
    for (int rk = 0; rk < kClusterMaxSize; ++rk)
      if (rk < static_cast<int>(C)) v[rk] = ld_dsmem_f4(dsmem_addr(local, rk));
    float4 acc = v[0];
#pragma unroll
    for (int rk = 1; rk < kClusterMaxSize; ++rk)
      if (rk < static_cast<int>(C)) acc.x += v[rk].x, acc.y += v[rk].y, acc.z += v[rk].z, acc.w += v[rk].w;
    T* out = static_cast<T*>(p.out) +
             ((static_cast<int64_t>(b) * p.n + m / group) * p.H + g * group + m % group) * D + d;
    *reinterpret_cast<uint2*>(out) = make_uint2(pack2<T>(acc.x, acc.y), pack2<T>(acc.z, acc.w));
  }
  cluster_arrive();  // no block exits while a peer may still read its shared memory
  cluster_wait();
}

// Zeroes the (B, q, T) probabilities the cluster kernel adds into; lets that kernel start at once.
__global__ void zero_probs_kernel(float* probs, int64_t total) {
  pdl_launch_dependents();
  const int64_t stride = 4 * static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = 4 * (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x); i < total; i += stride) {
    if (i + 4 <= total) {
      *reinterpret_cast<float4*>(probs + i) = make_float4(0.f, 0.f, 0.f, 0.f);
    } else {
      for (int64_t j = i; j < total; ++j) probs[j] = 0.f;
    }
  }
}

template <typename T, int D, int RS, int KG>
cudaError_t launch_variant(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  auto kernel = attn_cluster_kernel<T, D, RS, KG>;
  const ClusterLayout L(D, RS * 16, KG);
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L.total);
  if (err == cudaSuccess && plan.cluster > 8)
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  if (err != cudaSuccess) return err;
  const bool dependent = p.probs != nullptr && plan.pdl == 1;
  if (p.probs != nullptr) {
    const int64_t total = static_cast<int64_t>(p.B) * p.n * p.T;
    const int blocks = static_cast<int>(std::min<int64_t>((total + 1023) / 1024, 1024));
    zero_probs_kernel<<<blocks, 256, 0, stream>>>(p.probs, total);  // a plain launch: see pdl.cuh
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(plan.cluster, ceil_div(p.n * (p.H / p.Hkv), RS * 16), p.B * p.Hkv);
  config.blockDim = dim3(RS * KG * 32);
  config.dynamicSmemBytes = L.total;
  config.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = plan.cluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = dependent ? 2 : 1;
  return cudaLaunchKernelEx(&config, kernel, p, plan.cluster_tiles);
}

template <typename T, int D, int RS>
cudaError_t launch_rows(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  const int tpb = plan.cluster_tiles;
  return tpb == 1   ? launch_variant<T, D, RS, 1>(p, plan, stream)
         : tpb == 2 ? launch_variant<T, D, RS, 2>(p, plan, stream)
         : tpb <= 4 ? launch_variant<T, D, RS, 4>(p, plan, stream)
                    : cudaErrorInvalidValue;
}

}  // namespace

int cluster_smem_bytes(int D, int rows, int tiles) {
  return ClusterLayout(D, rows, tiles <= 1 ? 1 : tiles <= 2 ? 2 : 4).total;
}

cudaError_t launch_attention_cluster(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  if (plan.cluster < 1 || plan.cluster > kClusterMaxSize || plan.cluster_tiles < 1 ||
      plan.cluster_tiles > kClusterMaxTiles ||
      static_cast<int64_t>(plan.cluster) * plan.cluster_tiles * kBlockN < p.T)
    return cudaErrorInvalidValue;
  return with_attention_types(p, [&](auto t, auto d) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    return plan.cluster_rows == 32   ? launch_rows<T, D, 2>(p, plan, stream)
           : plan.cluster_rows == 64 ? launch_rows<T, D, 4>(p, plan, stream)
                                     : cudaErrorInvalidValue;
  });
}

}  // namespace cuda
}  // namespace dllm_core
