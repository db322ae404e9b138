// wgmma (sm_90a) main pass of dllm_core::partial_attention for 128-row tiles: same contract, work
// units, key splits and epilogue as attn_main_kernel (partial_attention.cu), picked by plan.mma == 1.
//
// FlashAttention-3's recipe.  A work unit is 128 rows of one (batch, kv head) and split -- with GQA a row
// is a (query row, head of the group) pair, so one K/V tile serves the whole group.  The grid is
// persistent (kPersistent): a block (384 threads = three warpgroups) runs units blockIdx.x + i gridDim.x,
// its producer running ahead across unit boundaries (next Q and K/V tiles land under the epilogue).  Warp specialisation: warpgroup 0 is the producer (setmaxnreg.dec to kProducerRegs): it copies
// Q and then 128-key K/V tiles with cp.async into a ring of kWgStages stages; each thread's
// cp.async.mbarrier.arrive.noinc completes the stage's "full" mbarrier once its copies landed.  With TMA
// (plan.tma) its thread 0 alone copies the K/V tiles as bulk tensor copies (tma.cuh, same layout) that
// complete the stage's "full" mbarrier; Q stays on cp.async.
// Warpgroups 1 and 2 are consumers (setmaxnreg.inc to kConsumerRegs) of 64 rows each: they wait on
// "full", fence the async proxy (cp.async writes through the generic proxy, wgmma reads through the
// async one), and hand the stage back through its "empty" mbarrier (one arrival per consumer warp) once
// their last wgmma reading it is done.  No block-wide barrier after the prologue.
//
// Per 128-key tile a consumer issues S = Q K^T as D / 16 wgmma m64n128k16 (Q and K from shared memory,
// K-major; S = 64 fp32 registers per thread) and O += P V as 8 wgmma m64nDk16 (P from registers: the
// S accumulator converted in place, its layout is the A fragment's; V MN-major, transposed).  Tiles
// use the 128-byte swizzle (layout: wgmma.cuh).  Iteration i (FA3's intra-warpgroup overlap):
//     wait full(i);  [ping-pong: bar.sync own];  issue S_i = Q K_i;  O *= alpha_{i-1};
//     issue O += P_{i-1} V_{i-1};  [bar.arrive other];  wait for S_i;  softmax(S_i) -> m, l, alpha_i;
//     wait for P_{i-1} V_{i-1};  release stage i - 1;  P_i = S_i packed to 16 bits
// so the softmax of S_i runs under P_{i-1} V_{i-1}.  Ping-pong (named barriers 1 and 2, 256 threads):
// the two consumers issue their GEMMs in turn, so one's softmax overlaps the other's GEMMs; consumer 1
// starts with an arrival for consumer 0, matched by consumer 0's last bar.sync after its final unit
// (every bar.sync meets one bar.arrive).  Across units: the ring's tile counter and the Q buffer's phase
// run on; Q's hand-off has its own mbarriers (q_full, q_empty: released after the unit's last S = Q K^T).
//
// Keys: the split's range [key_begin, key_end) (tiles_per_split counts 64-key tiles; a split may end
// inside a 128-key tile) is covered by ceil(len / 128) tiles; keys past key_end are zero-filled and -inf.
// Only the sm_90a image has the kernel; elsewhere (compute_90 PTX, other targets) its body traps, and
// wgmma_available() refuses such images (see there), so the plan never picks it on them.

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "attention_tiles.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace dllm_core {
namespace cuda {
namespace {

constexpr int kWgThreads = 384, kWgRows = 128, kWgKeys = 128, kWgStages = 3;
// kPersistent: grid = min(SMs, work units), each block loops over units (see launch_wgmma); false = one
// block per unit (round 2's grid).  Same kernel either way.
constexpr bool kPersistent = true;
constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // 128 x 40 + 256 x 232 <= 64 K registers
static_assert(kWgKeys % kBlockN == 0 && 128 * kProducerRegs + 256 * kConsumerRegs <= 65536, "budgets");

template <int D>
struct WgConfig {
  static constexpr uint32_t kQBytes = kWgRows * D * 2, kTileBytes = kWgKeys * D * 2;  // K or V of a stage
  static constexpr uint32_t kBarOffset = kQBytes + 2 * kWgStages * kTileBytes;  // full[S], empty[S], q_full, q_empty
  static constexpr size_t kSmem = kBarOffset + 16 * kWgStages + 16 + 1024;  // + slack for the 1024-alignment
  static_assert(D == 64 || D == 128, "head dim");
  static_assert(kSmem <= 227 * 1024, "shared memory per block");
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr bool kPingPong = true;  // the consumers' GEMMs take turns (named barriers 1 and 2)

// Online softmax of one 64-row x 128-key S tile in the log2 domain (rows lane / 4 and + 8 of the warp's
// 16): keys not in `valid` -inf; row max over the quad sharing a row; alpha rescales the older O and l.
// valid[2 h + e]: bit 4 j of it is this thread's column e of key block j of half h (see the caller).
// store(s, m_run) sees the scaled, masked scores before the exponentials (stored-scores mode 1) or the
// exponentials and the running max they used (mode 2).
template <int SCORES, typename Store>
__device__ __forceinline__ void softmax_tile(float (&s)[64], const uint32_t (&valid)[4], float scale_log2,
                                             float (&m_run)[2], float (&l_run)[2], float (&alpha)[2], Store&& store) {
  float mx[2] = {-INFINITY, -INFINITY}, m_use[2], sum[2] = {0.f, 0.f};
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float& x = s[4 * j + e];
      x = (valid[(j >> 3) * 2 + (e & 1)] >> (4 * (j & 7))) & 1u ? x * scale_log2 : -INFINITY;
      mx[e >> 1] = fmaxf(mx[e >> 1], x);
    }
  if constexpr (SCORES == 1) store(s, m_run);
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
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float& x = s[4 * j + e];
      x = fast_exp2(x - m_use[e >> 1]);
      sum[e >> 1] += x;
    }
  if constexpr (SCORES == 2) store(s, m_run);
  l_run[0] = l_run[0] * alpha[0] + sum[0];
  l_run[1] = l_run[1] * alpha[1] + sum[1];
}
#endif

// Work units: (batch x kv head, split, 128-row tile), the row tile fastest (blocks next to each other
// share K/V through L2).  unit_at decodes one; count = its 128-key tiles (0: nothing to do).
struct WgGrid {
  int tiles_per_split, splits, row_tiles, units;
};
struct WgUnit {
  int b, g, m0, split, key_begin, key_end, count;
};
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ WgUnit unit_at(const AttentionParams& p, const WgGrid& w, int u) {
  WgUnit un;
  const int rest = u / w.row_tiles, bg = rest / w.splits;
  un.m0 = (u - rest * w.row_tiles) * kWgRows, un.split = rest - bg * w.splits;
  un.b = bg / p.Hkv, un.g = bg - un.b * p.Hkv;
  un.key_begin = un.split * w.tiles_per_split * kBlockN;
  un.key_end = min(p.T, un.key_begin + w.tiles_per_split * kBlockN);
  un.count = un.key_end > un.key_begin ? (un.key_end - un.key_begin + kWgKeys - 1) / kWgKeys : 0;
  return un;
}
#endif

// SCORES: the stored-scores mode, plan.probs_scores (0 none, 1 float32 scores, 2 float16 exponentials;
// attention_scores.cuh); a template value: a runtime check made the plain kernel up to 8% slower at batch 1
// (session 8, Dream-7B q=32 T=512 9.5 -> 10.3 us).  TMA: K/V by bulk tensor copies through k_map / v_map
// (boxes of kWgKeys keys; unused otherwise).
template <typename T, int D, int SCORES, bool TMA>
__global__ void __launch_bounds__(kWgThreads, 1)
    attn_wgmma_kernel(AttentionParams p, WgGrid w, const __grid_constant__ CUtensorMap k_map,
                      const __grid_constant__ CUtensorMap v_map) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = WgConfig<D>;
  extern __shared__ unsigned char smem[];
  const uint32_t sQ = (smem_addr(smem) + 1023u) & ~1023u;  // Q: 128 rows; then stage s: K, V (128 rows each)
  const uint32_t sKV = sQ + Cfg::kQBytes, bars = sQ + Cfg::kBarOffset;
  auto full = [&](uint32_t st) { return bars + 8 * st; };
  auto empty = [&](uint32_t st) { return bars + 8 * (kWgStages + st); };
  const uint32_t q_full = bars + 16 * kWgStages, q_empty = q_full + 8;
  const int wg = threadIdx.x >> 7, lane = threadIdx.x & 31;
  const int group = p.H / p.Hkv, M = p.n * group;

