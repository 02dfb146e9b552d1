"""Backward benchmark: flashflex against its peers, in one run, on the same inputs.

The same peers and cases as bench/run.py, plus flashflex's deterministic mode
(kernel_options={"deterministic": True}, default and sm_80 kernels). Every implementation's
backward goes through autograd (torch.autograd.grad of one forward's output, graph kept, with a
fixed random output gradient), so each row times the same work: the whole backward call,
workspace set-up, preprocess, main kernel and dQ conversion included. TFLOP/s = 2.5x the
forward's 4 * B * Hq * D * visible pairs. The first-call column is the first forward and
backward together (FA4 and torch flex compile both there). Columns: bench/compare.py.

    python bench/run_backward.py [--cases causal_16k,sliding_window_2048_16k] [--cold-l2]
                                 [--budget-s 500] [--iters 20] [--out bench/results/h200_backward.md]
    python bench/run_backward.py --dry-run   # no GPU: tiny CPU problems, table code only

Results: bench/results/<gpu>_backward.md and its PNG (bench/plot.py).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

if __name__ == "__main__":
    sys.exit(compare.main("backward", None, __doc__))
