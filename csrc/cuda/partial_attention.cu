// CUDA kernels of dllm_core::partial_attention (semantics: dllm_core/ops/partial_attention.py).
//
// Main pass (flash-style, mma.sync m16n8k16, float32 accumulation): a block owns 64 "query rows"
// of one (batch, kv head); with GQA those rows are (query row, head of the group) pairs, so the
// K/V tile it streams through shared memory serves every query head of the group.  4 warps x 16
// rows; 64-key tiles double-buffered with cp.async into XOR-swizzled shared memory (conflict-free
// ldmatrix); online softmax in the log2 domain; padded/masked keys get -inf.  When the grid would
// not fill the GPU (batch 1, few rows), the keys are split over blocks and a combine kernel
// merges the partial (max, sum, accumulator) triples (flash-decoding).  The pass also leaves the
// log2-sum-exp of every (batch, head, row).
//
// Probability pass (only when asked): a block owns 64 keys x 64 query rows of one batch and
// loops over heads, recomputing the scores with the tensor cores and normalising them with the
// stored log-sum-exp, so the head mean is summed in registers and (B, H, q, T) never exists.
// For small grids the heads are sliced over blocks that add their parts with float atomics.

#include <algorithm>
#include <cfloat>

#include "device_utils.cuh"
#include "launchers.h"

