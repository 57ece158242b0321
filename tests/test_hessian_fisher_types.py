"""Hessian-error logging of several Fisher definitions side by side (issue 22 §3: MC and empirical)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from curvlab import curvature, runfiles as rf
from curvlab.curvature.options import CurvatureOptions, Kind
from curvlab.hessian_log import HessianLogger
from curvlab.losses import make_loss
from curvlab.metrics import layerwise_errors
from curvlab.nets import MLP
from curvlab.report.tables import hessian_error_table, kind_column
from curvlab.train import train
from tests.test_train import TINY, config


@pytest.mark.parametrize("loss_name", ["cross_entropy", "nonconvex"])
def test_each_fisher_definition_is_logged_with_its_own_error(float64_default, loss_name):
    torch.manual_seed(0)
    net, loss = MLP([6, 5, 4, 3], "sigmoid"), make_loss(loss_name)
    x, y = torch.randn(9, 6), torch.randint(0, 3, (9,))
    log = HessianLogger([Kind.FISHER, Kind.PCH1], CurvatureOptions(), loss, 1, 0, fisher_mc=[1, 3],
                        fisher_types=["mc", "empirical", "exact"])
    rows = log.rows(net, x, y, step=0)
    fisher = [r for r in rows if r["kind"] == "fisher"]
    assert [(r["fisher"], r["mc_samples"]) for r in fisher if r["layer"] == 1] == [
        ("mc", 1), ("mc", 3), ("empirical", None), ("exact", None)]
    assert all(r["fisher"] is None for r in rows if r["kind"] == "pch1")
    exact = curvature(net, x, y, "exact", loss)
    for ftype in ("empirical", "exact"):  # deterministic definitions: equal to a direct computation
        want = layerwise_errors(curvature(net, x, y, "fisher", loss, fisher=ftype), exact)
        got = [r["error"] for r in fisher if r["fisher"] == ftype]
        assert got == pytest.approx([float(e) for e in want], rel=1e-12)
    emp = [r["error"] for r in fisher if r["fisher"] == "empirical"]
    ex = [r["error"] for r in fisher if r["fisher"] == "exact"]
    assert emp != pytest.approx(ex)  # true labels vs the predictive distribution: different matrices


def test_default_logs_the_runs_own_fisher_and_mc_counts_need_an_mc_fisher():
    ce = make_loss("cross_entropy")
    assert HessianLogger([Kind.FISHER], CurvatureOptions(fisher="empirical"), ce, 1, 0).fisher_types[0].value == "empirical"
    log = HessianLogger([Kind.FISHER], CurvatureOptions(), ce, 1, 0, fisher_mc=[2], fisher_types=["empirical"])
    assert any("hessian_fisher_mc: ignored" in n for n in log.notes)


def test_report_columns_name_each_definition_and_old_files_read_as_mc():
    rows = pd.DataFrame({
        "run_dir": "r", "step": 0, "layer": [1, 1, 1, 1, 1], "kind": ["fisher", "fisher", "fisher", "gn", "pch1"],
        "error": [1.0, 2.0, 3.0, 4.0, 5.0], "mc_samples": [1, 10, None, None, None],
        "fisher": ["mc", "mc", "empirical", None, None],
    })
    assert kind_column(rows).tolist() == ["fisher (MC 1)", "fisher (MC 10)", "fisher (empirical)", "gn", "pch1"]
    one_mc = rows[rows["mc_samples"] != 10]
    assert kind_column(one_mc).tolist() == ["fisher (MC)", "fisher (empirical)", "gn", "pch1"]
    old = rows.drop(columns="fisher").iloc[[0, 1, 3]]  # files written before the column: MC rows
    assert kind_column(old).tolist() == ["fisher (MC 1)", "fisher (MC 10)", "gn"]
    table = hessian_error_table(rows)
    assert list(table.columns) == ["fisher (MC 1)", "fisher (MC 10)", "fisher (empirical)", "gn", "pch1"]


def test_a_run_logs_mc_and_empirical_fisher_columns(tmp_path):
    train(config(*TINY, "solver=sgd", "train.max_steps=2", "log.hessian_every=1", "log.hessian_first=0",
                 "log.hessian_kinds=[fisher]", "log.hessian_fisher_types=[mc,empirical]",
                 "log.hessian_fisher_mc=[1,4]"), tmp_path)
    df = pd.read_csv(tmp_path / rf.HESSIAN_ERRORS)
    assert list(df.columns) == rf.HESSIAN_COLUMNS
    got = set(zip(df["fisher"], df["mc_samples"].fillna(0).astype(int)))
    assert got == {("mc", 1), ("mc", 4), ("empirical", 0)}


def test_an_unknown_fisher_definition_is_a_config_error():
    with pytest.raises(Exception, match="log.hessian_fisher_types"):
        config(*TINY, "log.hessian_fisher_types=[empirial]")
