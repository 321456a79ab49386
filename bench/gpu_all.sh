#!/usr/bin/env bash
# Every GPU figure of issues 15 and 20 in one run, under 8 minutes on one H100/H200-class GPU:
#   1. HRNet-W18 images/s at batch 256: the compiled runner, eager bf16 and fp32  (bench/bench_gpu_hrnet.py)
#   2. exact K=8 neighbours of 1M x 136-d points, split TF32 / bf16 candidates     (bench/bench_gpu_knn.py)
#   3. a 10K synthetic version prepared on all cores    (bench/gpu_prepare.py)
#   4. every method's trainer throughput as a share of model-only, ResNet-18 224 bf16 channels_last
#                                                       (bench/bench_gpu_train.py)
#   5. one table of every model's rate and share of the device's datasheet peak      (bench/gpu_summary.py)
# Each part prints its table and writes bench/results/gpu_*.json with the device named; with $OUT set
# (the lent device machines) the JSON files and the log are copied there as well. It needs only PyTorch,
# numpy, pyarrow, pandas, scikit-image, OpenCV, scipy and numba: no dlib, faiss, Prefect or Dask
# (tests/bench/test_gpu_all.py runs --smoke with those made unimportable).
#
#   bash bench/gpu_all.sh                                  # on a CUDA machine; python3 must hold PyTorch
#   PY=.venv/bin/python bash bench/gpu_all.sh --smoke      # on a CPU: small sizes, shows every part works
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
SMOKE=""
if [ "${1:-}" = "--smoke" ]; then SMOKE="--smoke"; fi
WORK="${GPU_ALL_WORK:-/tmp/gpu_all}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FER_CACHE="$WORK/cache" NUMBA_CACHE_DIR="$WORK/cache/numba"
mkdir -p "$WORK"
LOG="$WORK/gpu_all.log"
status=0
began=$(date +%s)

step() {
  local name=$1; shift
  local start; start=$(date +%s)
  echo "== $name: $*"
  if ! "$@"; then echo "!! $name failed"; status=1; fi
  echo "== $name done in $(( $(date +%s) - start )) s (total $(( $(date +%s) - began )) s)"
}

main() {
  uptime
  "$PY" -c "import torch; print('torch', torch.__version__, '| CUDA', torch.cuda.is_available(), '|',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
  if [ -z "$SMOKE" ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --smoke')" || return 2
  fi
  step hrnet "$PY" bench/bench_gpu_hrnet.py $SMOKE
  step knn "$PY" bench/bench_gpu_knn.py $SMOKE
  step prepare "$PY" bench/gpu_prepare.py --root "$WORK/data" $SMOKE
  step train "$PY" bench/bench_gpu_train.py $SMOKE --artifacts "$WORK/data/artifacts" \
    --manifests "$WORK/data/manifests"
  step summary "$PY" bench/gpu_summary.py $SMOKE
  echo "== all done in $(( $(date +%s) - began )) s, status $status"
  return "$status"
}

main 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then
  cp "${FER_BENCH_RESULTS:-bench/results}"/gpu_*.json "$LOG" "$OUT"/ 2>/dev/null || true
fi
exit "$rc"
