"""The CMake project configures without GoogleTest (the library alone) and says the C++ tests are
skipped. Runs CMake's configure step on this checkout, with find_package(GTest) disabled so the
result does not depend on what the machine has installed."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_configure_without_googletest_skips_the_tests(tmp_path):
    result = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path), "-DFLASHFLEX_CUDA=OFF",
                             "-DCMAKE_DISABLE_FIND_PACKAGE_GTest=TRUE"], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "GoogleTest not found, the C++ tests are skipped" in " ".join(output.split())
    assert (tmp_path / "Makefile").exists() or (tmp_path / "build.ninja").exists()
