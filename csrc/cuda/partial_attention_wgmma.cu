// wgmma (sm_90a) main pass of dllm_core::partial_attention for 128-row tiles: same contract, grid,
// key splits and epilogue as attn_main_kernel (partial_attention.cu), picked by plan.mma == 1.
//
// A block (256 threads = two warpgroups) owns 128 rows of one (batch, kv head) -- with GQA a row is a
// (query row, head of the group) pair, so one K/V tile serves the whole group -- and each warpgroup 64
// of them.  Per 64-key tile a warpgroup issues S = Q K^T as 8 (D = 128; 4 at D = 64) wgmma
// m64n64k16 with Q and K from shared memory (K-major), and O += P V as 4 wgmma m64nDk16 with P from
// registers (the S accumulator converted in place: its layout is the A fragment's) and V from shared
// memory (MN-major, transposed).  Tiles use the 128-byte swizzle (layout: wgmma.cuh).
//
// Pipelining.  All 256 threads copy with cp.async into a ring of 5 K/V stages, 2 tiles ahead of the one
// computed; each thread waits for its own copies and fences the async proxy (wgmma reads shared memory
// through it), then one barrier per tile publishes the tile.  Within a warpgroup the softmax of tile i
// overlaps the P V product of tile i - 1 (FlashAttention-3's intra-warpgroup overlap); iteration i:
//     barrier;  wait for P_{i-2} V_{i-2};  O *= alpha_{i-1};  P_{i-1} = S_{i-1} (packed to 16 bits);
//     issue S_i = Q K_i;  issue O += P_{i-1} V_{i-1};  wait for S_i;  softmax(S_i) -> m, l, alpha_i
// and the two warpgroups interleave their GEMMs and softmax on the SM's tensor cores and ALUs.  The
// P V wait sits after the next barrier because ptxas hoisted it above the exponentials when both were
// in one basic block (measured in the SASS); so a P V may still read its V stage after the barrier,
// and the refill goes to the stage of tile i - 3 (5 stages, 2 ahead).  Registers: S 32 + P 16 + O 64
// floats (D = 128) per thread, 181 in all; 1 block (8 warps) per SM, 193 KB of shared memory.
//
// Only the sm_90a image has the kernel; elsewhere (compute_90 PTX, other targets) its body traps, and
// wgmma_available() refuses such images (see there), so the plan never picks it on them.

#include "attention_tiles.cuh"
#include "wgmma.cuh"

namespace dllm_core {
namespace cuda {
namespace {

// K/V ring of kWgStages tiles: see the kernel's kAhead.
constexpr int kWgThreads = 256, kWgRows = 128, kWgStages = 5;

template <int D>
struct WgConfig {
  static constexpr uint32_t kQBytes = kWgRows * D * 2, kTileBytes = kBlockN * D * 2;
  static constexpr size_t kSmem = kQBytes + 2 * kWgStages * kTileBytes + 1024;  // + slack for 1024-alignment
  static_assert(D == 64 || D == 128, "head dim");
  static_assert(kSmem <= 227 * 1024, "shared memory per block");
};

template <typename T, int D>
__global__ void __launch_bounds__(kWgThreads, 1) attn_wgmma_kernel(AttentionParams p, int tiles_per_split) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = WgConfig<D>;
  // Tile i + kAhead is copied while tile i is computed, into the stage of tile i - 3: the newest one no
  // thread can still be reading (P_{i-2} V_{i-2} may run until after iteration i's barrier).
  constexpr int kAhead = kWgStages - 3;
  extern __shared__ unsigned char smem[];
  const uint32_t sQ = (smem_addr(smem) + 1023u) & ~1023u;  // Q: 128 rows; then stage s: K, V (64 rows each)
  const uint32_t sKV = sQ + Cfg::kQBytes;
  const int wgi = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const int b = blockIdx.z / p.Hkv, g = blockIdx.z % p.Hkv, split = blockIdx.y;
  const int group = p.H / p.Hkv, M = p.n * group, m0 = blockIdx.x * kWgRows;
  const int n_tiles = (p.T + kBlockN - 1) / kBlockN;
  const int tile_begin = split * tiles_per_split;
  const int count = min(n_tiles, tile_begin + tiles_per_split) - tile_begin;
  const T* q = static_cast<const T*>(p.q);
  const T* kbase = static_cast<const T*>(p.k) + b * p.k_s[0] + g * p.k_s[2];
  const T* vbase = static_cast<const T*>(p.v) + b * p.v_s[0] + g * p.v_s[2];
  const bool* mask = p.mask + b * p.mask_s0;
  const float scale_log2 = p.scale * kLog2e;

