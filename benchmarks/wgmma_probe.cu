// Standalone check of the wgmma building blocks of the wgmma main pass of partial_attention
// (csrc/cuda/wgmma.cuh: tile layout, loader, descriptors, instruction wrappers, fragment layouts), with
// exactly the kernel's helpers, against a plain CUDA-core reference.  No torch.  On an H100:
//
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -Icsrc/cuda benchmarks/wgmma_probe.cu -o probe && ./probe
//
// (1) qk: S = Q K^T per warpgroup, Q a 128-row tile (each of the two warpgroups takes 64 rows, as in the
//     kernel), K a KEYS-key tile (64: m64n64k16; 128: m64n128k16, the kernel's) whose last rows are past
//     `valid` (zero-filled, as a tail tile), D / 16 wgmmas from the two shared tiles (K-major);
// (2) pv: O = P V, P (128 x KEYS) in registers in the S-accumulator layout packed by pack_p, V (KEYS x D)
//     from shared memory through the transposed (MN-major) descriptor, KEYS / 16 wgmma m64nDk16;
// (3) ring: the kernel's warp-specialised pipeline on its own: 384 threads, a producer warpgroup
//     (setmaxnreg.dec) streams 7 K tiles of 128 keys (the last partial) through 3 stages with cp.async
//     and cp.async.mbarrier.arrive.noinc on "full" mbarriers, two consumer warpgroups (setmaxnreg.inc)
//     wait on them, fence the async proxy, compute S_i = Q K_i^T in ping-pong (named barriers) and
//     release the stages through "empty" mbarriers (parities wrap around the ring twice).
// Each line prints the max abs error and PASS/FAIL; a failure also prints its first mismatches.
// Exit status 1 if any check fails.

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "wgmma.cuh"

using namespace dllm_core::cuda;

constexpr int kThreads = 256, kRows = 128, kRingTiles = 7, kRingStages = 3;

// Row and column of accumulator element e of 8-column block j for this thread (both warpgroups).
__device__ __forceinline__ void acc_pos(int j, int e, int& row, int& col) {
  const int lane = threadIdx.x & 31;
  row = (threadIdx.x >> 7) * 64 + ((threadIdx.x >> 5) & 3) * 16 + (lane >> 2) + 8 * (e >> 1);
  col = 8 * j + 2 * (lane & 3) + (e & 1);
}

template <typename T, int D, int kKeys>
__global__ void __launch_bounds__(kThreads, 1) qk_probe(const T* q, const T* k, int valid, float* s_out) {
  extern __shared__ unsigned char smem[];
  const uint32_t sQ = (smem_addr(smem) + 1023u) & ~1023u, sK = sQ + kRows * D * 2;
  wg::load_tile<D, kRows, kThreads>(sQ, [&](int r) { return q + r * D; }, kRows, q);
  wg::load_tile<D, kKeys, kThreads>(sK, [&](int r) { return k + r * D; }, valid, k);
  cp_async_commit();
  cp_async_wait<0>();
  wg::fence_proxy_async();
  __syncthreads();
  float s[kKeys / 2];
  for (int i = 0; i < kKeys / 2; ++i) s[i] = -1.f;  // overwritten: the first k step has scale-d = 0
  wg::pin(s);
  wg::fence();
  wg::qk<T, D, kRows, kKeys>(s, sQ + (threadIdx.x >> 7) * 64 * 128, sK);
  wg::commit();
  wg::wait<0>();
  wg::pin(s);
  for (int j = 0; j < kKeys / 8; ++j)
    for (int e = 0; e < 4; ++e) {
      int row, col;
      acc_pos(j, e, row, col);
      s_out[row * kKeys + col] = s[4 * j + e];
    }
}

