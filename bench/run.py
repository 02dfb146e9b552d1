"""Forward benchmark: flashflex against its peers, in one run, on the same inputs.

Rows per case (bench/peers.py; each one optional: a peer that is missing or cannot express the
case prints n/a with the reason): FA4 (flash_attn.cute.flash_attn_func), torch flex with
kernel_options={"BACKEND": "FLASH"} compiled static, SDPA cuDNN, SDPA FlashAttention-2, torch flex
Triton compiled static, flashflex with its sm_80 kernels forced (kernel_options={"BACKEND":
"SM80"}, where the build has that option) and flashflex's default kernels. Default cases
(bench/cases.py): causal and dense at 8k and 16k with head dims 64 / 128 / 256, document 8 x 2048,
sliding window 2048 in 16k, GQA 40/8 at 8k; B=1, 32 / 8 heads, bf16. Columns: bench/compare.py.

    python bench/run.py [--cases causal_16k,document_8x2048] [--impls fa4,flashflex] [--cold-l2]
                        [--budget-s 500] [--iters 30] [--out bench/results/h200_forward.md]
    python bench/run.py --dry-run      # no GPU: the case / mask / table code on tiny CPU problems

Results: bench/results/<gpu>_forward.md and its PNG (bench/plot.py). The EAGLE3 TTT unroll has
its own benchmark, bench/eagle3_unroll.py.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

if __name__ == "__main__":
    sys.exit(compare.main("forward", None, __doc__))
