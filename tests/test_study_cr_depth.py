"""Bakker et al.'s cost claim (scripts/study_cr_depth.py) and the Bakker report pieces (curvlab.report.bakker)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from curvlab.hvp import directional_derivatives
from curvlab.report import report
from curvlab.report.bakker import cr_rebound_table, depth_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import study_cr_depth as study  # noqa: E402


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_lowrank_formulae_give_the_exact_directional_derivatives(depth):
    """Eqs. (38)–(39) with every layer pair equal forward-over-forward AD in float64 (so Eq. 39's missing
    cross-layer Gauss-Newton terms are restored)."""
    torch.manual_seed(depth)
    net = study.relu_net(depth, 6, n_in=5, n_out=4).double()
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 4, (7,))
    d = [torch.randn_like(p) for p in net.parameters()]
    g_grad, ghg = study.lowrank_directional(net, x, y, d)
    _, ref_grad, ref_ghg = directional_derivatives(net, x, y, d)
    assert float(g_grad) == pytest.approx(float(ref_grad), rel=1e-10, abs=1e-14)
    assert float(ghg) == pytest.approx(float(ref_ghg), rel=1e-10, abs=1e-14)


def test_eq39_as_printed_misses_the_cross_layer_gauss_newton_terms():
    """With one hidden layer there is no pair k ≠ r and the printed Eq. (39) is exact; with more it is not."""
    for depth, exact in ((1, True), (3, False)):
        torch.manual_seed(3)
        net = study.relu_net(depth, 6, n_in=5, n_out=4).double()
        x, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 4, (7,))
        d = [torch.randn_like(p) for p in net.parameters()]
        _, printed = study.lowrank_directional(net, x, y, d, as_printed=True)
        _, _, ref = directional_derivatives(net, x, y, d)
        assert (float(printed) == pytest.approx(float(ref), rel=1e-10)) is exact


def test_quick_study_writes_rows_and_the_report_fits_exponents(tmp_path):
    assert study.main(["--quick", "--out", str(tmp_path / "studies" / "cr_depth")]) == 0
    data = pd.read_csv(tmp_path / "studies" / "cr_depth" / "data.csv")
    assert set(data["method"]) == {"gradient step", "CR step (curvlab)", "CR step (Eq. 39)"}
    assert sorted(data["value"].unique()) == [2, 3] and (data["seconds"] > 0).all()
    files = {p.name for p in report([tmp_path / "studies"], tmp_path / "out")}
    assert {"cr_depth.md", "cr_depth.png"} <= files


def test_depth_table_exponents_and_ratios():
    rows = [{"value": d, "method": m, "seconds": c * d**k * f}
            for d in (2, 4, 8) for m, c, k in (("gradient step", 1e-3, 1), ("CR step (Eq. 39)", 1e-2, 2))
            for f in (0.9, 1.0, 5.0)]  # medians pick f = 1
    tab = depth_table(pd.DataFrame(rows))
    assert tab.loc["exponent k (time ∝ depth^k)", "CR step (Eq. 39)"] == pytest.approx(2.0)
    assert tab.loc["exponent k (time ∝ depth^k)", "gradient step"] == pytest.approx(1.0)
    assert tab.loc["depth 4", "CR step (Eq. 39) / gradient step"] == pytest.approx(40.0)
    assert tab.loc["exponent k, depth ≥ 4", "CR step (Eq. 39)"] == pytest.approx(2.0)
    busy = pd.DataFrame(rows).assign(cpu_seconds=lambda d: d["seconds"], seconds=lambda d: d["seconds"] * d["value"])
    assert depth_table(busy).loc["exponent k (time ∝ depth^k)", "gradient step"] == pytest.approx(1.0)  # CPU time


def test_rebound_finds_exit_trough_and_the_next_peak():
    steps = np.arange(1, 3001)
    ratio = np.where(steps < 1000, 2.0, np.where(steps < 1100, 0.2, np.where(steps < 1600, 1.5, 0.3)))
    metrics = pd.DataFrame({"run_dir": "r", "step": steps, "step_size": ratio * 0.5, "lr": 0.5, "train_loss": np.nan})
    ev = metrics["step"] % 100 == 0
    metrics.loc[ev, "train_loss"] = np.where(metrics.loc[ev, "step"] < 1000, 2.3, 2.0)
    runs = pd.DataFrame({"run_dir": ["r"], "run": ["exp/r"], "solver": ["cr"]})
    row = cr_rebound_table(metrics, runs).loc["exp/r"]
    assert row["exit"] == 1000
    assert row["trough"] == pytest.approx(0.2) and row["trough at"] == 1099
    assert row["rebound"] == pytest.approx(1.5) and 1199 <= row["rebound at"] <= 1599
    assert row["rebound / trough"] == pytest.approx(7.5) and row["train loss at rebound"] == 2.0