template <typename T, int D, int kKeys>
__global__ void __launch_bounds__(kThreads, 1) pv_probe(const float* pmat, const T* v, float* o_out) {
  extern __shared__ unsigned char smem[];
  const uint32_t sV = (smem_addr(smem) + 1023u) & ~1023u;
  wg::load_tile<D, kKeys, kThreads>(sV, [&](int r) { return v + r * D; }, kKeys, v);
  cp_async_commit();
  cp_async_wait<0>();
  wg::fence_proxy_async();
  __syncthreads();
  float s[kKeys / 2], o[D / 2];
  uint32_t pf[kKeys / 4];
  for (int j = 0; j < kKeys / 8; ++j)
    for (int e = 0; e < 4; ++e) {
      int row, col;
      acc_pos(j, e, row, col);
      s[4 * j + e] = pmat[row * kKeys + col];
    }
  wg::pack_p<T, kKeys>(pf, s);
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  wg::pin(o), wg::pin(pf);
  wg::fence();
  wg::pv<T, D, kKeys>(o, pf, sV);
  wg::commit();
  wg::wait<0>();
  wg::pin(o);
  for (int j = 0; j < D / 8; ++j)
    for (int e = 0; e < 4; ++e) {
      int row, col;
      acc_pos(j, e, row, col);
      o_out[row * D + col] = o[4 * j + e];
    }
}

// CUDA-core reference: c[r][n] = sum_k a[r][k] * b(k, n), b(k, n) = b[n * ldb_n + k * ldb_k].
template <typename TA, typename TB>
__global__ void ref_gemm(const TA* a, const TB* b, float* c, int rows, int cols, int kdim, int ldb_n, int ldb_k) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int r = i / cols, n = i % cols;
  float acc = 0.f;
  for (int kk = 0; kk < kdim; ++kk) acc += to_float(a[r * kdim + kk]) * to_float(b[n * ldb_n + kk * ldb_k]);
  c[i] = acc;
}

