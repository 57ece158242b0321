"""scripts/study_eq14_mechanism.py: the curvature along the gradient that EA-CG sees on Eq. (14).

The quotients are checked against dense float64 references (the EA-CG operator assembled as a
matrix, the full Hessian from :func:`curvlab.hvp.dense_hessian`); the script runs end to end on a
tiny synthetic CIFAR-10 copy and, when ../shared/data is present, on the real first batch (slow).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_problem

from curvlab import curvature
from curvlab.hvp import dense_hessian, flatten
from fixtures import SHARED_DATA, write_npz

ROOT = Path(__file__).resolve().parents[1]


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("study_eq14_mechanism", ROOT / "scripts" / "study_eq14_mechanism.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["study_eq14_mechanism"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


S = _script()
TINY_NET = ["--set", "net.widths=[3072,8,6,10]"]  # the preset's sigmoid/Xavier net, two narrow hidden layers


def _dense_eacg_operator(blocks) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """EA-CG's block-diagonal matrix in ``net.parameters()`` order: per layer B ⊗ μμᵀ (W row-major), then B."""
    parts = []
    for blk in blocks:
        mu = blk.input_mean[:, None]
        parts += [torch.kron(blk.bias, mu @ mu.T), blk.bias]
    return torch.block_diag(*parts)


@pytest.mark.parametrize("kind", ["pch1", "fisher", "exact"])
def test_quotients_match_the_assembled_operator(kind: str) -> None:
    pr = make_problem("sigmoid", "nonconvex", widths=(5, 4, 3, 3), batch=6)
    torch.manual_seed(0)
    blocks = curvature(pr.net, pr.x, pr.y, kind, pr.loss)
    g = flatten([t for blk in blocks for t in (blk.grad_weight, blk.grad_bias)])
    a = _dense_eacg_operator(blocks)
    r = S.quotients(blocks)
    assert r["all"] == pytest.approx(float(g @ a @ g / (g @ g)), rel=1e-10)
    gb, b = blocks[-1].grad_bias, blocks[-1].bias
    assert r["output"] == pytest.approx(float(gb @ b @ gb / (gb @ gb)), rel=1e-10)


def test_full_quotient_matches_the_dense_hessian() -> None:
    pr = make_problem("sigmoid", "nonconvex", widths=(5, 4, 3, 3), batch=6)
    g = S.batch_gradient(pr.net, pr.x, pr.y, pr.loss)
    h = dense_hessian(pr.net, pr.x, pr.y, pr.loss)
    r = S.full_quotients(pr.net, pr.x, pr.y, pr.loss)
    assert r["exact_full"] == pytest.approx(float(g @ h @ g / (g @ g)), rel=1e-5)


def test_script_runs_on_tiny_synthetic_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_npz(tmp_path / "cifar10_jpeg.npz", n_train=40, n_test=16, size=32)
    out = tmp_path / "out"
    rc = S.main(["--out", str(out), "--data-root", str(tmp_path), "--batch", "16", "--per-sample", "3", *TINY_NET])
    assert rc == 0
    meta = json.loads((out / "study.json").read_text())
    assert meta["batch"] == 16 and meta["alpha"] == 0.02 and meta["lr"] == 1.0
    summary = {(t["kind"], t["part"]): t for t in meta["summary"]}
    for kind in ("pch1", "pch2", "fisher", "fisher:exact"):  # PSD kinds: r ≥ 0 in every scope
        assert summary[(kind, "all")]["batch"] >= 0 and summary[(kind, "all")]["sample_min"] >= 0
    # Per sample PCH-1 is |H| on the output block: the same magnitude as the exact block along g_i.
    assert summary[("pch1", "output")]["sample_median"] == pytest.approx(
        abs(summary[("exact", "output")]["sample_median"]), rel=1e-4)
    for s in meta["eacg_direction"].values():  # (1 − α) B + α I ⪰ α I, so ‖d‖ ≤ ‖g‖ / α
        assert 0 < s["d_alpha_over_g"] <= 1 + 1e-6 and 0 < s["cos_d_neg_g"] <= 1 + 1e-6
    rows = (out / "data.csv").read_text().splitlines()
    assert len(rows) == 1 + (1 + 3) * (6 * 2 + 2)  # header; (batch + samples) × (6 kinds × 2 parts + 2 full)
    assert "pch1" in capsys.readouterr().out


def test_bad_kind_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_npz(tmp_path / "cifar10_jpeg.npz", n_train=40, n_test=16, size=32)
    with pytest.raises(SystemExit) as exc:
        S.main(["--out", str(tmp_path / "o"), "--data-root", str(tmp_path), "--kinds", "pch3", *TINY_NET])
    assert exc.value.code == 2
    assert "--kinds" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "cifar10_jpeg.npz").is_file(), reason="needs ../shared/data/cifar10_jpeg.npz")
def test_real_first_batch_curvature_is_below_alpha(tmp_path: Path) -> None:
    """On the real θ⁰ and first batch, the batch-mean PCH/Fisher curvature along g is below α (the plateau)."""
    assert S.main(["--out", str(tmp_path), "--per-sample", "2", "--kinds", "fisher,pch1"]) == 0
    meta = json.loads((tmp_path / "study.json").read_text())
    summary = {(t["kind"], t["part"]): t for t in meta["summary"]}
    for kind in ("fisher", "pch1"):
        assert 0 < summary[(kind, "all")]["batch"] < meta["alpha"]
    assert summary[("pch1", "output")]["sample_median"] > 10 * summary[("pch1", "output")]["batch"]
