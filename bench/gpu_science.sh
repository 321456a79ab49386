#!/usr/bin/env bash
# The mechanisms benchmark at GPU scale (issue 19 item 7), meant for < 8 minutes on one H100/H200-class GPU:
#   1. bench/mechanisms.py --scale gpu: ResNet-18 pretrained on clean labels of a disjoint synthetic source
#      (generator seed 1), a VA regressor for the pseudo_va stage, the benchmark version (seed 0, >= 10K faces,
#      128 px crops, validation split, pseudo valence-arousal) and the memorisation regime re-checked on it;
#   2. the noise harness: every method and control x sym-0.30 x seeds 0, 1, 2 under
#      training/configs/benchmark_mechanisms_cuda.yaml, with the pretrained weights, results in $WORK/results.
# Usage: bench/gpu_science.sh [--smoke] [WORK]   (WORK default /tmp/fer-gpu-science)
#   --smoke: the same chain on the CPU in seconds (tiny backbone, 160 faces, 2 steps per run, seed 0), as the
#            test runs it (tests/bench/test_gpu_science.py).
# Needs only torch, numpy, pyarrow, pandas, scikit-image, opencv, numba (no prefect, faiss, dask, dlib imports).
# NOT MEASURED on a GPU yet: the session that wrote it had none.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=gpu SEEDS=0,1,2 JOBS=${JOBS:-1} CONFIG=training/configs/benchmark_mechanisms_cuda.yaml EXTRA=() CHECK=()
if [ "${1:-}" = "--smoke" ]; then
  SCALE=smoke SEEDS=0 CONFIG=training/configs/benchmark_mechanisms_cpu.yaml CHECK=(--skip-check)
  EXTRA=(--set epochs=1 --set runtime.max_steps=2 --set model.backbone=tiny --set runtime.threads=1
         --set data.groups_per_batch=4 --set batch_size=16)
  shift
fi
WORK=${1:-/tmp/fer-gpu-science}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export FER_CACHE=${FER_CACHE:-$WORK/cache}
start=$(date +%s)
"$PY" bench/mechanisms.py --scale "$SCALE" --work "$WORK" --out "$WORK/pretrained" --noise clean,sym-0.30 "${CHECK[@]}"
read -r ARTIFACTS MANIFESTS WEIGHTS < <("$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); \
print(s['env']['FER_ARTIFACTS'], s['env']['FER_MANIFESTS'], s['weights'])" "$WORK/mechanisms.json")
echo "prepared in $(( $(date +%s) - start )) s"
FER_ARTIFACTS=$ARTIFACTS FER_MANIFESTS=$MANIFESTS "$PY" bench/benchmark_noise.py --dataset synthetic \
  --methods baseline,baseline@scratch,baseline@lr1e-4,graph_vote,graph_vote@va,ldl_alsg,ldl_alsg@lam0,lanet,soft,ldlva --equal-images \
  --noise sym-0.30 --seeds "$SEEDS" --jobs "$JOBS" --config "$CONFIG" --name "benchmark_mechanisms_${SCALE}" \
  --out "$WORK/results" --runs-root "$WORK/runs" --set "model.weights=$WEIGHTS" "${EXTRA[@]}"
echo "gpu_science ($SCALE) done in $(( $(date +%s) - start )) s: $WORK/results/benchmark_mechanisms_${SCALE}.md"
