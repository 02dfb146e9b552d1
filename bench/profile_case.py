"""One implementation on one case, for a profiler: warm-up calls, then the profiled calls inside an
NVTX range named "profile", so that Nsight Compute measures exactly those kernels, ours and the
peers' alike (bench/peers.py builds them on the same inputs as the benchmarks):

    ncu --nvtx --nvtx-include "profile/" --clock-control none --set full --import-source no \\
        -o build/prof python bench/profile_case.py --impl fa4 --case causal_16k --direction backward
    ncu -i build/prof.ncu-rep --page source --csv --print-source sass > build/prof_source.csv
    python tools/ncu_summary.py build/prof_source.csv

tools/device_check.sh (step `profile`) runs this for flashflex and FA4.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases as cs  # noqa: E402
import peers  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="flashflex", choices=sorted(peers.IMPLS), help="implementation")
    parser.add_argument("--case", default="causal_16k", help="a bench/cases.py case name")
    parser.add_argument("--direction", default="backward", choices=["forward", "backward"])
    parser.add_argument("--warmup", type=int, default=3, help="calls before the profiled ones (compiles, caches)")
    parser.add_argument("--calls", type=int, default=1, help="calls inside the NVTX range")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_case: needs a GPU")
        return 1
    case = cs.parse(args.case)
    backward = args.direction == "backward"
    runner = peers.IMPLS[args.impl].build(case, peers.Inputs.make(case, "cuda"), "cuda", grad=backward)
    fn = runner.bwd(runner.fwd()) if backward else runner.fwd
    for _ in range(args.warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push("profile")
    for _ in range(args.calls):
        fn()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_pop()
    print(f"profile_case: {args.impl} {args.case} {args.direction}: {args.warmup} warm-up, {args.calls} profiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