template <typename T>
T* upload(const std::vector<float>& h) {
  std::vector<T> t(h.size());
  for (size_t i = 0; i < h.size(); ++i) t[i] = T(h[i]);
  T* d = nullptr;
  cudaMalloc(&d, t.size() * sizeof(T));
  cudaMemcpy(d, t.data(), t.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

bool compare(const char* what, const float* d_got, const float* d_want, int rows, int cols) {
  std::vector<float> got(rows * cols), want(rows * cols);
  cudaMemcpy(got.data(), d_got, got.size() * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(want.data(), d_want, want.size() * 4, cudaMemcpyDeviceToHost);
  double worst = 0.0;
  int bad = 0;
  for (int i = 0; i < rows * cols; ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    worst = std::isnan(err) ? INFINITY : std::max(worst, err);
    if (!(err <= 1e-3 * (1.0 + std::fabs(want[i])))) ++bad;
  }
  std::printf("%-28s max abs err %.3e  %s\n", what, worst, bad == 0 ? "PASS" : "FAIL");
  for (int i = 0, shown = 0; i < rows * cols && shown < 6; ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (err <= 1e-3 * (1.0 + std::fabs(want[i]))) continue;
    std::printf("    [%3d][%3d] got %10.4f want %10.4f\n", i / cols, i % cols, got[i], want[i]);
    ++shown;
  }
  if (bad > 0) std::printf("    %d of %d wrong\n", bad, rows * cols);
  return bad == 0;
}

template <typename T, int D, int kKeys>
bool run(const char* name, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_real_distribution<float> ud(0.f, 1.f);
  auto randn = [&](size_t n, std::normal_distribution<float>& dist) {
    std::vector<float> h(n);
    for (auto& x : h) x = dist(rng);
    return h;
  };
  bool ok = true;
  char label[64];
  float *s, *s_ref, *o, *o_ref;
  cudaMalloc(&s, kRows * kKeys * 4);
  cudaMalloc(&s_ref, kRows * kKeys * 4);
  cudaMalloc(&o, kRows * D * 4);
  cudaMalloc(&o_ref, kRows * D * 4);

  // (1) S = Q K^T, K valid for all but 3 keys (rows past them must read as zeros).
  const int valid = kKeys - 3;
  std::vector<float> kh = randn(kKeys * D, nd);
  T* q = upload<T>(randn(kRows * D, nd));
  T* k = upload<T>(kh);
  std::vector<float> kz(kh);
  for (int r = valid; r < kKeys; ++r)
    for (int d = 0; d < D; ++d) kz[r * D + d] = 0.f;
  T* kzero = upload<T>(kz);
  const size_t smem_qk = (kRows + kKeys) * D * 2 + 1024;
  cudaFuncSetAttribute(qk_probe<T, D, kKeys>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_qk));
  qk_probe<T, D, kKeys><<<1, kThreads, smem_qk>>>(q, k, valid, s);
  ref_gemm<<<(kRows * kKeys + 255) / 256, 256>>>(q, kzero, s_ref, kRows, kKeys, D, D, 1);
  std::snprintf(label, sizeof label, "qk  %s D=%d keys=%d", name, D, kKeys);
  ok &= compare(label, s, s_ref, kRows, kKeys);

  // (2) O = P V, P in [0, 1) rounded to T (the kernel rounds the probabilities the same way).
  std::vector<float> ph(kRows * kKeys);
  for (auto& x : ph) x = ud(rng);
  T* p_t = upload<T>(ph);
  float* p_f;
  cudaMalloc(&p_f, ph.size() * 4);
  cudaMemcpy(p_f, ph.data(), ph.size() * 4, cudaMemcpyHostToDevice);
  T* v = upload<T>(randn(kKeys * D, nd));
  const size_t smem_pv = kKeys * D * 2 + 1024;
  cudaFuncSetAttribute(pv_probe<T, D, kKeys>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_pv));
  pv_probe<T, D, kKeys><<<1, kThreads, smem_pv>>>(p_f, v, o);
  ref_gemm<<<(kRows * D + 255) / 256, 256>>>(p_t, v, o_ref, kRows, D, kKeys, 1, D);
  std::snprintf(label, sizeof label, "pv  %s D=%d keys=%d", name, D, kKeys);
  ok &= compare(label, o, o_ref, kRows, D);

  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    std::printf("CUDA error: %s\n", cudaGetErrorString(err));
    ok = false;
  }
  for (void* ptr : {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(kzero), static_cast<void*>(p_t),
                    static_cast<void*>(p_f), static_cast<void*>(v), static_cast<void*>(s), static_cast<void*>(s_ref),
                    static_cast<void*>(o), static_cast<void*>(o_ref)})
    cudaFree(ptr);
  return ok;
}

// (3) The warp-specialised ring: S_i = Q K_i^T for kRingTiles 128-key tiles of k (keys >= n_keys zero-filled)
// into s_out[row][tile * 128 + key].
template <typename T, int D>
__global__ void __launch_bounds__(384, 1) ring_probe(const T* q, const T* k, int n_keys, float* s_out) {
  extern __shared__ unsigned char smem[];
  constexpr uint32_t kTile = 128 * D * 2;
  const uint32_t sQ = (smem_addr(smem) + 1023u) & ~1023u, sK = sQ + kRows * D * 2, bars = sK + kRingStages * kTile;
  auto full = [&](int st) { return bars + 8 * st; };
  auto empty = [&](int st) { return bars + 8 * (kRingStages + st); };
  if (threadIdx.x == 0)
    for (int st = 0; st < kRingStages; ++st) mbar_init(full(st), 128), mbar_init(empty(st), 8);
  __syncthreads();
  if (threadIdx.x < 128) {
    wg::setmaxnreg_dec<40>();
    wg::load_tile<D, kRows, 128>(sQ, [&](int r) { return q + r * D; }, kRows, q);
    for (int i = 0; i < kRingTiles; ++i) {
      const int st = i % kRingStages;
      if (i >= kRingStages) mbar_wait(empty(st), (i / kRingStages - 1) & 1);
      const T* kt = k + i * 128 * D;
      wg::load_tile<D, 128, 128>(sK + st * kTile, [&](int r) { return kt + r * D; }, n_keys - i * 128, k);
      cp_async_arrive_noinc(full(st));
    }
    cp_async_wait<0>();
  } else {
    wg::setmaxnreg_inc<232>();
    const int cw = (threadIdx.x >> 7) - 1, lane = threadIdx.x & 31;
    if (cw == 1) wg::bar_arrive(1, 256);
    for (int i = 0; i < kRingTiles; ++i) {
      const int st = i % kRingStages;
      mbar_wait(full(st), (i / kRingStages) & 1);
      wg::fence_proxy_async();
      wg::bar_sync(1 + cw, 256);
      float s[64];
      for (int j = 0; j < 64; ++j) s[j] = 0.f;
      wg::pin(s);
      wg::fence();
      wg::qk<T, D, kRows, 128>(s, sQ + cw * 64 * 128, sK + st * kTile);
      wg::commit();
      if (cw == 0 || i + 1 < kRingTiles) wg::bar_arrive(2 - cw, 256);
      wg::wait<0>();
      wg::pin(s);
      if (lane == 0) mbar_arrive(empty(st));
      for (int j = 0; j < 16; ++j)
        for (int e = 0; e < 4; ++e) {
          int row, col;
          acc_pos(j, e, row, col);
          s_out[(row - 64) * kRingTiles * 128 + i * 128 + col] = s[4 * j + e];  // acc_pos counts warpgroup 1 as rows 64..
        }
    }
  }
}

