"""The profiling tools on the CPU: tools/ncu_summary.py reads an Nsight Compute source-page CSV
with two kernel blocks (samples by reason, top instructions, opcode mix, bank-conflict excess,
phases by offset), and bench/profile_case.py refuses to run without a GPU."""

import os
import sys

import pytest
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir)
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import ncu_summary  # noqa: E402
import profile_case  # noqa: E402

HEADER = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Instructions Executed",
          "L1 Wavefronts Shared", "L1 Wavefronts Shared Excessive", "stall_wait", "stall_barrier",
          "stall_wait (Not Issued)"]


def _block(name, rows):
    lines = [f'"Kernel Name","{name}",', ",".join(f'"{h}"' for h in HEADER)]
    lines += [",".join(f'"{c}"' for c in row) for row in rows]
    return "\n".join(lines) + "\n"


def test_summary_of_two_kernels(tmp_path, capsys):
    main_rows = [["0x7f0000001000", "HGMMA.64x64x16.F32.BF16 R0, gdesc[UR4], RZ", "60", "1,000", "8000", "0", "50",
                  "10", "40"],
                 ["0x7f0000001010", "@!P0 BAR.SYNC.DEFER_BLOCKING 0x1, 0x100", "30", "1,000", "0", "0", "0", "30", "0"],
                 ["0x7f0000001020", "STS.64 [R14], R152", "10", "2,000", "4000", "2000", "10", "0", "10"]]
    other_rows = [["0x7f0000009000", "FFMA R1, R2, R3, R4", "5", "10", "0", "0", "5", "0", "5"]]
    path = tmp_path / "source.csv"
    path.write_text(_block("bwd_kernel<...>", main_rows) + _block("convert_kernel", other_rows))

    assert ncu_summary.main([str(path), "--kernel", "bwd_kernel", "--top", "2", "--phase", "sync:0x10-0x20"]) == 0
    text = capsys.readouterr().out
    assert "== bwd_kernel<...>" in text and "convert_kernel" not in text
    assert "100 warp-state samples, 3 instructions" in text
    assert "wait 60.0%, barrier 40.0%" in text
    assert "+0x00000 60.00%" in text and "+0x00010 30.00%" in text and "+0x00020" not in text.split("executed")[0]
    assert "executed warp instructions: 4000; by opcode: STS 50.0%" in text
    assert "HGMMA 25.0%" in text and "BAR 25.0%" in text
    assert "shared wavefronts 1.2e+04, excess 2000 (16.7%)" in text
    assert "+0x00020 excess 2000" in text
    assert "phase sync [+0x10, +0x20): 30.0% of samples" in text

    assert ncu_summary.main([str(path), "--kernel", "no_such"]) == 1


def test_opcode_and_phase_parsing():
    assert ncu_summary.opcode("@!P0  BRA 0x7faed77e2ad0") == "BRA"
    assert ncu_summary.opcode("HGMMA.64x128x16.F32.BF16 R24, R228, gdesc[UR16].tnspB, R24") == "HGMMA"
    assert ncu_summary.parse_phase("P pass:0x13d0-0x3280") == ("P pass", 0x13D0, 0x3280)
    with pytest.raises(Exception, match="--phase"):
        ncu_summary.parse_phase("no-range")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is the CPU machine's behaviour")
def test_profile_case_needs_a_gpu(capsys):
    assert profile_case.main(["--impl", "flashflex", "--case", "causal_256_h4x2_d64"]) == 1
    assert "needs a GPU" in capsys.readouterr().out
