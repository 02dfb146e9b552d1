#!/usr/bin/env bash
# One command for a GPU machine: builds and installs the package with every core (pip install .,
# CUDA arch $ARCH, default 90), then runs the whole pytest suite (GPU tests against float64
# references, and the CPU path), compute-sanitizer memcheck and racecheck on small forward and
# backward cases, and the benchmarks: bench/run.py (step bench: forward against FA4, torch flex
# FLASH and Triton, cuDNN, FA2, flashflex's sm_80 kernels), bench/run_backward.py (step bench_bwd:
# the same peers, deterministic rows) and bench/eagle3_unroll.py (step eagle3). Logs go to $OUT
# (default build/device-check); summary.txt holds one line per step and the tables; the
# benchmark tables and PNGs are $OUT/<gpu>_{forward,backward,eagle3_unroll}.{md,png}. Step profile
# (not in the default set): Nsight Compute on one call of flashflex and of FA4
# (bench/profile_case.py), summaries $OUT/profile_<impl>.txt (tools/ncu_summary.py). Steps
# linked (bench/linked_score_mod.py), torchspec (bench/torchspec_layer.py) and train
# (examples/python/eagle3_ttt_train.py at hidden 4096, 32/8 heads, T=8192), not in the default
# set either.
#
#   tools/device_check.sh                 # everything but `profile` (well over ten minutes)
#   WHEEL=.whl/flashflex-*-cp312-*.whl STEPS="build tests" tools/device_check.sh   # a prebuilt wheel
#   STEPS="build profile" tools/device_check.sh   # ncu of flashflex and FA4 on one call each
#   STEPS="build tests" tools/device_check.sh
#   BENCH_CASES=causal_16k,document_8x2048 STEPS=bench tools/device_check.sh
#
# Each benchmark keeps itself within its budget (BENCH_BUDGET_S, default 420 s, per script;
# EAGLE3_BUDGET_S, default 300 s): cases past it print "n/a (time budget)".
#
# FA4 (flash_attn.cute: the FA4 rows, and torch flex's BACKEND="FLASH") is not installed on a GPU
# machine without network; flash-attn-4 (4.0.0b36) and its CuTe DSL wheels, downloaded with pip where
# PyPI is reachable, go into the project root: .fa4a/cu13.tar.xz (the CUDA 13 DSL library, 61 MiB) and .fa4b/
# (the other wheels, 10 MiB), both git-excluded. Where one run can bring at most 64 MiB of
# untracked files along, that is two runs back to back on the same machine (it keeps /tmp and the
# installed package between them), without them the FA4 and flex FLASH rows print n/a:
#   run A, bringing .fa4a:
#     mkdir -p /tmp/cu13 && xz -dc .fa4a/cu13.tar.xz | tar -x -C /tmp/cu13 && STEPS=build tools/device_check.sh
#   run B, bringing .fa4b:
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .fa4b/*.whl && cp -r /tmp/cu13/. /tmp/site/ &&
#     export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages && STEPS=bench tools/device_check.sh
#   then the backward (and the unroll) in runs of their own, nothing to bring:
#     export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages && STEPS=bench_bwd tools/device_check.sh
# The first call of each FA4 / flex FLASH shape compiles (5-12 s): the tables' first-call column.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/build/device-check}
mkdir -p "$OUT"
JOBS=$(nproc)
ARCH=${ARCH:-90}
STEPS=${STEPS:-"build tests sanitizer bench bench_bwd eagle3"}
export PYTHONUNBUFFERED=1
BENCH_BUDGET_S=${BENCH_BUDGET_S:-420}
BENCH_CASE_ARGS=()
[[ -n "${BENCH_CASES:-}" ]] && BENCH_CASE_ARGS=(--cases "$BENCH_CASES")
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
SLUG=$(cd bench && python3 -c 'import torch, timing; print(timing.gpu_slug(torch.cuda.get_device_name()))' 2>/dev/null ||
       echo gpu)
fa4=$(python3 -c 'import flash_attn.cute' 2>&1 >/dev/null | tail -1)
note "FA4 (flash_attn.cute): ${fa4:-importable}"

if wants build && [[ -n "${WHEEL:-}" ]]; then
  # A wheel built elsewhere for this machine's Python (CUDA arch 90), carried along: installing it
  # skips the compile, minutes of device time on a fresh machine.
  run_step build-wheel 120 "$OUT/build.log" python3 -m pip install --no-deps --force-reinstall $WHEEL ||
    { note "wheel install failed"; tail -40 "$OUT/build.log"; exit 1; }
  # this tree's Python sources over the wheel's, so Python-only changes need no new wheel
  site=$(python3 -c 'import flashflex, os; print(os.path.dirname(flashflex.__file__))' 2>/dev/null)
  (cd python/flashflex && find . -name '*.py' -exec cp --parents {} "$site/" \;)
elif wants build; then
  run_step build 420 "$OUT/build.log" env CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" python3 -m pip install -v \
    --no-build-isolation --no-deps -C cmake.define.FLASHFLEX_CUDA_ARCHITECTURES="$ARCH" . ||
    { note "build failed"; tail -40 "$OUT/build.log"; exit 1; }
  python3 tools/ptxas_table.py "$OUT/build.log" >>"$SUMMARY"  # empty when ninja found nothing to rebuild
fi

if wants tests; then
  (cd tests/python && run_step tests 400 "$OUT/pytest.log" python3 -m pytest -q -p no:cacheprovider --timeout=120 --durations=20 .)
  tail -3 "$OUT/pytest.log" >>"$SUMMARY"
fi

if wants sanitizer; then
  # Only flashflex's kernels are instrumented (kns: kernel-name substring), which keeps torch's
  # own kernels out of the run time; without the caching allocator every tensor is its own
  # allocation, so memcheck sees out-of-bounds accesses past a tensor's end.
  for tool in memcheck racecheck synccheck; do
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

bench_step() {  # step name, script, results name
  local table=$OUT/${SLUG}_$3.md
  # the timeout is a backstop: the script stops starting cases at its budget
  run_step "$1" $((BENCH_BUDGET_S + 120)) "$OUT/$1.log" python3 "bench/$2" --budget-s "$BENCH_BUDGET_S" \
    --out "$table" "${BENCH_CASE_ARGS[@]}"
  cat "$table" >>"$SUMMARY" 2>/dev/null || tail -20 "$OUT/$1.log" >>"$SUMMARY"
  [[ -f "${table%.md}.png" ]] || note "$1: plot not written (matplotlib missing? see $1.log)"
}
if wants profile; then
  # Nsight Compute on one call of each implementation (PROFILE_CASE, PROFILE_DIRECTION: default
  # causal_16k backward), every kernel of the call, source counters; the summaries
  # (tools/ncu_summary.py) compare the kernels phase by phase, instruction mix included.
  for impl in flashflex fa4; do
    [[ $impl == fa4 && -n "$fa4" ]] && { note "profile fa4: skipped (flash_attn.cute not importable)"; continue; }
    rep=$OUT/profile_$impl
    run_step "profile-$impl" 400 "$OUT/profile.log" ncu --nvtx --nvtx-include "profile/" --clock-control none \
      --set full --import-source no -f -o "$rep" python3 bench/profile_case.py --impl "$impl" \
      --case "${PROFILE_CASE:-causal_16k}" --direction "${PROFILE_DIRECTION:-backward}"
    ncu -i "$rep.ncu-rep" --page source --csv --print-source sass >"$rep.csv" 2>>"$OUT/profile.log" &&
      python3 tools/ncu_summary.py "$rep.csv" >"$rep.txt" 2>>"$OUT/profile.log"
    ncu -i "$rep.ncu-rep" --page details --csv >"${rep}_details.csv" 2>>"$OUT/profile.log"
    head -c 4000 "$rep.txt" >>"$SUMMARY"
  done
fi

wants bench && bench_step bench run.py forward
wants bench_bwd && bench_step bench_bwd run_backward.py backward
if wants eagle3; then
  # The script keeps itself within --budget-s (workers killed past their share); the timeout is
  # a backstop. Table and PNG: $OUT/<gpu>_eagle3_unroll.{md,png}.
  run_step eagle3 420 "$OUT/eagle3.log" python3 bench/eagle3_unroll.py --budget-s "${EAGLE3_BUDGET_S:-300}" \
    --out "$OUT/${SLUG}_eagle3_unroll.md"
  cat "$OUT/${SLUG}_eagle3_unroll.md" >>"$SUMMARY" 2>/dev/null || tail -20 "$OUT/eagle3.log" >>"$SUMMARY"
fi
if wants linked; then
  # Linked score mods: first-call costs (new, cached in a fresh process) and forward time against
  # the built-in soft-cap (bench/linked_score_mod.py).
  run_step linked 300 "$OUT/linked.log" python3 bench/linked_score_mod.py --out "$OUT/${SLUG}_linked_score_mod.md"
  cat "$OUT/${SLUG}_linked_score_mod.md" >>"$SUMMARY" 2>/dev/null || tail -20 "$OUT/linked.log" >>"$SUMMARY"
fi
if wants torchspec; then
  # A TorchSpec-style layer: torch flex vs the drop-in vs Eagle3Attention (bench/torchspec_layer.py).
  run_step torchspec 600 "$OUT/torchspec.log" python3 bench/torchspec_layer.py --out "$OUT/${SLUG}_torchspec_layer.md"
  cat "$OUT/${SLUG}_torchspec_layer.md" >>"$SUMMARY" 2>/dev/null || tail -20 "$OUT/torchspec.log" >>"$SUMMARY"
fi
if wants train; then
  # EAGLE3 TTT training at a realistic size against the torch flex layer (bf16 tolerance): compiled
  # Triton, and FlashAttention-4's kernels (BACKEND=FLASH) where flash_attn.cute imports.
  for kernel in triton flash; do
    [[ $kernel == flash && -n "$fa4" ]] && { note "train flash: skipped (flash_attn.cute not importable)"; continue; }
    run_step "train-$kernel" 600 "$OUT/train_$kernel.log" python3 examples/python/eagle3_ttt_train.py --device cuda \
      --steps 4 --batch 1 --seq-len 8192 --hidden 4096 --heads 32 --kv-heads 8 --head-dim 128 --vocab 32000 \
      --reference-kernel "$kernel"
    tail -4 "$OUT/train_$kernel.log" >>"$SUMMARY"
  done
fi
cat "$SUMMARY"