template <typename T, int D>
bool run_ring(const char* name, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.f, 1.f);
  constexpr int keys = kRingTiles * 128;
  const int n_keys = keys - 77;  // the last tile partial
  std::vector<float> qh(kRows * D), kh(keys * D);
  for (auto& x : qh) x = nd(rng);
  for (auto& x : kh) x = nd(rng);
  std::vector<float> kz(kh);
  for (int r = n_keys; r < keys; ++r)
    for (int d = 0; d < D; ++d) kz[r * D + d] = 0.f;
  T* q = upload<T>(qh);
  T* k = upload<T>(kh);
  T* kzero = upload<T>(kz);
  float *s, *s_ref;
  cudaMalloc(&s, kRows * keys * 4);
  cudaMalloc(&s_ref, kRows * keys * 4);
  const size_t smem = kRows * D * 2 + kRingStages * 128 * D * 2 + 16 * kRingStages + 1024;
  cudaFuncSetAttribute(ring_probe<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  ring_probe<T, D><<<1, 384, smem>>>(q, k, n_keys, s);
  ref_gemm<<<(kRows * keys + 255) / 256, 256>>>(q, kzero, s_ref, kRows, keys, D, D, 1);
  char label[64];
  std::snprintf(label, sizeof label, "ring %s D=%d", name, D);
  bool ok = compare(label, s, s_ref, kRows, keys);
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    std::printf("CUDA error: %s\n", cudaGetErrorString(err));
    ok = false;
  }
  for (void* ptr : {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(kzero), static_cast<void*>(s),
                    static_cast<void*>(s_ref)})
    cudaFree(ptr);
  return ok;
}

int main() {
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s (compute capability %d.%d)\n", prop.name, prop.major, prop.minor);
  if (prop.major != 9 || prop.minor != 0) {
    std::printf("wgmma needs compute capability 9.0 (sm_90a)\n");
    return 1;
  }
  std::mt19937 rng(1234);
  bool ok = true;
  ok &= run<__nv_bfloat16, 128, 128>("bf16", rng);
  ok &= run<__half, 128, 128>("fp16", rng);
  ok &= run<__nv_bfloat16, 64, 128>("bf16", rng);
  ok &= run<__half, 64, 128>("fp16", rng);
  ok &= run<__nv_bfloat16, 128, 64>("bf16", rng);
  ok &= run<__half, 64, 64>("fp16", rng);
  ok &= run_ring<__nv_bfloat16, 128>("bf16", rng);
  ok &= run_ring<__half, 64>("fp16", rng);
  std::printf("%s\n", ok ? "ALL PASS" : "SOME FAILED");
  return ok ? 0 : 1;
}
