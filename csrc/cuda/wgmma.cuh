// Hopper warpgroup MMA (wgmma, sm_90a only) building blocks of the wgmma main pass of
// partial_attention (partial_attention_wgmma.cu); benchmarks/wgmma_probe.cu checks them in isolation.
//
// Shared-memory tiles: a [rows][D] tile of 16-bit elements is stored as D / 64 column blocks, each
// [rows][128 bytes] (64 elements per row), with the 128-byte swizzle: the 16-byte chunk c (0..7) of
// row r of a block sits at chunk position c ^ (r % 8).  An 8-row group is one 1024-byte swizzle atom;
// tiles start 1024-byte aligned, since wgmma applies the swizzle to address bits (bits 4-6 ^= bits 7-9).
// One layout serves every operand:
//   - K-major (Q as A and K as B of S = Q K^T; the reduction dim D is contiguous): 8-row groups 1024 bytes
//     apart (SBO), LBO unused (1); k step kk (16 columns = 32 bytes) starts at column block kk / 4, byte
//     32 (kk % 4) of the row: the hardware swizzles the advanced address as the copy did.
//   - MN-major (V as B of O = P V, transposed: the output dim D is contiguous): key groups of 8 rows
//     1024 bytes apart (SBO), the 64-column blocks KEYS rows x 128 bytes apart (LBO); k step kk (16 keys)
//     starts 2048 bytes further.
// The accumulator of m64nNk16 gives warp w of the warpgroup rows 16 w + lane / 4 (+ 8), columns
// 8 j + 2 (lane % 4) (+ 1) in d[4 j + e] (e: bit 0 column, bit 1 row + 8), the m16n8 layout of mma.sync
// per warp; a register A fragment of k step kk is that layout's key blocks 2 kk, 2 kk + 1 packed in pairs.
#pragma once

#include <type_traits>

#include "device_utils.cuh"
#include "mbarrier.cuh"