  if (threadIdx.x == 0) {
    for (int st = 0; st < kWgStages; ++st) mbar_init(full(st), TMA ? 1 : 128), mbar_init(empty(st), 8);
    mbar_init(q_full, 128), mbar_init(q_empty, 8);
    if constexpr (TMA) mbar_init_fence();
  }
  __syncthreads();  // the barriers' init, before any thread uses them
  pdl_launch_dependents();  // the combine / probability kernel may be scheduled (pdl.cuh)
  zero_probs_share(p, blockIdx.x, gridDim.x);

  // Ring bookkeeping runs on across units: gt counts the block's K/V tiles so far (stage gt % S, phase
  // gt / S), qi its units with tiles (Q buffer phase qi).
  if (wg == 0) {  // ---- producer: per unit K/V tile 0, Q (once the consumers released the last one), the rest
    wg::setmaxnreg_dec<kProducerRegs>();
    const uint64_t k_policy = kv_l2_policy<SCORES>(p, true), v_policy = kv_l2_policy<SCORES>(p, false);
    uint32_t gt = 0, qi = 0;
    for (int u = blockIdx.x; u < w.units; u += gridDim.x) {
      const WgUnit un = unit_at(p, w, u);
      auto load_kv = [&](int i) {  // tile i of the unit -> stage gt % S, once tile gt - S was released
        const uint32_t st = gt % kWgStages;
        const int t0 = un.key_begin + i * kWgKeys;
        const uint32_t dst = sKV + 2 * st * Cfg::kTileBytes;
        if constexpr (TMA) {  // keys past key_end but before T arrive as data: the consumers mask them
          if (threadIdx.x == 0) {
            if (gt >= kWgStages) mbar_wait(empty(st), (gt / kWgStages - 1) & 1);
            tma::load_kv_stage<D, kWgKeys>(dst, dst + Cfg::kTileBytes, full(st), &k_map, &v_map, un.g, t0, un.b,
                                           k_policy, v_policy);
          }
        } else {
          const int valid = min(kWgKeys, un.key_end - t0);
          if (gt >= kWgStages) mbar_wait(empty(st), (gt / kWgStages - 1) & 1);
          const T* kbase = static_cast<const T*>(p.k) + un.b * p.k_s[0] + un.g * p.k_s[2];
          const T* vbase = static_cast<const T*>(p.v) + un.b * p.v_s[0] + un.g * p.v_s[2];
          const T* kt = kbase + t0 * p.k_s[1];
          const T* vt = vbase + t0 * p.v_s[1];
          wg::load_tile<D, kWgKeys, 128, true>(dst, [&](int r) { return kt + r * p.k_s[1]; }, valid, kbase, k_policy);
          wg::load_tile<D, kWgKeys, 128, true>(dst + Cfg::kTileBytes, [&](int r) { return vt + r * p.v_s[1]; },
                                               valid, vbase, v_policy);
          cp_async_arrive_noinc(full(st));
        }
        ++gt;
      };
      if (un.count == 0) continue;
      load_kv(0);
      {  // Q after tile 0: the wait for the previous unit's Q release does not hold up tile 0
        const T* q = static_cast<const T*>(p.q);
        const T* qb = q + un.b * p.q_s[0] + (un.g * group) * p.q_s[2];
        const int m0 = un.m0;
        auto q_row = [&](int r) { const int m = m0 + r; return qb + (m / group) * p.q_s[1] + (m % group) * p.q_s[2]; };
        if (qi > 0) mbar_wait(q_empty, (qi - 1) & 1);
        wg::load_tile<D, kWgRows, 128>(sQ, q_row, M - m0, q);
        cp_async_arrive_noinc(q_full);
        ++qi;
      }
      for (int i = 1; i < un.count; ++i) load_kv(i);
    }
    cp_async_wait<0>();  // no copy outlives its thread
  } else {  // ---- consumers: 64 rows each
    wg::setmaxnreg_inc<kConsumerRegs>();
    const int cw = wg - 1, warp = (threadIdx.x >> 5) & 3;
    const float scale_log2 = p.scale * kLog2e;
    // Ping-pong: consumer c issues its GEMMs after bar.sync(1 + c) and lets the other go with
    // bar.arrive(2 - c); consumer 1 opens with an arrival for consumer 0, which consumer 0 matches with
    // one last bar.sync after its final unit (every bar.sync meets one bar.arrive, however many units).
    auto sched_sync = [&]() { if constexpr (kPingPong) wg::bar_sync(1 + cw, 256); };
    auto sched_arrive = [&]() { if constexpr (kPingPong) wg::bar_arrive(2 - cw, 256); };
    auto k_tile = [&](uint32_t t) { return sKV + 2 * (t % kWgStages) * Cfg::kTileBytes; };
    auto release = [&](uint32_t t) { if (lane == 0) mbar_arrive(empty(t % kWgStages)); };
    const uint32_t q_wg = sQ + cw * 64 * 128;  // this warpgroup's rows (column block 0)
    if (kPingPong && cw == 1) wg::bar_arrive(1, 256);  // consumer 0 goes first
    uint32_t gt = 0, qi = 0;

    for (int u = blockIdx.x; u < w.units; u += gridDim.x) {
      const WgUnit un = unit_at(p, w, u);
      const bool* mask = p.mask + un.b * p.mask_s0;
      // Attendable keys of tile i, loaded before the full wait: lane l reads keys 64 h + 2 l + e of the
      // tile; bit 4 j of valid[2 h + e] >> (lane % 4) is this thread's column e of key block j of half h.
      auto key_bits = [&](int i, uint32_t (&valid)[4]) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int t = un.key_begin + i * kWgKeys + 64 * h + 2 * lane;
          const bool k0 = t < un.key_end && mask[t], k1 = t + 1 < un.key_end && mask[t + 1];
          valid[2 * h] = __ballot_sync(0xffffffffu, k0) >> (lane & 3);
          valid[2 * h + 1] = __ballot_sync(0xffffffffu, k1) >> (lane & 3);
        }
      };
      float o[D / 2], s[64], m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f}, alpha[2] = {1.f, 1.f};
      uint32_t pf[32];