namespace dllm_core {
namespace cuda {
namespace {

constexpr int kBlockM = 64, kBlockN = 64, kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

// Element offset of 16-byte chunk `c` of row `r` in a swizzled [rows][D] tile: XOR-ing the chunk
// with the row's low 3 bits puts the 8 rows an ldmatrix reads into 8 different bank groups.
template <int D>
__device__ __forceinline__ int swz(int r, int c) { return r * D + ((c ^ (r & 7)) << 3); }

// 64 rows x D of a [T][..][D] tensor (row stride in elements) -> swizzled shared tile.
template <int D, typename T>
__device__ __forceinline__ void load_rows(T* s, const T* g, int64_t row_stride, int rows_valid) {
  constexpr int C = D / 8;
  for (int i = threadIdx.x; i < kBlockN * C; i += kThreads) {
    const int r = i / C, c = i % C;
    const bool ok = r < rows_valid;
    cp_async16(smem_addr(s + swz<D>(r, c)), ok ? g + r * row_stride + c * 8 : g, ok);
  }
}

// 64 query rows of a group-packed Q tile: packed row m -> (query row m / group, head m % group).
template <int D, typename T>
__device__ __forceinline__ void load_q(T* s, const AttentionParams& p, int b, int h0, int m0, int M, int group) {
  constexpr int C = D / 8;
  const T* q = static_cast<const T*>(p.q);
  for (int i = threadIdx.x; i < kBlockM * C; i += kThreads) {
    const int r = i / C, c = i % C, m = m0 + r;
    const bool ok = m < M;
    const T* src = q;
    if (ok) src = q + b * p.q_s[0] + (m / group) * p.q_s[1] + (h0 + m % group) * p.q_s[2] + c * 8;
    cp_async16(smem_addr(s + swz<D>(r, c)), src, ok);
  }
}

// This warp's 16 rows of a swizzled Q tile as m16n8k16 A fragments (one per 16-wide k step).
template <int D, typename T>
__device__ __forceinline__ void q_fragments(uint32_t (&qf)[D / 16][4], const T* sQ, int warp, int lane) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldmatrix_x4(smem_addr(sQ + swz<D>(warp * 16 + (lane & 15), 2 * kk + (lane >> 4))), qf[kk][0], qf[kk][1],
                qf[kk][2], qf[kk][3]);
}

// s[j] (keys 8j..8j+7 of the tile) = Q K^T for this warp's 16 rows.
template <int D, typename T>
__device__ __forceinline__ void qk_tile(float (&s)[8][4], const uint32_t (&qf)[D / 16][4], const T* sK, int lane) {
#pragma unroll
  for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int jp = 0; jp < 4; ++jp) {  // two 8-key column blocks per ldmatrix.x4
      uint32_t b0, b1, b2, b3;
      ldmatrix_x4(smem_addr(sK + swz<D>(jp * 16 + ((lane >> 4) << 3) + (lane & 7), 2 * kk + ((lane >> 3) & 1))),
                  b0, b1, b2, b3);
      mma16816<T>(s[2 * jp], qf[kk], b0, b1);
      mma16816<T>(s[2 * jp + 1], qf[kk], b2, b3);
    }
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attn_main_kernel(AttentionParams p, int tiles_per_split) {
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + kBlockM * D;   // 2 stages
  T* sV = sK + 2 * kBlockN * D;  // 2 stages
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int b = blockIdx.z / p.Hkv, g = blockIdx.z % p.Hkv, split = blockIdx.y;
  const int group = p.H / p.Hkv, M = p.n * group, m0 = blockIdx.x * kBlockM;
  const int n_tiles = (p.T + kBlockN - 1) / kBlockN;
  const int tile_begin = split * tiles_per_split;
  const int tile_end = min(n_tiles, tile_begin + tiles_per_split);
  const T* kbase = static_cast<const T*>(p.k) + b * p.k_s[0] + g * p.k_s[2];
  const T* vbase = static_cast<const T*>(p.v) + b * p.v_s[0] + g * p.v_s[2];
  const bool* mask = p.mask + b * p.mask_s0;
  const float scale_log2 = p.scale * kLog2e;

  auto load_kv = [&](int tile, int stage) {
    const int t0 = tile * kBlockN, valid = min(kBlockN, p.T - t0);
    load_rows<D>(sK + stage * kBlockN * D, kbase + t0 * p.k_s[1], p.k_s[1], valid);
    load_rows<D>(sV + stage * kBlockN * D, vbase + t0 * p.v_s[1], p.v_s[1], valid);
  };
  load_q<D>(sQ, p, b, g * group, m0, M, group);
  if (tile_begin < tile_end) load_kv(tile_begin, 0);
  cp_async_commit();

  uint32_t qf[D / 16][4];
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int stage = (tile - tile_begin) & 1;
    if (tile + 1 < tile_end) {  // prefetch the next tile into the other stage
      load_kv(tile + 1, stage ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (tile == tile_begin) q_fragments<D>(qf, sQ, warp, lane);

    float s[8][4];
    qk_tile<D>(s, qf, sK + stage * kBlockN * D, lane);

    // Scale into the log2 domain and mask; row max over the quad of lanes sharing a row.
    const int t0 = tile * kBlockN;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int t = t0 + j * 8 + 2 * (lane & 3) + (e & 1);
        const bool ok = t < p.T && mask[t];
        s[j][e] = ok ? s[j][e] * scale_log2 : -INFINITY;
        mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
      }
    }
    float m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m_run[r], mx[r]);
      m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // all masked so far: keep exp2 finite (gives 0)
      const float alpha = exp2f(m_run[r] - m_use[r]);
      m_run[r] = m_new;
      l_run[r] *= alpha;
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        o[dn][2 * r] *= alpha;
        o[dn][2 * r + 1] *= alpha;
      }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = exp2f(s[j][e] - m_use[e >> 1]);
        l_run[e >> 1] += s[j][e];
      }
    }

    // O += P V: the S accumulators of key blocks 2kk, 2kk+1 are exactly the A fragment of k step kk.
    const T* sVs = sV + stage * kBlockN * D;
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      const uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                             pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans(smem_addr(sVs + swz<D>(kk * 16 + (((lane >> 3) & 1) << 3) + (lane & 7), 2 * dp + (lane >> 4))),
                          b0, b1, b2, b3);
        mma16816<T>(o[2 * dp], a, b0, b1);
        mma16816<T>(o[2 * dp + 1], a, b2, b3);
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }
  cp_async_wait<0>();  // an empty split still has the Q copy in flight

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
    const int m = m0 + warp * 16 + (lane >> 2) + 8 * r;
    if (m >= M) continue;
    const int row = m / group, h = g * group + m % group;
    const int64_t bhr = (static_cast<int64_t>(b) * p.H + h) * p.n + row;
    if (gridDim.y == 1) {
      // l == 0 (every key masked): 0 * inf = NaN, as the reference's softmax gives.
      const float inv = 1.f / l_run[r];
      T* out = static_cast<T*>(p.out) + ((static_cast<int64_t>(b) * p.n + row) * p.H + h) * D + 2 * (lane & 3);
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn)
        *reinterpret_cast<uint32_t*>(out + dn * 8) = pack2<T>(o[dn][2 * r] * inv, o[dn][2 * r + 1] * inv);
      if (p.lse != nullptr && (lane & 3) == 0)
        p.lse[bhr] = l_run[r] > 0.f ? m_run[r] + log2f(l_run[r]) : -INFINITY;
    } else {
      const int64_t part = static_cast<int64_t>(split) * p.B * p.H * p.n + bhr;
      float* po = p.part_o + part * D + 2 * (lane & 3);
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn)
        *reinterpret_cast<float2*>(po + dn * 8) = make_float2(o[dn][2 * r], o[dn][2 * r + 1]);
      if ((lane & 3) == 0) *reinterpret_cast<float2*>(p.part_ml + part * 2) = make_float2(m_run[r], l_run[r]);
    }
  }
}