  auto load_kv = [&](int tile, int stage) {
    const int t0 = tile * kBlockN, valid = min(kBlockN, p.T - t0);
    const uint32_t dst = sKV + 2 * stage * Cfg::kTileBytes;
    const T* kt = kbase + t0 * p.k_s[1];
    const T* vt = vbase + t0 * p.v_s[1];
    wg::load_tile<D, kBlockN, kWgThreads>(dst, [&](int r) { return kt + r * p.k_s[1]; }, valid, kbase);
    wg::load_tile<D, kBlockN, kWgThreads>(dst + Cfg::kTileBytes, [&](int r) { return vt + r * p.v_s[1]; }, valid, vbase);
  };
  // Prologue: Q with tile 0 (one commit group), then tiles 1 .. kAhead - 1; groups are committed even
  // when empty so that "tile i landed" is always wait_group<kAhead - 1> at iteration i.
  {
    const T* qb = q + b * p.q_s[0] + (g * group) * p.q_s[2];
    auto q_row = [&](int r) { const int m = m0 + r; return qb + (m / group) * p.q_s[1] + (m % group) * p.q_s[2]; };
    wg::load_tile<D, kWgRows, kWgThreads>(sQ, q_row, M - m0, q);
  }
#pragma unroll
  for (int r = 0; r < kAhead; ++r) {
    if (r < count) load_kv(tile_begin + r, r);
    cp_async_commit();
  }

  float o[D / 2], s[32];
  uint32_t pf[16];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
#pragma unroll
  for (int i = 0; i < 32; ++i) s[i] = 0.f;
#pragma unroll
  for (int i = 0; i < 16; ++i) pf[i] = 0u;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f}, alpha[2] = {1.f, 1.f};
  const uint32_t q_wg = sQ + wgi * 64 * 128;  // this warpgroup's rows (column block 0)
  auto k_stage = [&](int i) { return sKV + 2 * (i % kWgStages) * Cfg::kTileBytes; };
  // O *= alpha once P_{i-2} V_{i-2} is done, then P_{i-1} = S_{i-1} (its registers are free then).
  auto rescale_and_pack = [&]() {
    wg::wait<0>();
    wg::pin(o), wg::pin(pf);
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[4 * dn + e] *= alpha[e >> 1];
    wg::pack_p<T>(pf, s);
  };

  for (int i = 0; i < count; ++i) {
    const int t0 = (tile_begin + i) * kBlockN;
    // Attendable keys, read before the wait (see attn_main_kernel): bit 4j of valid[e] >> (lane % 4)
    // is this thread's column e of key block j.
    uint32_t valid[2];
    {
      const int t = t0 + 2 * lane;
      const bool k0 = t < p.T && mask[t], k1 = t + 1 < p.T && mask[t + 1];
      valid[0] = __ballot_sync(0xffffffffu, k0) >> (lane & 3);
      valid[1] = __ballot_sync(0xffffffffu, k1) >> (lane & 3);
    }
    cp_async_wait<kAhead - 1>();  // this thread's copies of tile i (and Q) landed
    wg::fence_proxy_async();      // ... and are visible to wgmma's async proxy (also orders the reads
                                  // of tile i - 3, retired by the last wait, before its refill)
    __syncthreads();              // every thread's copies; every thread past its wait for P_{i-3} V_{i-3}
    if (i + kAhead < count) load_kv(tile_begin + i + kAhead, (i + kAhead) % kWgStages);  // tile i - 3's stage
    cp_async_commit();
    // The wait for P_{i-2} V_{i-2} sits behind the barrier, where the compiler cannot hoist it above
    // the softmax of S_{i-1} (it did when the two shared a basic block, serialising them).
    if (i > 0) rescale_and_pack();

    wg::pin(s), wg::pin(o), wg::pin(pf);
    wg::fence();
    wg::qk<T, D, kWgRows>(s, q_wg, k_stage(i));
    wg::commit();
    if (i > 0) {
      wg::pv<T, D>(o, pf, k_stage(i - 1) + Cfg::kTileBytes);
      wg::commit();
      wg::wait<1>();  // S_i landed; P_{i-1} V_{i-1} runs on under the softmax
    } else {
      wg::wait<0>();
    }
    wg::pin(s);

    // Online softmax in the log2 domain on S_i (rows lane / 4 and + 8 of the warp's 16): masked and
    // padded keys -inf; row max over the quad sharing a row; O's rescale waits for P V.
    float mx[2] = {-INFINITY, -INFINITY}, m_use[2], sum[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float& x = s[4 * j + e];
        x = (valid[e & 1] >> (4 * j)) & 1u ? x * scale_log2 : -INFINITY;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m_run[r], mx[r]);
      m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // all masked so far: keep exp2 finite (gives 0)
      alpha[r] = fast_exp2(m_run[r] - m_use[r]);
      m_run[r] = m_new;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float& x = s[4 * j + e];
        x = fast_exp2(x - m_use[e >> 1]);
        sum[e >> 1] += x;
      }
    l_run[0] = l_run[0] * alpha[0] + sum[0];
    l_run[1] = l_run[1] * alpha[1] + sum[1];
  }
  if (count > 0) {  // the last tile's P V
    rescale_and_pack();
    wg::pin(o), wg::pin(pf);
    wg::fence();
    wg::pv<T, D>(o, pf, k_stage(count - 1) + Cfg::kTileBytes);
    wg::commit();
    wg::wait<0>();
    wg::pin(o);
  }
  cp_async_wait<0>();  // (empty groups; an empty split still has the Q copy in flight)

