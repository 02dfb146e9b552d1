"""Bar plots of the benchmark tables.

    python bench/plot.py bench/results/h100_sm80.md bench/results/h100_sm80.png
    python bench/plot.py bench/results/h100_eagle3_unroll.md bench/results/h100_eagle3_unroll.png

A bench/run.py or bench/run_backward.py table (columns `case`, `implementation`, `TFLOP/s`) gives
TFLOP/s per case and implementation; a bench/eagle3_unroll.py table (columns `case`, `implementation`, `fwd ms`,
`bwd ms`, `peak MiB`) gives four panels: forward ms, backward ms, peak memory (autograd's
saved MiB where no peak was measured, as in the CPU demonstration) and first-call ms. Cells that are not numbers
("n/a (...)", "-") get no bar; a number followed by a spread ("1.23 (1.20-1.30)") plots its first
number. Needs matplotlib (not a dependency of the package).
"""

from __future__ import annotations

import re
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Set

_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")
UNROLL_COLUMNS = {"case", "implementation", "fwd ms", "bwd ms", "peak MiB"}
RUN_COLUMNS = {"case", "implementation", "TFLOP/s"}


def number(cell: str) -> Optional[float]:
    """The leading number of a cell, None for 'n/a (...)', '-' and other text."""
    match = _NUMBER.match(cell)
    return float(match.group(1)) if match else None


def read_rows(path: str, required: Set[str]) -> List[Dict[str, str]]:
    """Rows (column -> cell) of the first markdown table whose header has the `required` columns."""
    rows: List[Dict[str, str]] = []
    columns = None
    with open(path) as f:
        for line in f:
            if not line.startswith("|"):
                if columns is not None:
                    break
                continue
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if columns is None:
                if required <= set(cells):
                    columns = cells
                continue
            if all(set(c) <= {"-"} for c in cells):
                continue
            rows.append(dict(zip(columns, cells)))
    return rows


def grouped(rows: List[Dict[str, str]], column: str):
    """{case: {implementation: value or None}} in the table's order."""
    by_case: "OrderedDict[str, OrderedDict[str, Optional[float]]]" = OrderedDict()
    for row in rows:
        by_case.setdefault(row["case"], OrderedDict())[row["implementation"]] = number(row.get(column, ""))
    return by_case


def read_table(path: str):
    """{case: {implementation: TFLOP/s}} of a bench/run.py table (None where it has no number)."""
    rows = read_rows(path, RUN_COLUMNS)
    if not rows:
        sys.exit(f"{path}: no table with case / implementation / TFLOP/s columns")
    return grouped(rows, "TFLOP/s")


def bars(ax, by_case, ylabel: str, log: bool = False) -> None:
    implementations = list(OrderedDict.fromkeys(impl for by_impl in by_case.values() for impl, value in by_impl.items()
                                                if value is not None))  # rows that are all n/a get no legend entry
    width = 0.8 / max(1, len(implementations))
    for i, impl in enumerate(implementations):
        xs, ys = [], []
        for c, by_impl in enumerate(by_case.values()):
            value = by_impl.get(impl)
            if value is not None and (value > 0 or not log):
                xs.append(c + (i - (len(implementations) - 1) / 2) * width)
                ys.append(value)
        ax.bar(xs, ys, width, label=impl)
    ax.set_xticks(range(len(by_case)), list(by_case), rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")


def plot_run(source: str, target: str, plt) -> None:
    by_case = read_table(source)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(by_case), 4.5))
    bars(ax, by_case, "TFLOP/s (visible pairs)")
    ax.set_title(source.split("/")[-1])
    ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def plot_unroll(rows: List[Dict[str, str]], source: str, target: str, plt) -> None:
    memory = "peak MiB"
    if all(number(r.get(memory, "")) is None for r in rows) and "saved MiB" in rows[0]:
        memory = "saved MiB"
    panels = [("fwd ms", "forward, 7 steps (ms)"), ("bwd ms", "backward, 7 steps (ms)"),
              (memory, f"{memory} of the unroll"), ("first call ms", "first call at a new size (ms)")]
    n_cases = len(OrderedDict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(2, 2, figsize=(2 * (1.5 + 0.9 * n_cases), 9.0))
    axes = axes.ravel()
    for ax, (column, title) in zip(axes, panels):
        bars(ax, grouped(rows, column), column, log=True)  # log: 2k..16k spans ~64x, compiles 1000x
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"EAGLE3 TTT unroll, {source.split('/')[-1]}", fontsize=11)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def main(argv) -> None:
    if len(argv) != 2:
        sys.exit(__doc__)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source, target = argv
    rows = read_rows(source, UNROLL_COLUMNS)
    if rows:
        plot_unroll(rows, source, target, plt)
    else:
        plot_run(source, target, plt)
    plt.close("all")


if __name__ == "__main__":
    main(sys.argv[1:])
