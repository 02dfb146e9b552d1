"""flashflex.distributed on CUDA over NCCL, rank r on GPU r (skipped without 2+ GPUs): the cases
of test_distributed.py, float64 ones as they are (the dense block path: NCCL transfers and the
composition to float64 rounding) and float32 ones in bfloat16 (flashflex's CUDA kernels per
block, bfloat16 tolerances of test_distributed._tolerances)."""

from __future__ import annotations

import pytest
import torch

from test_distributed import CASES, run_group

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("world", [2, 3, 4])
def test_nccl_equals_single_process(world):
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs, found {torch.cuda.device_count()}")
    run_group(world, "nccl", CASES, {torch.float32: torch.bfloat16})