  // Epilogue, as attn_main_kernel's: out and the log2-sum-exp, or the split partials.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_run[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int m = m0 + wgi * 64 + warp * 16 + (lane >> 2) + 8 * r;
    if (m >= M) continue;
    const int row = m / group, h = g * group + m % group;
    const int64_t bhr = (static_cast<int64_t>(b) * p.H + h) * p.n + row;
    if (gridDim.y == 1) {
      const float inv = 1.f / l;  // l == 0 (every key masked): NaN, as the reference
      T* out = static_cast<T*>(p.out) + ((static_cast<int64_t>(b) * p.n + row) * p.H + h) * D + 2 * (lane & 3);
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn)
        *reinterpret_cast<uint32_t*>(out + dn * 8) = pack2<T>(o[4 * dn + 2 * r] * inv, o[4 * dn + 2 * r + 1] * inv);
      if (p.lse != nullptr && (lane & 3) == 0) p.lse[bhr] = l > 0.f ? m_run[r] + log2f(l) : -INFINITY;
    } else {
      const int64_t part = static_cast<int64_t>(split) * p.B * p.H * p.n + bhr;
      float* po = p.part_o + part * D + 2 * (lane & 3);
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn)
        *reinterpret_cast<float2*>(po + dn * 8) = make_float2(o[4 * dn + 2 * r], o[4 * dn + 2 * r + 1]);
      if ((lane & 3) == 0) *reinterpret_cast<float2*>(p.part_ml + part * 2) = make_float2(m_run[r], l);
    }
  }
#else
  __trap();  // not an sm_90a image: never launched (wgmma_available)
#endif
}

template <typename T, int D>
cudaError_t launch_wgmma(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  auto kernel = attn_wgmma_kernel<T, D>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, WgConfig<D>::kSmem);
  if (err != cudaSuccess) return err;
  const int M = p.n * (p.H / p.Hkv);
  const dim3 grid((M + kWgRows - 1) / kWgRows, plan.splits, p.B * p.Hkv);
  kernel<<<grid, kWgThreads, WgConfig<D>::kSmem, stream>>>(p, plan.tiles_per_split);
  return cudaGetLastError();
}

}  // namespace

// Compute capability 9.0 and the sm_90a image loaded for it.  The image is told apart from the
// compute_90 PTX fallback (whose body is a trap) by its register count: the real kernel holds 64+
// accumulators per thread, the trap a handful.  Cached per device; failed queries are cleared so that
// the next launch's cudaGetLastError does not report them.
bool wgmma_available(int device) {
  static signed char cache[64] = {0};  // 0 unknown, 1 yes, -1 no
  if (device < 0 || device >= 64) return false;
  if (cache[device] == 0) {
    int major = 0, minor = 0;
    bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
              cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess &&
              major == 9 && minor == 0;
    int current = -1;
    cudaFuncAttributes attr{};
    if (ok)  // cudaFuncGetAttributes describes the current device's image
      ok = cudaGetDevice(&current) == cudaSuccess && current == device &&
           cudaFuncGetAttributes(&attr, attn_wgmma_kernel<__nv_bfloat16, 128>) == cudaSuccess && attr.numRegs >= 64;
    if (!ok) (void)cudaGetLastError();
    if (!ok && current >= 0 && current != device) return false;  // not cached: ask again from that device
    cache[device] = ok ? 1 : -1;
  }
  return cache[device] == 1;
}

cudaError_t launch_attention_wgmma(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  const bool bf16 = p.dtype == DType::kBFloat16;
  if (p.dtype != DType::kBFloat16 && p.dtype != DType::kFloat16) return cudaErrorInvalidValue;
  if (p.D == 128) return bf16 ? launch_wgmma<__nv_bfloat16, 128>(p, plan, stream) : launch_wgmma<__half, 128>(p, plan, stream);
  if (p.D == 64) return bf16 ? launch_wgmma<__nv_bfloat16, 64>(p, plan, stream) : launch_wgmma<__half, 64>(p, plan, stream);
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace dllm_core
