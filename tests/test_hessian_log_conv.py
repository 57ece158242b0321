"""The Hessian-error logger on conv nets (``hessian_log.py``): bias blocks of every layer, the
weight blocks of small conv layers, notes for what it skips; directly and through ``curvlab train``."""

from __future__ import annotations

import importlib
import logging

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from curvlab import runfiles as rf
from curvlab.cli import CONFIG_DIR
from curvlab.config import parse_config
from curvlab.curvature import curvature
from curvlab.curvature.options import CurvatureOptions, Kind
from curvlab.curvature.reference import abs_eig, ggn_sample_blocks, layer_hessian_blocks, pch_sample_blocks
from curvlab.hessian_log import WEIGHT_LIMIT, HessianLogger, formed_weight_block, summary_line
from curvlab.hessian_reference import HVP_BUDGET, select_layers
from curvlab.losses import make_loss
from curvlab.report.load import load_runs
from curvlab.train import train

DT = torch.float64
CE = make_loss("cross_entropy")


def _net(c_out: int = 2) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """conv → Tanh → MaxPool → conv → ReLU → Flatten → Linear in float64, 6 samples, 4 classes."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, c_out, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Conv2d(c_out, 3, 3),
                        nn.ReLU(), nn.Flatten(), nn.Linear(3, 4)).to(DT)
    return net, torch.randn(6, 1, 6, 6, dtype=DT), torch.randint(0, 4, (6,))


def _logger(*kinds: Kind) -> HessianLogger:
    return HessianLogger(list(kinds), CurvatureOptions(), CE, every=1, first=0)


def test_formed_weight_block_equals_the_exact_weight_block():
    """The block formed from the matrix-free product equals torch.func.hessian's weight block."""
    net, x, y = _net()
    exact = curvature(net, x, y, "exact", CE, block_products=True)
    truth = layer_hessian_blocks(net, x, y, CE)
    for t in (0, 1):
        torch.testing.assert_close(formed_weight_block(exact[t]), truth[t].weight, rtol=1e-10, atol=1e-12)


def test_conv_rows_equal_the_reference_errors():
    """Bias rows for every layer, weight rows for both conv layers, each ‖B̃ − |B|‖_F of the references."""
    net, x, y = _net()
    rows = _logger(Kind.PCH1).rows(net, x, y, step=7)
    truth, pch = layer_hessian_blocks(net, x, y, CE), pch_sample_blocks(net, x, y, CE, "abs")
    bias = {r["layer"]: r for r in rows if "block" not in r}
    weight = {r["layer"]: r for r in rows if r.get("block") == "weight"}
    assert sorted(bias) == [1, 2, 3] and sorted(weight) == [1, 2]
    for t in range(3):
        want = torch.linalg.matrix_norm(pch[t].bias - abs_eig(truth[t].bias))
        assert bias[t + 1]["error"] == pytest.approx(float(want.detach()), rel=1e-8, abs=1e-12)
        assert bias[t + 1]["reference"] == pytest.approx(float(torch.linalg.matrix_norm(truth[t].bias)), rel=1e-8)
    for t in range(2):
        want = torch.linalg.matrix_norm(pch[t].weight - abs_eig(truth[t].weight))
        assert weight[t + 1]["error"] == pytest.approx(float(want), rel=1e-8, abs=1e-12)
    assert weight[1]["error"] > 1e-3  # Tanh's residual: PCH-1 differs from the exact block there
    assert all(r["step"] == 7 and r["kind"] == "pch1" and r["batch"] == 6 for r in rows)


