#!/usr/bin/env bash
# One device session's checks for issue 20, in one command (about 8-9 minutes on one H200):
#   1. bench/gpu_all.sh: every GPU figure, each with its share of the device's datasheet peak
#   2. the `gpu`-marked equality tests: the device augmentation equals the CPU's, the exact GPU graph equals
#      the CPU exact path, the compiled HRNet runner equals eager, a CUDA bf16 training run per method
# With $OUT set (the lent device machines) the JSON files, the log and the test report land there.
#
#   PY=python3 bash bench/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
PY="$PY" timeout "${GPU_ALL_LIMIT:-460}" bash bench/gpu_all.sh
bench=$?
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/pipeline/test_knn_torch.py tests/pipeline/test_hrnet.py \
  tests/training/test_training_augment.py tests/training/test_training_cuda.py 2>&1 | tee "${OUT:-/tmp}/gpu_tests.log" | tail -20
tests=${PIPESTATUS[0]}
echo "gpu_all.sh exit $bench, gpu tests exit $tests"
exit $(( bench != 0 || tests != 0 ))