#pragma unroll
      for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
#pragma unroll
      for (int i = 0; i < 64; ++i) s[i] = 0.f;
#pragma unroll
      for (int i = 0; i < 32; ++i) pf[i] = 0u;
      auto rescale_o = [&]() {
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[4 * dn + e] *= alpha[e >> 1];
      };

      // Stored-scores modes: tile i's scores, or its exponentials and running max (rows as the epilogue's).
      auto store = [&](int i) {
        return [&, i](const float (&x)[64], const float (&mr)[2]) {
          const int m = un.m0 + cw * 64 + warp * 16 + (lane >> 2), t0 = un.key_begin + i * kWgKeys;
          auto at = [&](int j, int e) { return x[4 * j + e]; };
          if constexpr (SCORES != 0)
            store_scores<SCORES == 2, 16>(p, un.b, un.g * group, group, m, M, t0, un.key_end, lane, mr, at);
        };
      };
      const int count = un.count;
      if (count > 0) {
        const uint32_t g0 = gt;  // the block's index of this unit's tile 0
        uint32_t valid[4];
        key_bits(0, valid);
        mbar_wait(q_full, qi & 1);
        mbar_wait(full(g0 % kWgStages), (g0 / kWgStages) & 1);
        wg::fence_proxy_async();
        sched_sync();
        wg::pin(s);
        wg::fence();
        wg::qk<T, D, kWgRows, kWgKeys>(s, q_wg, k_tile(g0));
        wg::commit();
        sched_arrive();
        wg::wait<0>();
        wg::pin(s);
        if (count == 1 && lane == 0) mbar_arrive(q_empty);  // last read of Q done
        softmax_tile<SCORES>(s, valid, scale_log2, m_run, l_run, alpha, store(0));
        wg::pack_p<T, kWgKeys>(pf, s);

        for (int i = 1; i < count; ++i) {
          const uint32_t t = g0 + i;
          key_bits(i, valid);
          mbar_wait(full(t % kWgStages), (t / kWgStages) & 1);
          wg::fence_proxy_async();
          sched_sync();
          wg::pin(s), wg::pin(o), wg::pin(pf);
          wg::fence();
          wg::qk<T, D, kWgRows, kWgKeys>(s, q_wg, k_tile(t));
          wg::commit();
          rescale_o();  // by alpha_{i-1}: no P V in flight
          wg::pin(o);
          wg::fence();
          wg::pv<T, D, kWgKeys>(o, pf, k_tile(t - 1) + Cfg::kTileBytes);
          wg::commit();
          sched_arrive();
          wg::wait<1>();  // S_i landed; P_{i-1} V_{i-1} runs on under the softmax
          wg::pin(s);
          if (i == count - 1 && lane == 0) mbar_arrive(q_empty);  // last read of Q done: reload it
          softmax_tile<SCORES>(s, valid, scale_log2, m_run, l_run, alpha, store(i));
          // A basic-block boundary (a wait on full(t), complete since the top of the iteration: a loop)
          // keeps ptxas from hoisting the next wait above the exponentials (it did, serialising them).
          mbar_wait(full(t % kWgStages), (t / kWgStages) & 1);
          wg::wait<0>();
          wg::pin(o), wg::pin(pf), wg::pin(s);
          release(t - 1);
          wg::pack_p<T, kWgKeys>(pf, s);
        }
        // The last tile's P V.
        rescale_o();
        sched_sync();
        wg::pin(o), wg::pin(pf);
        wg::fence();
        wg::pv<T, D, kWgKeys>(o, pf, k_tile(g0 + count - 1) + Cfg::kTileBytes);
        wg::commit();
        sched_arrive();
        wg::wait<0>();
        wg::pin(o);
        release(g0 + count - 1);
        gt = g0 + count, ++qi;
      }

      // Epilogue, as attn_main_kernel's: out and the log2-sum-exp, or the split partials.  Its stores
      // run while the producer already fills the ring (and Q) with the next unit.
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float l = l_run[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const int m = un.m0 + cw * 64 + warp * 16 + (lane >> 2) + 8 * r;
        if (m >= M) continue;
        const int row = m / group, h = un.g * group + m % group;
        const int64_t bhr = (static_cast<int64_t>(un.b) * p.H + h) * p.n + row;
        if (w.splits == 1) {
          const float inv = 1.f / l;  // l == 0 (every key masked): NaN, as the reference
          T* out = static_cast<T*>(p.out) + ((static_cast<int64_t>(un.b) * p.n + row) * p.H + h) * D + 2 * (lane & 3);
#pragma unroll
          for (int dn = 0; dn < D / 8; ++dn)
            *reinterpret_cast<uint32_t*>(out + dn * 8) = pack2<T>(o[4 * dn + 2 * r] * inv, o[4 * dn + 2 * r + 1] * inv);
          if (p.lse != nullptr && (lane & 3) == 0) p.lse[bhr] = l > 0.f ? m_run[r] + log2f(l) : -INFINITY;
        } else {
          const int64_t part = static_cast<int64_t>(un.split) * p.B * p.H * p.n + bhr;
          float* po = p.part_o + part * D + 2 * (lane & 3);
#pragma unroll
          for (int dn = 0; dn < D / 8; ++dn)
            *reinterpret_cast<float2*>(po + dn * 8) = make_float2(o[4 * dn + 2 * r], o[4 * dn + 2 * r + 1]);
          if ((lane & 3) == 0) *reinterpret_cast<float2*>(p.part_ml + part * 2) = make_float2(m_run[r], l);
        }
      }
    }
    if (kPingPong && cw == 0) wg::bar_sync(1, 256);  // consumer 1's last arrival
  }
