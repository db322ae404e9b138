// Programmatic dependent launch (PDL, compute capability 9.0+) for the partial_attention kernel chain
// main pass -> split combine -> probability pass.
//
// A kernel launched with launch_chained(..., dependent = true) may be scheduled while the previous
// kernel of the stream still runs: as soon as every block of that kernel has called
// pdl_launch_dependents() (or exited).  It does its independent prologue (loading Q and K, the Q K^T
// of its first head) and then calls pdl_wait(), which returns once the previous kernel has completed
// and its writes are visible.  At batch 1, where each of these kernels runs for a few microseconds,
// this hides most of the launch gap and the ramp of the next kernel (the gaps dominated the small
// shapes of docs/kernels.md).  Inside CUDA graphs the dependency is captured as a programmatic edge.
//
// Rules that keep it correct: only kernels whose predecessor is another kernel of this chain are
// launched as dependents (the main pass is not: it reads Q/K/V written by arbitrary earlier work);
// a dependent reads nothing its predecessor writes, and writes nothing its predecessor reads or
// writes, before pdl_wait(); and a dependent that has its own dependent calls pdl_wait() in every
// block (its completion then implies its predecessor's, transitively).
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>

namespace dllm_core {
namespace cuda {

// Lets the stream's next (dependent) kernel be scheduled once every block of this one got here.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Blocks until the previous kernel of the stream completed and its memory is visible (a no-op when
// this kernel was launched normally).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Whether dependents are launched programmatically on `device`: compute capability 9.0+, unless
// DLLM_CORE_ATTN_PDL=0 (for A/B benchmarks and as a switch-off without a rebuild).
inline bool pdl_enabled(int device) {
  const char* env = std::getenv("DLLM_CORE_ATTN_PDL");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  static signed char cache[64] = {0};  // 0 unknown, 1 yes, -1 no
  if (device < 0 || device >= 64) return false;
  if (cache[device] == 0) {
    int major = 0;
    const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess;
    if (!ok) (void)cudaGetLastError();
    cache[device] = ok && major >= 9 ? 1 : -1;
  }
  return cache[device] == 1;
}

// kernel<<<grid, block, smem, stream>>>(args...), with the programmatic-serialisation attribute when
// `dependent` (see the rules above).
template <typename... Params, typename... Args>
cudaError_t launch_chained(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                           bool dependent, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = dependent ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace cuda
}  // namespace dllm_core
