"""Bar plot (TFLOP/s per case and implementation) of a bench/run.py markdown table.

    python bench/plot.py bench/results/h100_sm80.md bench/results/h100_sm80.png

Reads the first markdown table whose header has `case`, `implementation` and `TFLOP/s`
columns; needs matplotlib (not a dependency of the package).
"""

from __future__ import annotations

import sys
from collections import OrderedDict


def read_table(path: str):
    """{case: {implementation: TFLOP/s}} in the table's order."""
    rows = OrderedDict()
    columns = None
    with open(path) as f:
        for line in f:
            if not line.startswith("|"):
                if columns is not None and rows:
                    break
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if columns is None:
                if {"case", "implementation", "TFLOP/s"} <= set(cells):
                    columns = {name: i for i, name in enumerate(cells)}
                continue
            if set(cells[0]) <= {"-"}:
                continue
            case, impl = cells[columns["case"]], cells[columns["implementation"]]
            rows.setdefault(case, OrderedDict())[impl] = float(cells[columns["TFLOP/s"]])
    if not rows:
        sys.exit(f"{path}: no table with case / implementation / TFLOP/s columns")
    return rows


def main(argv) -> None:
    if len(argv) != 2:
        sys.exit(__doc__)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source, target = argv
    rows = read_table(source)
    implementations = list(OrderedDict.fromkeys(impl for by_impl in rows.values() for impl in by_impl))
    width = 0.8 / len(implementations)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(rows), 4.5))
    for i, impl in enumerate(implementations):
        xs = [c + (i - (len(implementations) - 1) / 2) * width for c in range(len(rows))]
        ys = [by_impl.get(impl, 0.0) for by_impl in rows.values()]
        ax.bar(xs, ys, width, label=impl)
    ax.set_xticks(range(len(rows)), list(rows), rotation=20, ha="right")
    ax.set_ylabel("TFLOP/s (visible pairs)")
    ax.set_title(f"forward, {source.split('/')[-1]}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1:])