#else
  __trap();  // not an sm_90a image: never launched (wgmma_available)
#endif
}

// Persistent grid (kPersistent): min(SMs, units) blocks (1 resident per SM), unit u on block u % grid;
// DLLM_CORE_ATTN_WGMMA_GRID=k caps the grid at k blocks (tests: many units per block).  Off: one block
// per unit (round 2's grid, flattened), same kernel.
template <typename T, int D, bool TMA>
cudaError_t launch_wgmma_variant(const AttentionParams& p, const AttentionPlan& plan, const CUtensorMap& k_map,
                                 const CUtensorMap& v_map, cudaStream_t stream) {
  const int mode = p.scores == nullptr ? 0 : plan.probs_scores;
  auto kernel = mode == 2   ? attn_wgmma_kernel<T, D, 2, TMA>
                : mode == 1 ? attn_wgmma_kernel<T, D, 1, TMA>
                            : attn_wgmma_kernel<T, D, 0, TMA>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, WgConfig<D>::kSmem);
  if (err != cudaSuccess) return err;
  const int M = p.n * (p.H / p.Hkv);
  WgGrid w{plan.tiles_per_split, plan.splits, (M + kWgRows - 1) / kWgRows, 0};
  const long units = static_cast<long>(w.row_tiles) * plan.splits * p.B * p.Hkv;
  if (units <= 0 || units > INT_MAX) return units <= 0 ? cudaSuccess : cudaErrorInvalidValue;
  w.units = static_cast<int>(units);
  int blocks = w.units;
  if (kPersistent) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) (void)cudaGetLastError(), device = -1;
    blocks = std::min(blocks, num_sms(device));
    const char* cap = std::getenv("DLLM_CORE_ATTN_WGMMA_GRID");
    if (cap != nullptr && std::atoi(cap) > 0) blocks = std::min(blocks, std::atoi(cap));
  }
  kernel<<<blocks, kWgThreads, WgConfig<D>::kSmem, stream>>>(p, w, k_map, v_map);
  return cudaGetLastError();
}

