"""The Rahimi scaling study's peak-memory measurement (a fresh process per call)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # importable by name: the spawned child unpickles its target from it
import study_rahimi_scaling as study  # noqa: E402


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory needs Linux /proc")
def test_peak_memory_sees_the_dense_matrix() -> None:
    """The dense solve of a 1,000-parameter net holds its 1000×1000 float32 Hessian (4 MB) at least;
    one HVP holds a few vectors. The measurement must tell them apart."""
    args = (2, 20, 4, 10_000, 1.0)  # depth, width, batch, dense_max, damping: 2·(20·21) + 10·21 = 1050 params
    dense, hvp = study.peak_mb("dense solve", args), study.peak_mb("HVP", args)
    assert dense >= 4.0 and hvp < dense / 2
