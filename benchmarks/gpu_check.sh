#!/usr/bin/env bash
# The whole GPU check in one call on the lent machine (device time is scarce: one run,
# then give the machine back). Builds the package with its CUDA kernels, runs the
# GPU-marked tests (correctness), then each per-op benchmark with --device cuda
# (timing); every log and JSON lands in $OUT.
#
#   bash benchmarks/gpu_check.sh [ops, default: dense,pool,lowrank,hamming] [--quick]
#
# Each stage has its own time limit, so a hang in one still leaves the others' logs;
# the limits add up to under 9 minutes. Use the interpreter that holds torch: on the
# lent machine a bare `pip` belongs to another Python without pybind11.
set -u
OUT=${OUT:-/tmp/nestvec_gpu_out}
export OUT
mkdir -p "$OUT"
PY=${PYTHON:-python3}
OPS=${1:-dense,pool,lowrank,hamming}
QUICK=${2:-}
export NESTVEC_CUDA_ARCHS=${NESTVEC_CUDA_ARCHS:-90} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
declare -A LIMIT=([dense]=60 [pool]=30 [lowrank]=45 [hamming]=45)
rc_all=0

stage() { echo "== $(date +%T) $*" | tee -a "$OUT/stages.txt"; }

stage "machine"
{ nvidia-smi; "$PY" -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))"; } \
  > "$OUT/machine.txt" 2>&1
tail -3 "$OUT/machine.txt"

stage "build"
if ! timeout 200 "$PY" -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  exit 1
fi
"$PY" -m nestvec.cli info | tee "$OUT/info.txt"

stage "pytest -m gpu"
timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/ > "$OUT/pytest_gpu.log" 2>&1
rc=$?; [ $rc -eq 0 ] || rc_all=1
echo "pytest rc=$rc" | tee -a "$OUT/stages.txt"
grep -E "passed|failed|error|skipped" "$OUT/pytest_gpu.log" | tail -3
grep -E "^(FAILED|ERROR)" "$OUT/pytest_gpu.log" | head -30

for op in ${OPS//,/ }; do
  stage "bench_$op --device cuda $QUICK"
  timeout "${LIMIT[$op]:-60}" "$PY" "benchmarks/bench_$op.py" --device cuda $QUICK > "$OUT/bench_${op}_cuda.log" 2>&1
  rc=$?; [ $rc -eq 0 ] || rc_all=1
  echo "bench_$op rc=$rc" | tee -a "$OUT/stages.txt"
  grep -E "^\|" "$OUT/bench_${op}_cuda.log" | tail -20
done
stage "done"
exit $rc_all