def test_large_conv_weight_blocks_are_skipped_with_a_note():
    net, x, y = _net(c_out=WEIGHT_LIMIT // 9 + 1)  # first conv: C_out·1·9 > WEIGHT_LIMIT; second: 3·C_in·9 too
    log = _logger(Kind.GN)
    rows = log.rows(net, x, y, step=0)
    assert not [r for r in rows if r.get("block") == "weight"] and len(rows) == 3
    assert any("conv weight blocks skipped" in n and "layer 1" in n for n in log.notes)
    assert "weight" not in (summary_line(rows) or "")


def test_maps_too_large_for_per_sample_blocks_take_autograd_bias_blocks(monkeypatch):
    """Per-sample blocks refused (their limit lowered to this tiny net's size): bias rows from Hessian-vector
    products, equal to torch.func.hessian's; no weight rows; a note says so. PCH-1's residual rows refused
    too (their budget lowered): skipped with a note."""
    monkeypatch.setattr(importlib.import_module("curvlab.curvature.steps"), "_SAMPLE_LIMIT", 100)
    monkeypatch.setattr(importlib.import_module("curvlab.curvature.messages"), "RESIDUAL_ROW_BUDGET", 100)
    net, x, y = _net()
    log = _logger(Kind.GN, Kind.PCH1)
    rows = log.rows(net, x, y, step=0)
    truth, ggn = layer_hessian_blocks(net, x, y, CE), ggn_sample_blocks(net, x, y, CE)
    assert [(r["kind"], r["layer"]) for r in rows] == [("gn", 1), ("gn", 2), ("gn", 3)]
    assert not any("block" in r for r in rows)
    for t, r in enumerate(rows):
        want = torch.linalg.matrix_norm(ggn[t].bias - abs_eig(truth[t].bias)).detach()
        assert r["error"] == pytest.approx(float(want), rel=1e-8, abs=1e-12)
        assert r["reference"] == pytest.approx(float(torch.linalg.matrix_norm(truth[t].bias)), rel=1e-8)
    assert rows[0]["error"] > 1e-3  # Tanh's residual: GN differs from the exact block there
    assert any("exact bias blocks by autograd (9 Hessian-vector products" in n for n in log.notes)
    assert any(n.startswith("log.hessian_*: skipped pch1 on this net (the activation's residual") for n in log.notes)
    assert log.kinds == [Kind.GN]


def _relu_net() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """conv → ReLU → MaxPool → conv (no bias) → ReLU → Flatten → Linear → ReLU → Linear, float64: no residual."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 2, 2, bias=False),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 4)).to(DT)
    return net, torch.randn(6, 1, 6, 6, dtype=DT), torch.randint(0, 4, (6,))


@pytest.mark.parametrize("loss", ["cross_entropy", "nonconvex"])
def test_a_relu_net_takes_its_exact_blocks_from_the_gn_recursion(monkeypatch, loss):
    """No step has a residual: the exact blocks come from the GN recursion (signed per-sample factors), even
    where the exact recursion's per-sample blocks are refused, and equal torch.func.hessian's, for a convex
    and a non-convex loss; GN (and for CE PCH-1) then log zero error."""
    monkeypatch.setattr(importlib.import_module("curvlab.curvature.steps"), "_SAMPLE_LIMIT", 10)  # exact refused
    net, x, y = _relu_net()
    crit = make_loss(loss)
    log = HessianLogger([Kind.GN, Kind.PCH1], CurvatureOptions(), crit, every=1, first=0)
    passes = []
    real = log._curvature
    monkeypatch.setattr(log, "_curvature", lambda *a: passes.append(a[3].kind) or real(*a))
    rows = log.rows(net, x, y, step=0)
    assert passes == ([] if crit.convex else [Kind.PCH1])  # GN (and PCH on CE) reuse the reference's pass
    truth = layer_hessian_blocks(net, x, y, crit)
    bias = [r for r in rows if "block" not in r]
    assert sorted({r["layer"] for r in bias}) == [1, 2, 3, 4]
    assert {r["kind"] for r in bias} == ({"gn", "pch1"} if crit.convex else {"pch1"})  # GN: not PSD on Eq. 14
    assert {r["layer"] for r in rows if r.get("block") == "weight"} == {1, 2}  # 27 and 24 weights: formed
    for r in bias:
        assert r["reference"] == pytest.approx(float(torch.linalg.matrix_norm(truth[r["layer"] - 1].bias)), rel=1e-8)
    worst = max(r["error"] for r in rows)
    if crit.convex:  # |B| = B (PSD): GN ≡ PCH-1 ≡ exact
        assert worst < 1e-12
    else:  # indefinite output Hessians: PCH-1's per-sample |H_i| differs from |B_t|
        assert worst > 1e-6
    assert any("exact blocks from the Gauss-Newton recursion" in n for n in log.notes)
    assert not any("autograd" in n for n in log.notes)


def test_a_sketched_run_logs_its_sketched_gn_and_an_unsketched_fisher():
    """curvature.sketch=true: GN's logged blocks are the sketch's (a pass of their own, error > 0), the exact
    reference and the Fisher are not sketched (the sketch applies to gn/pch only)."""
    net, x, y = _relu_net()
    log = HessianLogger([Kind.GN, Kind.FISHER], CurvatureOptions(sketch=True, mc_samples=1), CE, every=1, first=0)
    rows = log.rows(net, x, y, step=0)
    assert {r["kind"] for r in rows} == {"gn", "fisher"}
    assert min(r["error"] for r in rows if r["kind"] == "gn" and "block" not in r) > 1e-6


def test_the_budget_picks_the_output_and_conv_layers_first():
    """Preset shapes: mnist_2c2d's bias widths 32, 64, 1024, 10 and cifar10_3c3d's 64, 96, 128, 512, 256, 10."""
    assert select_layers([32, 64, 1024, 10], [True, True, False, False], HVP_BUDGET) == [0, 1, 3]
    assert select_layers([64, 96, 128, 512, 256, 10], [True] * 3 + [False] * 3, HVP_BUDGET) == [0, 1, 2, 5]
    assert select_layers([64, 96, 128, 512, 256, 10], [True] * 3 + [False] * 3, 600) == [0, 1, 2, 4, 5]
    assert select_layers([32, 64, 1024, 10], [True, True, False, False], 50) == [0, 3]  # conv 2 no longer fits
    assert select_layers([32, 64, 1024, 10], [True, True, False, False], 9) == []
    assert select_layers([5, 3, 4], [False, False, False], 7) == [1, 2]  # no conv: output, then narrowest


def test_autograd_blocks_within_the_budget_only(monkeypatch):
    """Tanh net, per-sample blocks refused: a budget of 6 products takes the output layer (4) and conv 1 (2);
    conv 2 (3) is skipped with a note; the rows equal torch.func.hessian's; budget 0 logs nothing."""
    monkeypatch.setattr(importlib.import_module("curvlab.curvature.steps"), "_SAMPLE_LIMIT", 100)
    net, x, y = _net()
    log = HessianLogger([Kind.GN], CurvatureOptions(), CE, every=1, first=0, hvp_budget=6)
    rows = log.rows(net, x, y, step=0)
    truth, ggn = layer_hessian_blocks(net, x, y, CE), ggn_sample_blocks(net, x, y, CE)
    assert [r["layer"] for r in rows] == [1, 3]
    for r in rows:
        t = r["layer"] - 1
        want = torch.linalg.matrix_norm(ggn[t].bias - abs_eig(truth[t].bias)).detach()
        assert r["error"] == pytest.approx(float(want), rel=1e-8, abs=1e-12)
    (note,) = [n for n in log.notes if "autograd" in n]
    assert "(6 Hessian-vector products, log.hessian_hvp_budget=6) of layer(s) 1, 3" in note
    assert "skipped (products each) layer 2 (3)" in note
    none = HessianLogger([Kind.GN], CurvatureOptions(), CE, every=1, first=0, hvp_budget=0)
    assert none.rows(net, x, y, step=0) == [] and not none.due(1)
    assert any("no layer-wise Hessian errors on this net" in n and "hessian_hvp_budget=0" in n for n in none.notes)


def _digits_cfg(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return parse_config(compose("config", overrides=[
            "net=mnist_2c2d", "net.input_shape=null", "dataset=digits", "dataset.train_subset=64",
            "dataset.test_subset=32", "train.batch_size=16", "solver=sgd", "device=cpu", "log.progress=false",
            "log.hessian_every=0", *overrides,
        ]))


@pytest.mark.parametrize("bad", ["-1", "1.5", "many", "true"])
def test_the_budget_is_validated_in_config(bad):
    with pytest.raises(ValueError, match=r"^log\.hessian_hvp_budget must be (an integer|>= 0)"):
        _digits_cfg(f"log.hessian_hvp_budget={bad}")


def test_curvlab_train_logs_the_mnist_2c2d_layers_on_digits(tmp_path):
    """The mnist_2c2d preset (ReLU, max-pooling) on 8×8 digits: every layer logged from the GN recursion
    (no Hessian-vector products); GN, PCH-1 and PCH-2 equal the exact blocks (ReLU + CE)."""
    summary = train(_digits_cfg("train.max_steps=1", "log.hessian_first=1", "log.hessian_kinds=[gn,pch1,pch2]"),
                    tmp_path)
    df = pd.read_csv(tmp_path / rf.HESSIAN_ERRORS)
    assert sorted(df["layer"].unique()) == [1, 2, 3, 4] and "block" not in df  # conv weights: 800, 51,200
    assert ((df["error"] / df["reference"]) < 1e-5).all() and (df["reference"] > 0).all()  # float32 round-off
    assert any("Gauss-Newton recursion" in n for n in summary["notes"])
    assert any("conv weight blocks skipped" in n for n in summary["notes"])
    assert not any("autograd" in n for n in summary["notes"])


def test_curvlab_train_logs_the_layers_within_the_budget(tmp_path, monkeypatch, caplog):
    """mnist_2c2d's layers with Tanh (a residual: not the GN route) on 8×8 digits, per-sample blocks refused,
    budget 110: the output layer and both conv layers (10 + 32 + 64 products), the 1024-wide layer skipped."""
    monkeypatch.setattr(importlib.import_module("curvlab.curvature.steps"), "_SAMPLE_LIMIT", 1000)
    layers = ("net.layers=['conv(32, 5, padding=2)',tanh,'maxpool(2, 2)','conv(64, 5, padding=2)',tanh,"
              "'maxpool(2, 2)',flatten,1024,tanh,'${dataset.num_classes}']")
    with caplog.at_level(logging.INFO, logger="curvlab"):
        summary = train(_digits_cfg(layers, "train.max_steps=2", "log.hessian_first=2",
                                    "log.hessian_kinds=[gn,fisher]", "log.hessian_hvp_budget=110"), tmp_path)
    df = pd.read_csv(tmp_path / rf.HESSIAN_ERRORS)
    assert sorted(df["layer"].unique()) == [1, 2, 4] and sorted(df["step"].unique()) == [0, 1]
    assert set(df["kind"]) == {"gn", "fisher"} and (df["error"] > 0).all()
    notes = [n for n in summary["notes"] if "autograd" in n]
    assert len(notes) == 1 and "of layer(s) 1, 2, 4; skipped (products each) layer 3 (1,024)" in notes[0]
    assert [r.getMessage() for r in caplog.records].count(notes[0]) == 1  # in the run's log too, once


def test_curvlab_train_logs_a_tiny_conv_net(tmp_path):
    """`curvlab train` with a conv net on the 8×8 digits and the logger on: bias and weight rows."""
    layers = "net.layers=['conv(2, 3)',tanh,'maxpool(2)',flatten,'${dataset.num_classes}']"
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = parse_config(compose("config", overrides=[
            "net=mnist_2c2d", "net.input_shape=null", layers, "dataset=digits", "dataset.train_subset=64",
            "dataset.test_subset=32", "train.batch_size=16", "train.max_steps=3", "solver=sgd", "device=cpu",
            "log.progress=false", "log.hessian_first=2", "log.hessian_every=0", "log.hessian_kinds=[gn,pch1]",
        ]))
    summary = train(cfg, tmp_path)
    assert summary["status"] == "completed"
    df = pd.read_csv(tmp_path / rf.HESSIAN_ERRORS)
    assert sorted(df["step"].unique()) == [0, 1] and set(df["kind"]) == {"gn", "pch1"}
    bias, weight = df[df["block"].isna()], df[df["block"] == "weight"]
    assert len(bias) == 2 * 2 * 2 and sorted(bias["layer"].unique()) == [1, 2]  # steps × kinds × layers
    assert len(weight) == 2 * 2 and set(weight["layer"]) == {1}  # the conv layer only
    assert (df["error"] >= 0).all() and (df["reference"] > 0).all()
    assert not any("Hessian" in n for n in summary["notes"])
    errors = load_runs([tmp_path]).errors  # the report's tables are of bias blocks: weight rows left out
    assert len(errors) == len(bias) and "block" not in errors
