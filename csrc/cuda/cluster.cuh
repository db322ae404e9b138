// Thread-block cluster primitives (sm_90): the block's rank in its cluster, split cluster barriers and loads
// from a peer block's shared memory (distributed shared memory).
//
// barrier.cluster.arrive.release / wait.acquire: every thread of every block of the cluster must arrive, so the
// pair also syncs the block, and shared-memory writes made before the arrive are visible to the peers after
// their wait.  Work placed between the two overlaps the barrier's latency.  The forms without .aligned stay
// correct where a warp has not reconverged.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dllm_core {
namespace cuda {

__device__ __forceinline__ uint32_t cluster_ctarank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_nctarank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory"); }

// The shared::cluster address of a local shared-memory address (smem_addr) in block `rank` of the cluster.
__device__ __forceinline__ uint32_t dsmem_addr(uint32_t local_smem_addr, uint32_t rank) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(local_smem_addr), "r"(rank));
  return r;
}
// Loads from a peer's shared memory.  Not volatile and without a memory clobber, so that the compiler may issue
// several before using the first (each is a round trip across the cluster); their addresses come from mapa
// (volatile, after the barrier that published the data), which keeps them after that barrier.
__device__ __forceinline__ float2 ld_dsmem_f2(uint32_t addr) {
  float2 v;
  asm("ld.shared::cluster.v2.f32 {%0, %1}, [%2];\n" : "=f"(v.x), "=f"(v.y) : "r"(addr));
  return v;
}
__device__ __forceinline__ float4 ld_dsmem_f4(uint32_t addr) {
  float4 v;
  asm("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(addr));
  return v;
}

}  // namespace cuda
}  // namespace dllm_core