// plan.tma: bulk tensor copies where the tensor maps of K and V can be made, else cp.async.
template <typename T, int D>
cudaError_t launch_wgmma(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  CUtensorMap k_map{}, v_map{};
  if (plan.tma == 1 && tma::encode_kv_map(&k_map, p.k, p.B, p.T, p.Hkv, D, p.k_s, kWgKeys) &&
      tma::encode_kv_map(&v_map, p.v, p.B, p.T, p.Hkv, D, p.v_s, kWgKeys))
    return launch_wgmma_variant<T, D, true>(p, plan, k_map, v_map, stream);
  return launch_wgmma_variant<T, D, false>(p, plan, k_map, v_map, stream);
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
           cudaFuncGetAttributes(&attr, attn_wgmma_kernel<__nv_bfloat16, 128, 0, false>) == cudaSuccess && attr.numRegs >= 64;
    if (!ok) (void)cudaGetLastError();
    if (!ok && current >= 0 && current != device) return false;  // not cached: ask again from that device
    cache[device] = ok ? 1 : -1;
  }
  return cache[device] == 1;
}

cudaError_t launch_attention_wgmma(const AttentionParams& p, const AttentionPlan& plan, cudaStream_t stream) {
  return with_attention_types(p, [&](auto t, auto d) { return launch_wgmma<decltype(t), decltype(d)::value>(p, plan, stream); });
}

}  // namespace cuda
}  // namespace dllm_core
