#!/usr/bin/env bash
# One command for a GPU machine: builds and installs the package with every core (pip install .,
# CUDA arch $ARCH, default 90), then runs the whole pytest
# suite (GPU tests against float64 references, and the CPU path), compute-sanitizer memcheck and
# racecheck on small forward and backward cases, the forward tile-shape sweep
# (bench/fwd_variants.cu) and the benchmarks (bench/run.py forward and EAGLE3 TTT unroll,
# bench/run_backward.py; bench/eagle3_unroll.py against torch flex static / dynamic). Logs go
# to $OUT (default build/device-check); summary.txt holds one line per step and the tables.
#
#   tools/device_check.sh                 # everything
#   STEPS="build tests" tools/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/build/device-check}
mkdir -p "$OUT"
JOBS=$(nproc)
ARCH=${ARCH:-90}
STEPS=${STEPS:-"build variants tests sanitizer bench eagle3"}
export PYTHONUNBUFFERED=1
DEFAULT_BENCH_CASES=causal_8k,causal_16k,causal_16k_d64,causal_16k_d256,document_8x2048,sliding_window_2048_16k,\
eagle3_ttt_2k,eagle3_ttt_8k,eagle3_ttt_16k
SUMMARY=$OUT/summary.txt

note() { echo "== $*" | tee -a "$SUMMARY"; }
run_step() {  # name, timeout seconds, log file, command...
  local name=$1 limit=$2 log=$3
  shift 3
  local start=$SECONDS
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  note "$name: exit $rc in $((SECONDS - start)) s (log $(basename "$log"))"
  return $rc
}
wants() { [[ " $STEPS " == *" $1 "* ]]; }

GPU=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
note "device: $GPU; $JOBS cores; $(python3 -c 'import torch; print("torch", torch.__version__)')"

if wants build; then
  run_step build 420 "$OUT/build.log" env CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" python3 -m pip install -v \
    --no-build-isolation --no-deps -C cmake.define.FLASHFLEX_CUDA_ARCHITECTURES="$ARCH" . ||
    { note "build failed"; tail -40 "$OUT/build.log"; exit 1; }
  python3 tools/ptxas_table.py "$OUT/build.log" >>"$SUMMARY"  # empty when ninja found nothing to rebuild
fi

if wants variants; then
  run_step variants-build 120 "$OUT/variants.log" nvcc -O3 -std=c++17 -arch=sm_$ARCH --expt-relaxed-constexpr \
    -Xptxas=-v -Iinclude -Isrc bench/fwd_variants.cu -o build/fwd_variants &&
    run_step variants 120 "$OUT/variants.log" build/fwd_variants 16384
  grep -E "ms |diff" "$OUT/variants.log" >>"$SUMMARY"
fi

if wants tests; then
  (cd tests/python && run_step tests 400 "$OUT/pytest.log" python3 -m pytest -q -p no:cacheprovider --timeout=120 .)
  tail -3 "$OUT/pytest.log" >>"$SUMMARY"
fi

if wants sanitizer; then
  # Only flashflex's kernels are instrumented (kns: kernel-name substring), which keeps torch's
  # own kernels out of the run time; without the caching allocator every tensor is its own
  # allocation, so memcheck sees out-of-bounds accesses past a tensor's end.
  for tool in memcheck racecheck; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_step "$tool-fwd" 200 "$OUT/sanitizer.log" compute-sanitizer --tool "$tool" \
      --kernel-name kns=fwd_kernel --error-exitcode 3 python3 tools/sanitize_fwd.py
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitize_fwd:" "$OUT/sanitizer.log" | tail -2 >>"$SUMMARY"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_step "$tool-bwd" 300 "$OUT/sanitizer_bwd.log" compute-sanitizer \
      --tool "$tool" --kernel-name kns=bwd_ --error-exitcode 3 python3 tools/sanitize_bwd.py
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Internal Sanitizer Error|sanitize_bwd:" "$OUT/sanitizer_bwd.log" |
      tail -3 >>"$SUMMARY"
    # EAGLE3: the device mask build, the row-local forward, block 0's backward and the row pass.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_step "$tool-eagle3" 300 "$OUT/sanitizer_eagle3.log" compute-sanitizer \
      --tool "$tool" --error-exitcode 3 python3 tools/sanitize_eagle3.py
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Internal Sanitizer Error|sanitize_eagle3:" \
      "$OUT/sanitizer_eagle3.log" | tail -3 >>"$SUMMARY"
  done
fi

if wants bench; then
  # 540 s: the three EAGLE3 unroll cases add torch flex compiles (per step until shapes go dynamic)
  run_step bench 540 "$OUT/bench.log" python3 bench/run.py --out "$OUT/bench.md" \
    --cases "${BENCH_CASES:-$DEFAULT_BENCH_CASES}"
  cat "$OUT/bench.md" >>"$SUMMARY" 2>/dev/null
  [[ -f "$OUT/bench.png" ]] || note "plot not written (matplotlib missing? see bench.log)"
  run_step bench-bwd 300 "$OUT/bench_bwd.log" python3 bench/run_backward.py --reps 10 --deterministic
  tail -12 "$OUT/bench_bwd.log" >>"$SUMMARY"
fi
if wants eagle3; then
  # The script keeps itself within --budget-s (workers killed past their share); the timeout is
  # a backstop. Table and PNG: $OUT/eagle3_unroll.{md,png}.
  run_step eagle3 420 "$OUT/eagle3.log" python3 bench/eagle3_unroll.py --budget-s "${EAGLE3_BUDGET_S:-300}" \
    --out "$OUT/eagle3_unroll.md"
  cat "$OUT/eagle3_unroll.md" >>"$SUMMARY" 2>/dev/null || tail -20 "$OUT/eagle3.log" >>"$SUMMARY"
fi
cat "$SUMMARY"
