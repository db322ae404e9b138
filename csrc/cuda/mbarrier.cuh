// Shared-memory mbarriers (8-byte words, sm_90 PTX): the completion signal of the wgmma main pass's
// warp-specialised ring (partial_attention_wgmma.cu) and of the bulk tensor copies (tma.cuh).  A phase
// completes once its pending arrivals reach zero and, where a copy announced bytes (expect_tx), they landed.
#pragma once

#include <cstdint>

// The asm of these helpers is sm_90 PTX.  Images for older targets (a TORCH_CUDA_ARCH_LIST naming them) get
// a trap instead: the plan picks the paths that use them on compute capability 9.0+ only.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define DLLM_SM90_ASM(...) __trap()
#else
#define DLLM_SM90_ASM(...) asm volatile(__VA_ARGS__)
#endif

namespace dllm_core {
namespace cuda {

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  DLLM_SM90_ASM("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the inits visible to the async proxy (bulk tensor copies complete on the barriers); before the
// block barrier that publishes them to the other threads.
__device__ __forceinline__ void mbar_init_fence() {
  DLLM_SM90_ASM("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  DLLM_SM90_ASM("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
// One arrival that also announces `bytes` of copies completing on the barrier (complete_tx) in this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  DLLM_SM90_ASM("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// One arrival on bar once every cp.async this thread issued so far has landed (the init count has it).
__device__ __forceinline__ void cp_async_arrive_noinc(uint32_t bar) {
  DLLM_SM90_ASM("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// Waits for the completion of the barrier's phase of the given parity (phase k: parity k & 1).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    DLLM_SM90_ASM("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(bar), "r"(parity) : "memory");
  } while (done == 0);
}

}  // namespace cuda
}  // namespace dllm_core
