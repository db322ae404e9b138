#!/usr/bin/env bash
# On a GPU machine: build dllm_core._C in place, check its error path, run the op tests (CUDA
# tests included), the op benchmark, and compute-sanitizer memcheck on small calls of every kernel.
# Usage (repository root):  OUT=some/dir bash benchmarks/gpu_check.sh [ops_bench.py arguments]
#   GPU_CHECK_TESTS="tests/..."  which tests to run (default: the op, argmax, fused-op and attention-variant tests)
#   GPU_CHECK_BENCH=0            skip the op benchmark
set -u -o pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.:plugins${PYTHONPATH:+:$PYTHONPATH}
{
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
echo "CC=${CC:-} CXX=${CXX:-}"; "${CXX:-c++}" --version | head -1
date -u
SECONDS=0
python3 setup.py build_ext --inplace > "$OUT/build.txt" 2>&1 || { tail -40 "$OUT/build.txt"; exit 1; }
echo "build: ${SECONDS}s"

# A kernel's TORCH_CHECK must reach Python as RuntimeError; on a crash, show where (cuda-gdb).
RAISE='import torch, dllm_core.ops
c = torch.zeros(1, 8, 1, 4); x = torch.ones(1, 1, 1, 4); r = torch.tensor([[9]])
try: torch.ops.dllm_core.kv_cache_update(c, c.clone(), x, x, r, r, 1e4)
except RuntimeError as e: print("error path ok:", str(e).splitlines()[0])'
python3 -c "$RAISE"; rc=$?
echo "error path rc=$rc"
if [ "$rc" -ne 0 ] && command -v cuda-gdb > /dev/null; then
  timeout 120 cuda-gdb -q -batch -ex run -ex bt --args python3 -c "$RAISE" 2>&1 | grep -E "^#|SIG" | head -40
fi

# wgmma building blocks (benchmarks/wgmma_probe.cu; compute capability 9.0 only): layout/descriptor errors show here first.
if command -v nvcc > /dev/null; then
  nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -Icsrc/cuda benchmarks/wgmma_probe.cu -o "$OUT/wgmma_probe" \
    && timeout 60 "$OUT/wgmma_probe"
  echo "wgmma probe rc=$?"
fi

SECONDS=0
timeout 420 python3 -m pytest ${GPU_CHECK_TESTS:-tests/test_ops.py tests/test_ops_argmax.py tests/test_ops_fused.py tests/test_attention_variants.py tests/test_attention_stored_scores.py} -q -rs --tb=short -p no:cacheprovider > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$? ${SECONDS}s"; tail -40 "$OUT/pytest.txt"

SECONDS=0
[ "${GPU_CHECK_BENCH:-1}" = 0 ] || timeout 300 python3 benchmarks/ops_bench.py --out "$OUT/ops_bench.json" "$@" > "$OUT/bench.txt" 2>&1
echo "bench rc=$? ${SECONDS}s"; grep -v '^{' "$OUT/bench.txt" | tail -80

SAN='import torch, dllm_core.ops as ops
for shape in [(2, 5, 14, 2, 128, 130), (1, 3, 8, 8, 64, 37), (1, 70, 4, 4, 128, 700)]:
    B, n, H, Hkv, D, T = shape
    q = torch.randn(B, n, H, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, T, Hkv, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    m = torch.rand(B, T, device="cuda") < 0.7
    ops.partial_attention(q, k, v, m, 0.1, True)
    r = torch.stack([torch.randperm(T, device="cuda")[:n] for _ in range(B)])
    ops.kv_cache_update(k, v, q[:, :, :Hkv].contiguous(), q[:, :, :Hkv].contiguous(), r, r, 1e4)
    kn = torch.rand(B, T, device="cuda") < 0.5
    ops.certainty_density_topk(kn, torch.rand(B, T, device="cuda"), ~kn, 10.0, 32)
torch.cuda.synchronize(); print("sanitizer script done")'
if command -v compute-sanitizer > /dev/null; then
  SECONDS=0
  timeout 150 compute-sanitizer --tool memcheck --print-limit 5 python3 -c "$SAN" 2>&1 | tail -8
  echo "memcheck ${SECONDS}s"
  SECONDS=0  # the same calls with the wgmma main pass where it applies (70 rows per kv head), 2 persistent blocks
  DLLM_CORE_ATTN_MMA=wgmma DLLM_CORE_ATTN_WGMMA_GRID=2 timeout 150 compute-sanitizer --tool memcheck --print-limit 5 python3 -c "$SAN" 2>&1 | tail -8
  echo "memcheck (DLLM_CORE_ATTN_MMA=wgmma) ${SECONDS}s"
fi
} 2>&1 | tee "$OUT/log.txt"
