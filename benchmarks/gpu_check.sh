#!/usr/bin/env bash
# The whole GPU check in one call on the lent machine (device time is scarce: one run,
# then give the machine back). Builds the package with its CUDA kernels, runs the
# GPU-marked tests, then the timing suite; every log lands in $OUT.
#
#   bash benchmarks/gpu_check.sh [suite sections, default: dense,pooling,lowrank,hamming]
#
# Stages have their own time limits so that a hang in one still leaves the others'
# logs. Use the interpreter that holds torch: on the lent machine a bare `pip` belongs
# to another Python without pybind11.
set -u
OUT=${OUT:-/tmp/nestvec_gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SECTIONS=${1:-dense,pooling,lowrank,hamming}
export NESTVEC_CUDA_ARCHS=${NESTVEC_CUDA_ARCHS:-90} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}

stage() { echo "== $(date +%T) $*" | tee -a "$OUT/stages.txt"; }

stage "machine"
{ nvidia-smi; "$PY" -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))"; } \
  > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" | tail -3

stage "build"
if ! timeout 300 "$PY" -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  exit 1
fi
"$PY" -m nestvec.cli info | tee "$OUT/info.txt"

stage "pytest -m gpu"
timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/ > "$OUT/pytest_gpu.log" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/stages.txt"
grep -E "passed|failed|error|skipped" "$OUT/pytest_gpu.log" | tail -3
grep -E "^(FAILED|ERROR)" "$OUT/pytest_gpu.log" | head -30

stage "gpu_suite --only $SECTIONS"
timeout 300 "$PY" benchmarks/gpu_suite.py --only "$SECTIONS" > "$OUT/gpu_suite.log" 2>&1
echo "suite rc=$?" | tee -a "$OUT/stages.txt"
tail -40 "$OUT/gpu_suite.log"
stage "done"
