"""The Hessian-error logger on conv nets (``hessian_log.py``): bias blocks of every layer, the
weight blocks of small conv layers, notes for what it skips; directly and through ``curvlab train``."""

from __future__ import annotations

import importlib

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
from curvlab.hessian_log import AUTOGRAD_ROWS, WEIGHT_LIMIT, HessianLogger, formed_weight_block, summary_line
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
    assert any("exact bias blocks by autograd (9 Hessian-vector products)" in n for n in log.notes)
    assert any(n.startswith("log.hessian_*: skipped pch1 on this net (the activation's residual") for n in log.notes)
    assert log.kinds == [Kind.GN]


def test_a_net_too_large_for_either_logs_nothing_with_a_note():
    net = nn.Sequential(nn.Conv2d(1, AUTOGRAD_ROWS + 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(AUTOGRAD_ROWS + 1, 2))
    x, y = torch.randn(2, 1, 24, 24), torch.tensor([0, 1])
    log = _logger(Kind.GN)
    assert log.rows(net, x, y, step=0) == [] and not log.due(1)
    assert any("no layer-wise Hessian errors on this net" in n and "Hessian-vector products" in n for n in log.notes)


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
