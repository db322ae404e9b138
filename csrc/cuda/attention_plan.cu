// Launch plan of dllm_core::partial_attention on CUDA (plan_attention, declared in launchers.h): which
// main-pass variant (row tile, K/V stages, mma.sync or wgmma), how many key splits, and the probability
// pass's row tile and head slices, per call from the shapes and the device; plus the device facts it
// needs (num_sms) and the DLLM_CORE_ATTN_* overrides.  The kernels are in partial_attention*.cu.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "attention_scores.cuh"

namespace dllm_core {
namespace cuda {
namespace {

// Integer from the environment when set and accepted by `ok`, else `fallback` (plan overrides
// for benchmarking and for switching a broken variant off without a rebuild).
template <typename Ok>
int env_int(const char* name, int fallback, Ok ok) {
  const char* s = std::getenv(name);
  if (s == nullptr || *s == '\0') return fallback;
  const int v = std::atoi(s);
  return ok(v) ? v : fallback;
}

}  // namespace

// Integer attribute of a device, cached per device; `fallback` when the query fails (its error cleared, so
// that the next launch's cudaGetLastError does not report it) or the device index is out of range.
template <cudaDeviceAttr kAttr>
static int cached_attribute(int device, int fallback) {
  static int cache[64] = {0};
  if (device < 0 || device >= 64) return fallback;
  if (cache[device] == 0) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, kAttr, device) != cudaSuccess || v <= 0) {
      (void)cudaGetLastError();
      v = fallback;
    }
    cache[device] = v;
  }
  return cache[device];
}

// Multiprocessor count of a device (132 when the query fails).
int num_sms(int device) { return cached_attribute<cudaDevAttrMultiProcessorCount>(device, 132); }

// L2 cache bytes of a device (50 MB, the H100's, when the query fails).
static long l2_bytes(int device) { return cached_attribute<cudaDevAttrL2CacheSize>(device, 50 << 20); }

bool attention_supported(DType dtype, int head_dim) {
  return (dtype == DType::kBFloat16 || dtype == DType::kFloat16) && (head_dim == 64 || head_dim == 128);
}

