// Bulk tensor copies (the Hopper copy engine, "TMA"; sm_90 PTX) of the wgmma main pass's K/V tiles
// (partial_attention_wgmma.cu): one producer thread asks for a whole [rows][64-column] block of one
// (batch, kv head) with one instruction, where cp.async costs each of the producer warpgroup's 128
// threads 32 copies (and their address arithmetic) per 128-key stage; the copy completes on the stage's
// mbarrier (mbarrier.cuh).  Measured on the H100 (docs/kernels.md, session 12): the wgmma pass 2-11%
// faster at batch 1 with probabilities.  Tried and not kept (history): the mma.sync main pass's K/V (commit
// bb11948: neutral at batch 1, up to 14% slower at batch 16) and the recomputing probability pass's Q and K
// (commit 586535f: more than 1% slower at 29 of the 48 ops_bench shapes, up to 10%).
//
// Layout: the tensor map views a (B, T, Hkv, D) 16-bit cache as 4-D {D, Hkv, T, B} (innermost first);
// a box is {64 columns, 1 head, ROWS keys, 1 batch} with the 128-byte swizzle, so it lands as a
// [ROWS][128-byte] column block whose 16-byte chunk c of row r sits at chunk position c ^ (r % 8) (the
// block 1024-byte aligned): the wgmma tiles' layout (wgmma.cuh).  Keys at or past T arrive as zeros.
#pragma once

#include <cuda.h>  // CUtensorMap and its enums only; the encoder is looked up at run time (no libcuda link)
#include <cuda_runtime_api.h>

#include <cstdint>

#include "mbarrier.cuh"

namespace dllm_core {
namespace cuda {
namespace tma {

// Host: the tensor map of a (B, T, Hkv, D) 16-bit tensor at `base` with element strides s (b, t, h; the
// last dim contiguous) and boxes of `rows` keys.  False where a tensor map cannot describe it (base not
// 16-byte aligned, a stride not a multiple of 16 bytes, the driver without the entry point, or the
// encoder refusing): the caller then copies with cp.async.  The encoder's error is cleared.
inline bool encode_kv_map(CUtensorMap* map, const void* base, int B, int T, int Hkv, int D, const int64_t (&s)[3],
                          int rows) {
  using Encode = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                              const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
  static Encode encode = []() -> Encode {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return nullptr;
    }
    return reinterpret_cast<Encode>(fn);
  }();
  if (encode == nullptr || (reinterpret_cast<uintptr_t>(base) & 15) != 0 || D % 64 != 0) return false;
  for (int i = 0; i < 3; ++i)
    if (s[i] <= 0 || (s[i] * 2) % 16 != 0) return false;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(Hkv), static_cast<cuuint64_t>(T),
                              static_cast<cuuint64_t>(B)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(s[2] * 2), static_cast<cuuint64_t>(s[1] * 2),
                                 static_cast<cuuint64_t>(s[0] * 2)};
  const cuuint32_t box[4] = {64, 1, static_cast<cuuint32_t>(rows), 1}, unit[4] = {1, 1, 1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 4, const_cast<void*>(base), dims, strides, box, unit,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Device: the box at (column c0, kv head, key, batch) into shared memory at dst (1024-byte aligned),
// completing `bar`'s transaction count, with L2 policy `policy` (l2_policy).
__device__ __forceinline__ void load_box(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int head,
                                         int key, int batch, uint64_t policy) {
  DLLM_SM90_ASM(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1, {%2, %3, %4, %5}], [%6], %7;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(head), "r"(key), "r"(batch), "r"(bar), "l"(policy)
      : "memory");
}

// One thread: announces a K/V stage's bytes on `bar` and copies ROWS keys x D of K to k_dst and of V to
// v_dst (D / 64 column blocks each, ROWS x 128 bytes apart).
template <int D, int ROWS>
__device__ __forceinline__ void load_kv_stage(uint32_t k_dst, uint32_t v_dst, uint32_t bar, const CUtensorMap* k_map,
                                              const CUtensorMap* v_map, int head, int key, int batch,
                                              uint64_t k_policy, uint64_t v_policy) {
  mbar_arrive_expect_tx(bar, 2u * ROWS * D * 2);
#pragma unroll
  for (int c = 0; c < D / 64; ++c) {
    load_box(k_dst + c * ROWS * 128, k_map, bar, 64 * c, head, key, batch, k_policy);
    load_box(v_dst + c * ROWS * 128, v_map, bar, 64 * c, head, key, batch, v_policy);
  }
}

}  // namespace tma
}  // namespace cuda
}  // namespace dllm_core
