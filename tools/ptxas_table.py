"""Markdown table of the sm80 forward kernels' ptxas resource usage (registers, spills) from a
build log compiled with -Xptxas -v (the CMake build and `pip install -v .` both are):

    python3 tools/ptxas_table.py build.log
"""

import re
import sys

MODS = ["none", "softcap", "alibi", "bias"]
TRAITS = re.compile(r"FwdTraitsI(13__nv_bfloat16|6__half)Li(\d+)ELi(\d+)ELi(\d+)ELi(\d+)ELb([01])ELi(\d+)EEE"
                    r"LNS_12ScoreModKindE(\d)")


def main(path: str) -> None:
    rows, cur = [], None
    for line in open(path, errors="replace"):
        entry = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if entry:
            t = TRAITS.search(entry.group(1))
            cur = None if t is None else {
                "arch": entry.group(2), "dtype": "bf16" if "bfloat" in t.group(1) else "fp16", "D": int(t.group(2)),
                "tile": f"{t.group(7)}x{t.group(3)}, {t.group(4)} warps, Q {'regs' if t.group(6) == '1' else 'smem'}",
                "mod": MODS[int(t.group(8))]}
            continue
        if cur is None:
            continue
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if spill:
            cur["spill"] = f"{spill.group(1)}/{spill.group(2)}"
        used = re.search(r"Used (\d+) registers", line)
        if used:
            cur["regs"] = used.group(1)
            rows.append(cur)
            cur = None
    rows.sort(key=lambda r: (r["dtype"], r["D"], MODS.index(r["mod"]), r["arch"]))
    print("| dtype | D | tile (M x N) | score mod | arch | registers | spill st/ld bytes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["dtype"], r["D"], r["tile"], r["mod"], r["arch"], r["regs"], r.get("spill", "?")]
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