AttentionPlan plan_attention(int B, int n, int H, int Hkv, int T, int D, bool probs, int device) {
  AttentionPlan plan{1, 1, 1, 1, 64, 64, 2, 2, 0, 0, 0, 0, 0, 0};
  plan.pdl = pdl_enabled(device) ? 1 : 0;
  const int sms = num_sms(device), n_tiles = ceil_div(T, kBlockN), M = n * (H / Hkv);
  // Main pass: the smallest row tile that holds the rows of a (batch, kv head), up to 128.
  plan.rows = env_int("DLLM_CORE_ATTN_ROWS", M <= 32 ? 32 : M <= 64 ? 64 : 128,
                      [](int v) { return v == 32 || v == 64 || v == 128; });
  // Main-pass MMA (plan.mma): 1 = wgmma (partial_attention_wgmma.cu: 128 rows, compute capability 9.0
  // with the sm_90a image), 0 = mma.sync.  DLLM_CORE_ATTN_MMA=wgmma forces wgmma wherever it applies (a
  // 128-row tile or M > 64), =sync forces mma.sync.  The automatic choice takes wgmma for every 128-row
  // tile (measured on the H100, 2026-11-23: faster than mma.sync and SDPA flash at batch 1 and at
  // batch 16 from T = 2048; kAutoWgmma = false goes back to mma.sync unless forced).
  constexpr bool kAutoWgmma = true;
  const char* mma_env = std::getenv("DLLM_CORE_ATTN_MMA");
  const bool force_wgmma = mma_env != nullptr && std::strcmp(mma_env, "wgmma") == 0;
  const bool force_sync = mma_env != nullptr && std::strcmp(mma_env, "sync") == 0;
  const bool wgmma_rows = force_wgmma ? plan.rows == 128 || M > 64 : kAutoWgmma && !force_sync && plan.rows == 128;
  if (wgmma_rows && wgmma_available(device)) plan.mma = 1, plan.rows = 128;
  // K/V ring depth (resident blocks/SM at D = 128; the plan does not see D, and D = 64 needs half the
  // shared memory): the 64-row variant keeps 2 blocks/SM with 3 stages (80 -> 112 KB), so it takes
  // them when its grid fills the GPU unsplit; the 128-row one would drop from 2 to 1 (96 -> 128 KB; its 4 warps need company), so it
  // keeps 2.  The 32-row one drops from 3 to 2 (72 -> 104 KB); it is memory bound, a wave of k
  // blocks/SM takes ~k/2 times as long as one of 2, so a grid too large to split takes 3 stages
  // where ceil(blocks / 2 SMs) x 2 < ceil(blocks / 3 SMs) x 3: LLaDA batch 16 q = 32 (512 blocks)
  // ran 1.3 waves of 396 slots, its last wave a third full, and fills 2 waves of 264 instead.
  // Measured on the H100 (2026-11-23): 3 stages won only on grids too large to split (batch 16:
  // up to 8% faster) and lost 2-5% where keys are split (batch 1), so split grids keep 2 stages.
  const long blocks64 = static_cast<long>(B) * Hkv * ceil_div(M, 64);
  int stages = plan.rows == 64 && blocks64 >= 2L * sms ? 3 : 2;
  if (plan.rows == 32) {
    const long blocks = static_cast<long>(B) * Hkv * ceil_div(M, 32);
    if (blocks >= 3L * sms && (blocks + 2L * sms - 1) / (2L * sms) * 2 < (blocks + 3L * sms - 1) / (3L * sms) * 3)
      stages = 3;
  }
  plan.stages = env_int("DLLM_CORE_ATTN_STAGES", stages, [](int v) { return v == 2 || v == 3; });
  if (plan.mma == 1) plan.stages = 3;  // the wgmma kernel's fixed ring of 128-key stages (kWgStages)
  // Resident blocks per SM at D = 128 (shared memory, 2 / 3 stages: 72 / 104 KB at 32 rows, 80 / 112
  // at 64, 96 / 128 at 128; the 128-row variant also needs ~255 registers per thread).
  // wgmma: 1 (225 KB; 384 threads: producer 40 + 2 consumer warpgroups x 232 registers); its grid is
  // persistent (min(SMs, blocks x splits) blocks looping over the work units), so splits are still
  // chosen as for one wave of 1 block/SM: only where B x Hkv x row tiles leaves SMs idle.
  const int per_sm = plan.mma == 1 ? 1
                     : plan.rows == 32 ? (plan.stages == 2 ? 3 : 2) : plan.rows == 64 ? 2 : (plan.stages == 2 ? 2 : 1);
  const int target = per_sm * sms;
  const int base = B * Hkv * ceil_div(M, plan.rows);
  // Key splits, where B x Hkv x row tiles leaves resident slots idle: minimise the K/V tiles of the
  // busiest SM (tiles per split x its blocks, each block after the first weighted `shared`), plus, when
  // splitting, 0.5 tile for the combine kernel and 2 x the float32 partials every split block writes
  // and the combine reads back (rows x D x 4 bytes each way = rows / 64 K/V tiles each way, spread over
  // the slots); ties go to fewer splits.  shared = 1 for wgmma (its persistent grid runs a block's units
  // one after another) and 0.75 for mma.sync (co-resident blocks, latency bound at batch 1, slow each
  // other down by less than a second wave would).  Fit on the H100, batch-1 ops_bench shapes x split
  // counts: with shared = 1 (benchmarks/results/h100-session4-splits.json) 1.4% above the best count on
  // average, 7% at worst, where the previous model (waves x tiles per split + 2 + partials) was 6.7% / 53%
  // above, over-splitting the mma.sync tiles (8 splits where 4 ran 21% faster at LLaDA q64 T1024) and
  // leaving Dream-7B q128 T512 unsplit; after the combine's batched loads (h100-session7-splits.json, with
  // and without probabilities) shared = 0.75 for mma.sync is 1.13% above on average instead of 1.58%
  // (session-4 sweep: 1.61% instead of 2.10%), giving LLaDA-8B q32 T2048/4096 and q64 T4096 8 splits
  // instead of 4: 3-8% faster in medians of 3 repeats (spread 0.1-0.8 us).  The partials term keeps
  // Dream-7B at q=128, T=4096 off 64 one-tile splits (0.3x of SDPA flash when its partials outweighed its
  // GQA-small K/V reads).
  // The wgmma kernel streams 128-key tiles: its automatic splits take whole ones (an even tiles_per_split;
  // a forced split count may still end a split inside a tile, which the kernel masks).
  const int max_splits = std::min(n_tiles, 64), unit = plan.mma == 1 ? 2 : 1;
  const double shared = plan.mma == 1 ? 1.0 : 0.75;
  double best_cost = -1.0;
  for (int s = 1; s <= max_splits && base < target; ++s) {
    const int tps = unit * ceil_div(ceil_div(n_tiles, unit), s), eff = ceil_div(n_tiles, tps);
    if (eff != s) continue;  // same as a smaller count
    const long busiest = (static_cast<long>(base) * eff + sms - 1) / sms;  // blocks on the busiest SM
    const double partials = static_cast<double>(base) * eff * (plan.rows / 32) / target;
    const double cost = tps * (1.0 + shared * static_cast<double>(busiest - 1)) + (eff > 1 ? 0.5 + 2.0 * partials : 0.0);
    if (best_cost < 0.0 || cost < best_cost - 1e-9) best_cost = cost, plan.splits = eff;
  }
  plan.splits = env_int("DLLM_CORE_ATTN_SPLITS", plan.splits, [](int v) { return v >= 1 && v <= 64; });
  plan.splits = std::max(1, std::min(plan.splits, n_tiles));
  plan.tiles_per_split = ceil_div(n_tiles, plan.splits);
  plan.splits = ceil_div(n_tiles, plan.tiles_per_split);  // no empty split
  if (probs) {
    plan.probs_rows = env_int("DLLM_CORE_ATTN_PROBS_ROWS", n <= 32 ? 32 : 64, [](int v) { return v == 32 || v == 64; });
    plan.row_blocks = ceil_div(n, plan.probs_rows);
    // Resident blocks, shared-memory bound at D = 128: 48 / 64 KB per block with 2 stages, 72 / 96 KB with 3.
    auto slots = [&](int stages) { return ((plan.probs_rows == 32 ? 4 : 3) - (stages - 2)) * sms; };
    const long pbase = static_cast<long>(n_tiles) * plan.row_blocks * B;
    // Head slices: the divisor s of H (query heads) minimising
    //   ceil(pbase s / slots) * H / s           the busiest slot's serial head iterations
    //   + 3 (s - 1) B n T / 1e6                 the atomic adds of s > 1 slices (1 M floats ~ 3 iterations)
    // (ties: fewer slices).  Fit on the H100 over the 48 ops_bench shapes x 6 slice counts: with float4
    // atomics (benchmarks/results/h100-session6-slices-float4.json) 0.2% above the best count on average,
    // 6% at worst (the scalar-atomic fit, 5 per M, h100-session4-slices.json, was 0.8% / 9% then and is
    // 0.6% / 9% now); the first rule (smallest divisor of Hkv that fills the slots) was 10.6% / 59% above.
    auto slices_for = [&](int stages) {
      double best_cost = -1.0;
      int best = 1;
      for (int s = 1; s <= H; ++s) {
        if (H % s != 0) continue;
        const double cost = static_cast<double>((pbase * s + slots(stages) - 1) / slots(stages)) * (H / s) +
                            3e-6 * (s - 1) * static_cast<double>(B) * n * T;
        if (best_cost < 0.0 || cost < best_cost) best_cost = cost, best = s;
      }
      return best;
    };
    // Ring depth: 3 stages (two heads in flight) for 64-row blocks whose grid fits in one wave of the
    // 3-stage slots, else 2.  Sweep on the H100 (benchmarks/results/h100-session5-probs-stages.json, 48
    // shapes): where this takes 3 stages (22 shapes), 1-6% faster at 18 and 1-6% slower at 4 (batch 1,
    // within its run-to-run spread); 32-row blocks and multi-wave grids were 2-34% slower with 3.
    const int auto_stages = plan.probs_rows == 64 && pbase * slices_for(3) <= slots(3) ? 3 : 2;
    plan.probs_stages = env_int("DLLM_CORE_ATTN_PROBS_STAGES", auto_stages, [](int v) { return v == 2 || v == 3; });
    plan.head_slices = slices_for(plan.probs_stages);
    plan.head_slices = env_int("DLLM_CORE_ATTN_HEAD_SLICES", plan.head_slices,
                               [H](int v) { return v >= 1 && v <= H && H % v == 0; });
    // Key halves (two warps per 16-row slab, 32 keys each: half the dependent MMA and exponential chain per
    // warp) for 32-row blocks.  A/B on the H100 over the 48 ops_bench shapes (session 7,
    // benchmarks/results/h100-session7-key-halves-{on,off}.json): 32-row blocks 0.89x-1.00x the time (batch
    // 1: 0.89x-0.99x), 64-row blocks 0.93x-1.08x (slower at LLaDA batch 1 and at batch 16), so 64-row
    // blocks keep one warp per slab.  DLLM_CORE_ATTN_PROBS_KEY_HALVES=0/1 overrides.
    plan.probs_key_halves = env_int("DLLM_CORE_ATTN_PROBS_KEY_HALVES", plan.probs_rows == 32 ? 1 : 0,
                                    [](int v) { return v == 0 || v == 1; });
    // Stored scores (attention_scores.cuh): the main pass writes its (B, H, n, T) float32 scores (mode 1) or
    // float16 exponentials (mode 2) and one streaming kernel merges the splits and sums the probabilities, in
    // place of the combine kernel and the recomputing pass.  Two cases, measured on the H100:
    // - Split calls whose float32 scores fit in 1/6 of L2 (8.7 MB of 50; 11 batch-1 ops_bench shapes): it
    //   saves a kernel boundary.  Session 8 (mode 1 against 0,
    //   benchmarks/results/h100-session8-scores-mode{0,1}-b1.json and -mode{0,1}.json): 0.77x-1.06x the time (Dream-7B q=64 T=512 18.0 -> 15.0 us); unsplit (LLaDA q=128
    //   T=512) 1.03x-1.08x, larger scores 0.92x-1.39x.  Mode 2 there (session 9, every mode forced in one call,
    //   h100-session9-scores-modes-final.json) beats mode 1 behind the mma.sync main pass (LLaDA-8B q=32
    //   T=1024 17.8 vs 18.8 us) and loses behind wgmma (Dream-7B q=64 T=512 17.4 vs 14.8: its extra float16
    //   conversions sit in the consumers' softmax).
    // - DRAM-bound calls, where the recomputing pass reads K a second time (2 D bytes per key and kv head)
    //   and mode 2 writes and reads back 2 group n bytes per key and kv head, a written byte costing ~1.4
    //   read ones: mode 2 where 2.4 group n <= D (LLaDA-8B q=32: 0.89x-0.91x the time at batch 16; q=64,
    //   1.03x-1.19x, and every Dream-7B shape, 1.28x-1.62x, stay recomputing).
    // DLLM_CORE_ATTN_PROBS_SCORES=0/1/2 overrides (1 and 2 still need H <= kScoreMaxHeads, the pass's table).
    const double scores_bytes = 4.0 * B * H * n * (ceil_div(T, 128) * 128.0);
    const bool small = plan.splits > 1 && scores_bytes <= l2_bytes(device) / 6.0;
    const int auto_scores = small ? (plan.mma == 0 ? 2 : 1) : 2.4 * (H / Hkv) * n <= D ? 2 : 0;
    plan.probs_scores = env_int("DLLM_CORE_ATTN_PROBS_SCORES", auto_scores, [](int v) { return v >= 0 && v <= 2; });
    if (H > kScoreMaxHeads) plan.probs_scores = 0;
  }
  // L2 hints (bits; DLLM_CORE_ATTN_L2_HINTS=0..7 overrides).  1: the main pass copies K/V evict-first, so that
  // streaming them pushes neither the stored scores nor other data out of the L2, where one block reads each
  // tile (one row tile per (batch, kv head); GQA's several row tiles may find it in L2) and the call reads at
  // most 8 L2s of K/V.  2: the stored-scores pass drops each scratch line it has read from the L2 without
  // writing it back.  4: the main pass stores the scores evict-last where they fit in the L2, so they are
  // still there when the streaming pass reads them (and bit 2 then drops them).  Measured on the H100
  // (2026-11-23, every hint forced on and off over the 48 ops_bench shapes, both L2 flushes,
  // benchmarks/results/h100-session10-l2-hints-*.json):
  // - bit 1: 0.90x-0.96x the time at LLaDA-8B batch 1, T >= 2048, and at batch 16 q=32 T=512 with probabilities
  //   (0.90x under the read flush); 1.02x-1.06x at LLaDA-8B batch 16 T >= 2048 (537 MB of K/V and more);
  // - bit 2: 0.92x-0.97x for Dream-7B's stored float32 scores at batch 1 (read flush), within noise elsewhere;
  // - bit 4 on top (h100-session10-evict-last.json, two repeats): LLaDA-8B batch 16 q=32 T=512 / 1024 72.8 ->
  //   70.2 us / 132.6 -> 127.6 us, batch 1 q=32 T=4096 42.0 -> 39.7 us; 67 MB of exponentials (T=2048),
  //   more than the L2, within noise.
  const double kv_bytes = 4.0 * B * T * Hkv * D;  // K and V, 16-bit
  const bool kv_hint = ceil_div(M, plan.rows) == 1 && kv_bytes <= 8.0 * static_cast<double>(l2_bytes(device));
  const int stored = probs ? plan.probs_scores : 0;
  const double stored_bytes = (stored == 1 ? 4.0 : 2.0) * B * H * n * (ceil_div(T, 128) * 128.0);
  const bool keep_scores = stored != 0 && stored_bytes <= static_cast<double>(l2_bytes(device));
  plan.l2_hints = env_int("DLLM_CORE_ATTN_L2_HINTS", (kv_hint ? 1 : 0) | 2 | (keep_scores ? 4 : 0),
                          [](int v) { return v >= 0 && v <= 7; });
  // Bulk tensor copies of the wgmma pass's K/V tiles (tma.cuh).  Measured on the H100 (session 12, with and
  // without at every ops_bench shape that takes wgmma, benchmarks/results/h100-session12-tma-*; means over the
  // runs): GQA (Dream-7B) batch 1 0-10% faster (with probabilities q=64 T=2048 26.1 -> 23.6 us), batch 16 from 6%
  // faster to 3% slower (q=128 T=2048 164.7 -> 155.0 us; q=32 T=512 19.4 -> 19.9); MHA (LLaDA-8B q=128) with
  // probabilities 1-9% faster at batch 1, within 0.4% at batch 16; MHA without them 1-4% slower except batch 1
  // T=512 (batch 16 T=512 70.5 -> 73.0 us), with or without the evict-first hint, so those calls keep cp.async.
  // DLLM_CORE_ATTN_TMA=0/1 overrides (wgmma only).
  const bool tma_auto = Hkv < H || probs;
  plan.tma = plan.mma == 1 ? env_int("DLLM_CORE_ATTN_TMA", tma_auto ? 1 : 0, [](int v) { return v == 0 || v == 1; }) : 0;
  if (const char* trace = std::getenv("DLLM_CORE_ATTN_TRACE"); trace != nullptr && *trace == '1')
    std::fprintf(stderr, "partial_attention plan: B=%d n=%d H=%d Hkv=%d T=%d rows=%d stages=%d splits=%d "
                 "tiles_per_split=%d probs=%d probs_rows=%d probs_stages=%d row_blocks=%d head_slices=%d mma=%d "
                 "pdl=%d probs_key_halves=%d probs_scores=%d l2_hints=%d tma=%d\n", B, n, H, Hkv, T, plan.rows, plan.stages,
                 plan.splits, plan.tiles_per_split, probs ? 1 : 0, plan.probs_rows, plan.probs_stages, plan.row_blocks,
                 plan.head_slices, plan.mma, plan.pdl, plan.probs_key_halves, plan.probs_scores,
                 plan.l2_hints, plan.tma);
  return plan;
}

}  // namespace cuda
}  // namespace dllm_core
