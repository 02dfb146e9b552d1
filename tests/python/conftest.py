"""pytest setup for the flashflex Python tests: a seeded generator per test, and torch's
"flex_attention called without torch.compile()" warning silenced (the eager path is the oracle).

Helpers live next to this file: dense_reference.py (float64 reference), mask_cases.py (named
mask_mods), helpers.py (inputs, torch flex oracle, tolerances)."""

from __future__ import annotations

import zlib

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", "ignore:flex_attention called without torch.compile:UserWarning")
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the test id: each test draws its own values, the same on every run."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