// Merges the key splits of each (batch, head, row): blockDim = (D / 4, 4), one row per y.
template <typename T, int D>
__global__ void attn_combine_kernel(AttentionParams p, int splits) {
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.n;
  const int64_t bhr = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (bhr >= rows) return;
  const int d = threadIdx.x * 4;
  float m_max = -INFINITY;
  for (int s = 0; s < splits; ++s) m_max = fmaxf(m_max, p.part_ml[(s * rows + bhr) * 2]);
  float l = 0.f, acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int s = 0; s < splits; ++s) {
    const float2 ml = *reinterpret_cast<const float2*>(p.part_ml + (s * rows + bhr) * 2);
    const float w = ml.x == -INFINITY ? 0.f : exp2f(ml.x - m_max);  // empty split weighs nothing
    const float4 po = *reinterpret_cast<const float4*>(p.part_o + (s * rows + bhr) * D + d);
    l += w * ml.y;
    acc[0] += w * po.x, acc[1] += w * po.y, acc[2] += w * po.z, acc[3] += w * po.w;
  }
  const int row = bhr % p.n, h = (bhr / p.n) % p.H, b = bhr / (static_cast<int64_t>(p.n) * p.H);
  T* out = static_cast<T*>(p.out) + ((static_cast<int64_t>(b) * p.n + row) * p.H + h) * D + d;
  const float inv = 1.f / l;  // l == 0: NaN output, as the reference
  *reinterpret_cast<uint2*>(out) = make_uint2(pack2<T>(acc[0] * inv, acc[1] * inv), pack2<T>(acc[2] * inv, acc[3] * inv));
  if (p.lse != nullptr && threadIdx.x == 0) p.lse[bhr] = l > 0.f ? m_max + log2f(l) : -INFINITY;
}

// Head-mean probabilities for 64 keys x 64 query rows of one batch, over a slice of kv heads.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attn_probs_kernel(AttentionParams p, int row_blocks, int kv_per_slice) {
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);   // 2 stages
  T* sK = sQ + 2 * kBlockM * D;         // 2 stages
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // Blocks sharing a key tile are adjacent in launch order (x fastest), so K is read from DRAM once.
  const int b = blockIdx.z, t0 = blockIdx.y * kBlockN;
  const int r0 = (blockIdx.x % row_blocks) * kBlockM, slice = blockIdx.x / row_blocks;
  const int group = p.H / p.Hkv;
  const int h_begin = slice * kv_per_slice * group, h_end = h_begin + kv_per_slice * group;
  const int valid_keys = min(kBlockN, p.T - t0);
  const T* kbase = static_cast<const T*>(p.k) + b * p.k_s[0] + t0 * p.k_s[1];
  const float scale_log2 = p.scale * kLog2e;

  // Which of this thread's 16 accumulator columns are attendable keys (the same for every head).
  uint32_t valid = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int c = j * 8 + 2 * (lane & 3) + e;
      if (c < valid_keys && p.mask[b * p.mask_s0 + t0 + c]) valid |= 1u << (2 * j + e);
    }

  auto issue = [&](int h) {
    const int i = h - h_begin;
    load_q<D>(sQ + (i & 1) * kBlockM * D, p, b, h, r0, p.n, 1);
    if (i % group == 0) {
      const int gi = i / group;
      load_rows<D>(sK + (gi & 1) * kBlockN * D, kbase + (h / group) * p.k_s[2], p.k_s[1], valid_keys);
    }
  };
  float acc[8][4];
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  issue(h_begin);
  cp_async_commit();
  for (int h = h_begin; h < h_end; ++h) {
    const int i = h - h_begin;
    if (h + 1 < h_end) {
      issue(h + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    uint32_t qf[D / 16][4];
    q_fragments<D>(qf, sQ + (i & 1) * kBlockM * D, warp, lane);
    float s[8][4];
    qk_tile<D>(s, qf, sK + ((i / group) & 1) * kBlockN * D, lane);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = r0 + warp * 16 + (lane >> 2) + 8 * r;
      const float lse = row < p.n ? p.lse[(static_cast<int64_t>(b) * p.H + h) * p.n + row] : 0.f;
      const float fill = lse == -INFINITY ? NAN : 0.f;  // no attendable key at all: NaN, as the reference
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          acc[j][2 * r + e] += (valid >> (2 * j + e)) & 1u ? exp2f(s[j][2 * r + e] * scale_log2 - lse) : fill;
    }
    __syncthreads();
  }

  const float inv_heads = 1.f / static_cast<float>(p.H);
  const bool atomic = gridDim.x > row_blocks;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = r0 + warp * 16 + (lane >> 2) + 8 * r;
    if (row >= p.n) continue;
    float* prow = p.probs + (static_cast<int64_t>(b) * p.n + row) * p.T + t0;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = j * 8 + 2 * (lane & 3) + e;
        if (c >= valid_keys) continue;
        const float v = acc[j][2 * r + e] * inv_heads;
        if (atomic) atomicAdd(prow + c, v); else prow[c] = v;
      }
  }
}

