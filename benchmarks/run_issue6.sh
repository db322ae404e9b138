#!/usr/bin/env bash
# Reproduces the numbers of docs/benchmarks.md on one GPU, in one go (about 5 minutes on an H100):
#   1. the CUDA-graph tests,
#   2. the issue-6 suite and the sequence-length sweep with plain PyTorch ops
#      (reference K/V update, attention through SDPA; the compiled extension disabled),
#   3. the batch-1 cached cases again with the compiled extension, when it builds.
# Usage: OUT=out bash benchmarks/run_issue6.sh      (results: $OUT/*.json, $OUT/sweep.png, $OUT/*.log)
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
DLLM_CORE_SKIP_EXTENSION=1 python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -n 2
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# The extension builds in the background while the tests and the plain-PyTorch suite run.
(MAX_JOBS=8 timeout 240 python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1; echo "build rc $?" >> "$OUT/build.log") &
BUILD=$!

DLLM_CORE_DISABLE_EXTENSION=1 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py 2>&1 | tail -n 15
DLLM_CORE_DISABLE_EXTENSION=1 python3 benchmarks/e2e_bench.py --suite issue6 --attention sdpa \
    --out "$OUT/results.json" --plot "$OUT/sweep.png"

wait $BUILD
tail -n 3 "$OUT/build.log"
if python3 -c "import sys; from dllm_core.ops import extension_status as s; sys.exit(s()['ops']['partial_attention']['cuda'] != 'compiled')"; then
    python3 benchmarks/e2e_bench.py --suite kernels --attention ops --sweep none --out "$OUT/results-kernels.json"
else
    echo "extension not built for CUDA: no kernels run"
fi
