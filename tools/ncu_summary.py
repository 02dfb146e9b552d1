"""Summary of an Nsight Compute source page exported as CSV, one block per kernel:

    ncu -i report.ncu-rep --page source --csv --print-source sass > source.csv
    python tools/ncu_summary.py source.csv [--top 30] [--kernel regex] [--phase name:0x100-0x5f0 ...]

For each kernel: warp-state samples by stall reason, the instructions with the most samples (their
offset from the kernel's first instruction, the two main reasons), executed warp instructions by
opcode (to compare instruction counts per step with a peer's kernel), shared-memory wavefronts
and the instructions with excess wavefronts (bank conflicts), and, with --phase, the samples
falling in named offset ranges (read the offsets off the top list or the SASS).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter
from typing import Iterator, List, Tuple

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"
WAVEFRONTS, EXCESS = "L1 Wavefronts Shared", "L1 Wavefronts Shared Excessive"


def kernels(path: str) -> Iterator[Tuple[str, List[str], List[List[str]]]]:
    """(kernel name, header, rows) for each kernel block of the CSV."""
    name, header, rows = None, None, []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if row[0] == "Kernel Name":
                if name is not None and header is not None:
                    yield name, header, rows
                name, header, rows = row[1], None, []
            elif row[0] == "Address" and header is None:
                header = row
            elif header is not None:
                rows.append(row)
    if name is not None and header is not None:
        yield name, header, rows


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def opcode(sass: str) -> str:
    """The opcode without predicate and modifiers: '@!P0 HGMMA.64x64x16.F32 ...' -> 'HGMMA'."""
    words = sass.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0].split(".")[0] if words else "?"


def parse_phase(text: str) -> Tuple[str, int, int]:
    match = re.fullmatch(r"([^:]+):(0x[0-9a-fA-F]+|\d+)-(0x[0-9a-fA-F]+|\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"--phase: expected name:start-end (offsets), got {text!r}")
    return match.group(1), int(match.group(2), 0), int(match.group(3), 0)


def summarize(name: str, header: List[str], rows: List[List[str]], top: int, phases) -> None:
    col = {h: i for i, h in enumerate(header)}
    for needed in (SAMPLES, EXECUTED):
        if needed not in col:
            raise SystemExit(f"ncu_summary: column {needed!r} missing (export with --page source --csv)")
    reasons = [h for h in header if h.startswith("stall_") and "(Not Issued)" not in h]
    base = min(int(r[0], 16) for r in rows)
    samples = [number(r[col[SAMPLES]]) for r in rows]
    total = sum(samples) or 1.0
    print(f"== {name}")
    print(f"   {int(total)} warp-state samples, {len(rows)} instructions")
    by_reason = Counter({h[6:]: sum(number(r[col[h]]) for r in rows) for h in reasons})
    print("   stall reasons: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in by_reason.most_common(10)))
    print(f"   top {top} instructions by samples (offset, % of samples, executed, main reasons):")
    for i in sorted(range(len(rows)), key=lambda j: -samples[j])[:top]:
        r = rows[i]
        main = sorted(((number(r[col[h]]), h[6:]) for h in reasons), reverse=True)[:2]
        why = ", ".join(f"{k} {100 * v / total:.1f}" for v, k in main if v > 0)
        print(f"     +0x{int(r[0], 16) - base:05x} {100 * samples[i] / total:5.2f}% {number(r[col[EXECUTED]]):>12.0f}"
              f"  {r[col['Source']][:64]:64s} {why}")
    mix = Counter()
    for r in rows:
        mix[opcode(r[col["Source"]])] += number(r[col[EXECUTED]])
    executed = sum(mix.values()) or 1.0
    print(f"   executed warp instructions: {executed:.4g}; by opcode: "
          + ", ".join(f"{k} {100 * v / executed:.1f}%" for k, v in mix.most_common(14)))
    if WAVEFRONTS in col:
        waves = sum(number(r[col[WAVEFRONTS]]) for r in rows)
        excess = sum(number(r[col[EXCESS]]) for r in rows) if EXCESS in col else 0.0
        print(f"   shared wavefronts {waves:.4g}, excess {excess:.4g} ({100 * excess / max(waves, 1):.1f}%)")
        for r in rows:
            e = number(r[col[EXCESS]]) if EXCESS in col else 0.0
            if e > 0.01 * max(excess, 1) and e > 0.001 * waves:
                print(f"     +0x{int(r[0], 16) - base:05x} excess {e:.4g}  {r[col['Source']][:64]}")
    for phase, lo, hi in phases:
        share = sum(s for r, s in zip(rows, samples) if lo <= int(r[0], 16) - base < hi)
        print(f"   phase {phase} [+0x{lo:x}, +0x{hi:x}): {100 * share / total:.1f}% of samples")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", help="ncu --page source --csv --print-source sass output")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--kernel", default="", help="regex: only kernels whose name matches")
    parser.add_argument("--phase", type=parse_phase, action="append", default=[],
                        help="name:start-end, offsets from the kernel's first instruction")
    args = parser.parse_args(argv)
    found = 0
    for name, header, rows in kernels(args.csv):
        if rows and re.search(args.kernel, name):
            summarize(name, header, rows, args.top, args.phase)
            found += 1
    if not found:
        print(f"ncu_summary: no kernel in {args.csv} matches {args.kernel!r}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