int num_sms(int device) {
  static int cache[64] = {0};
  if (device < 0 || device >= 64) return 132;
  if (cache[device] == 0) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || v <= 0) v = 132;
    cache[device] = v;
  }
  return cache[device];
}

template <typename T, int D>
cudaError_t launch_typed(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  const int group = p.H / p.Hkv, M = p.n * group;
  const size_t main_smem = sizeof(T) * D * (kBlockM + 4 * kBlockN);
  auto main_kernel = attn_main_kernel<T, D>;
  cudaError_t err = cudaFuncSetAttribute(main_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, main_smem);
  if (err != cudaSuccess) return err;
  const dim3 grid((M + kBlockM - 1) / kBlockM, plan.splits, p.B * p.Hkv);
  main_kernel<<<grid, kThreads, main_smem, stream>>>(p, plan.tiles_per_split);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if (plan.splits > 1) {
    const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.n;
    attn_combine_kernel<T, D><<<static_cast<unsigned>((rows + 3) / 4), dim3(D / 4, 4), 0, stream>>>(p, plan.splits);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  if (p.probs != nullptr) {
    const size_t probs_smem = sizeof(T) * D * (2 * kBlockM + 2 * kBlockN);
    auto probs_kernel = attn_probs_kernel<T, D>;
    err = cudaFuncSetAttribute(probs_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, probs_smem);
    if (err != cudaSuccess) return err;
    const dim3 pgrid(plan.row_blocks * plan.head_slices, (p.T + kBlockN - 1) / kBlockN, p.B);
    probs_kernel<<<pgrid, kThreads, probs_smem, stream>>>(p, plan.row_blocks, p.Hkv / plan.head_slices);
    err = cudaGetLastError();
  }
  return err;
}

}  // namespace

bool attention_supported(DType dtype, int head_dim) {
  return (dtype == DType::kBFloat16 || dtype == DType::kFloat16) && (head_dim == 64 || head_dim == 128);
}

AttentionPlan plan_attention(int B, int n, int H, int Hkv, int T, bool probs, int device) {
  AttentionPlan plan{1, 1, 1, 1};
  const int target = 2 * num_sms(device);  // two 80 KB blocks fit on an SM
  const int n_tiles = ceil_div(T, kBlockN);
  const int base = B * Hkv * ceil_div(n * (H / Hkv), kBlockM);
  plan.splits = base >= target ? 1 : std::min(std::min(n_tiles, ceil_div(target, base)), 64);
  plan.splits = std::max(plan.splits, 1);
  plan.tiles_per_split = ceil_div(n_tiles, plan.splits);
  plan.splits = ceil_div(n_tiles, plan.tiles_per_split);  // no empty split
  if (probs) {
    plan.row_blocks = ceil_div(n, kBlockM);
    const int pbase = n_tiles * plan.row_blocks * B;
    // Smallest divisor of Hkv that fills the GPU (atomics only where the grid needs them).
    plan.head_slices = Hkv;
    for (int s = 1; s <= Hkv; ++s)
      if (Hkv % s == 0 && pbase * s >= target) { plan.head_slices = s; break; }
  }
  return plan;
}

cudaError_t launch_partial_attention(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  if (p.B == 0 || p.n == 0 || p.T == 0) return cudaSuccess;
  const bool bf16 = p.dtype == DType::kBFloat16;
  if (p.D == 128) return bf16 ? launch_typed<__nv_bfloat16, 128>(p, plan, stream) : launch_typed<__half, 128>(p, plan, stream);
  if (p.D == 64) return bf16 ? launch_typed<__nv_bfloat16, 64>(p, plan, stream) : launch_typed<__half, 64>(p, plan, stream);
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace dllm_core