namespace dllm_core {
namespace cuda {
namespace wg {

// Byte offset of 16-byte chunk c (0 .. D/8 - 1) of row r in a swizzled tile of ROWS rows.
template <int ROWS>
__host__ __device__ constexpr uint32_t chunk_offset(int r, int c) {
  return static_cast<uint32_t>((c >> 3) * ROWS * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

// Matrix descriptor: start address, LBO, SBO (all >> 4), swizzle mode 1 = 128 bytes (bits 62-63);
// base offset 0 (tiles 1024-byte aligned).  Advancing the start by `bytes` adds bytes >> 4.
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFFu) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32) | (1ull << 62);
}

// ROWS rows of D columns -> swizzled tile at shared address dst; THREADS threads, each copying one
// chunk column of every STEP-th row (STEP a multiple of 8, so the swizzle is one offset per thread).
// row_ptr(r) is global row r for r < rows_valid; later rows are zero-filled (`any`: a valid address).
// HINT: the copies carry L2 cache policy `policy` (l2_policy).
template <int D, int ROWS, int THREADS, bool HINT = false, typename T, typename RowPtr>
__device__ __forceinline__ void load_tile(uint32_t dst, RowPtr row_ptr, int rows_valid, const T* any,
                                          uint64_t policy = 0) {
  auto copy = [policy](uint32_t d, const void* src, bool ok) {
    if constexpr (HINT) cp_async16(d, src, ok, policy); else cp_async16(d, src, ok);
  };
  constexpr int C = D / 8, STEP = THREADS / C;
  static_assert(THREADS % C == 0 && STEP % 8 == 0 && ROWS % STEP == 0, "copy split");
  const int c = threadIdx.x % C, r0 = threadIdx.x / C;
  const uint32_t d0 = dst + chunk_offset<ROWS>(r0, c);
  if (rows_valid >= ROWS) {  // full tile: no predicates
#pragma unroll
    for (int k = 0; k < ROWS / STEP; ++k) copy(d0 + k * STEP * 128, row_ptr(r0 + k * STEP) + c * 8, true);
  } else {
#pragma unroll
    for (int k = 0; k < ROWS / STEP; ++k) {
      const bool ok = r0 + k * STEP < rows_valid;
      copy(d0 + k * STEP * 128, ok ? row_ptr(r0 + k * STEP) + c * 8 : any, ok);
    }
  }
}

__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Ordinary / cp.async shared-memory writes -> later wgmma (async proxy) reads, and back.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving accesses of in-flight wgmma registers across fence/commit/wait.
template <int N>
__device__ __forceinline__ void pin(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void pin(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

#define DLLM_WG_F8(d, i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                         "+f"(d[i + 6]), "+f"(d[i + 7])
#define DLLM_WG_F32(d) DLLM_WG_F8(d, 0), DLLM_WG_F8(d, 8), DLLM_WG_F8(d, 16), DLLM_WG_F8(d, 24)
#define DLLM_WG_D32                                                                                                    \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
  "%24, %25, %26, %27, %28, %29, %30, %31}"
#define DLLM_WG_D64                                                                                                    \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
  "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, "  \
  "%46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d[64xN] (+)= A[64x16] B[16xN], A and B K-major in shared memory; scale_d = 0 overwrites d; N = 64 or 128.
#define DLLM_WG_SS64(TY)                                                                                  \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                              \
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " DLLM_WG_D32 ", %32, %33, p, 1, 1, 0, 0;\n}\n" \
               : DLLM_WG_F32(d)                                                                           \
               : "l"(da), "l"(db), "r"(scale_d))
#define DLLM_WG_SS128(TY)                                                                                 \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                              \
               "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " DLLM_WG_D64 ", %64, %65, p, 1, 1, 0, 0;\n}\n" \
               : DLLM_WG_F32(d), DLLM_WG_F8(d, 32), DLLM_WG_F8(d, 40), DLLM_WG_F8(d, 48), DLLM_WG_F8(d, 56)    \
               : "l"(da), "l"(db), "r"(scale_d))
template <typename T, int N>
__device__ __forceinline__ void mma_ss(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d) {
  static_assert(N == 64 || N == 128, "output width");
  constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 64) {
    if constexpr (bf16) DLLM_WG_SS64("bf16");
    else DLLM_WG_SS64("f16");
  } else {
    if constexpr (bf16) DLLM_WG_SS128("bf16");
    else DLLM_WG_SS128("f16");
  }
}

// d[64xN] += A[64x16] (registers) B[16xN], B MN-major (transposed) in shared memory; N = 64 or 128.
#define DLLM_WG_RS64(TY)                                                                                        \
  asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " DLLM_WG_D32                          \
               ", {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"                                                     \
               : DLLM_WG_F32(d)                                                                                 \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db))
#define DLLM_WG_RS128(TY)                                                                                       \
  asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " DLLM_WG_D64                         \
               ", {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"                                                     \
               : DLLM_WG_F32(d), DLLM_WG_F8(d, 32), DLLM_WG_F8(d, 40), DLLM_WG_F8(d, 48), DLLM_WG_F8(d, 56)    \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db))
template <typename T, int N>
__device__ __forceinline__ void mma_rs(float (&d)[N / 2], const uint32_t* a, uint64_t db) {
  static_assert(N == 64 || N == 128, "output width");
  constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 64) {
    if constexpr (bf16) DLLM_WG_RS64("bf16");
    else DLLM_WG_RS64("f16");
  } else {
    if constexpr (bf16) DLLM_WG_RS128("bf16");
    else DLLM_WG_RS128("f16");
  }
}

// s (this warpgroup's 64 rows x KEYS keys) = Q K^T.  q: the warpgroup's first row in a Q tile of QROWS
// rows (column block 0); k: a KEYS-key tile (64: m64n64k16, 128: m64n128k16).  Issues D / 16 wgmmas
// (no fence / commit / wait).
template <typename T, int D, int QROWS, int KEYS>
__device__ __forceinline__ void qk(float (&s)[KEYS / 2], uint32_t q, uint32_t k) {
  const uint64_t dq = make_desc(q, 16, 1024), dk = make_desc(k, 16, 1024);
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t oq = (kk / 4) * QROWS * 128 + (kk % 4) * 32, ok = (kk / 4) * KEYS * 128 + (kk % 4) * 32;
    mma_ss<T, KEYS>(s, dq + (oq >> 4), dk + (ok >> 4), kk > 0);
  }
}

// o (64 rows x D) += P V: p holds the KEYS keys' A fragments (4 registers per 16-key step), v a KEYS-key
// tile (its D / 64 column blocks KEYS x 128 bytes apart: the LBO).
template <typename T, int D, int KEYS>
__device__ __forceinline__ void pv(float (&o)[D / 2], const uint32_t (&p)[KEYS / 4], uint32_t v) {
  const uint64_t dv = make_desc(v, KEYS * 128, 1024);
#pragma unroll
  for (int kk = 0; kk < KEYS / 16; ++kk) mma_rs<T, D>(o, p + 4 * kk, dv + ((kk * 2048) >> 4));
}

// The 64 x N probabilities of an S accumulator as the A fragments of P V (pairs rounded to T).
template <typename T, int N>
__device__ __forceinline__ void pack_p(uint32_t (&p)[N / 4], const float (&s)[N / 2]) {
#pragma unroll
  for (int i = 0; i < N / 4; ++i) p[i] = pack2<T>(s[2 * i], s[2 * i + 1]);
}

// ---- Warp specialisation: named barriers, register budgets (the mbarriers: mbarrier.cuh).
// Named barrier `id` (1..15; 0 is __syncthreads) over `threads` threads: sync waits, arrive does not.
__device__ __forceinline__ void bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }

}  // namespace wg
}  // namespace cuda
}  // namespace dllm_core
