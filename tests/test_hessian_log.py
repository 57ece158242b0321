"""Hessian-error logging: reference norms, several logging batches, Fisher MC variants."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from curvlab import curvature, runfiles as rf
from curvlab.curvature.options import CurvatureOptions, Kind
from curvlab.hessian_log import HessianLogger
from curvlab.losses import make_loss
from curvlab.nets import MLP
from curvlab.train import _Run, train
from tests.test_train import TINY, config


def test_reference_is_the_exact_block_norm(float64_default):
    torch.manual_seed(0)
    net, loss = MLP([6, 5, 4, 3], "tanh"), make_loss("cross_entropy")
    x, y = torch.randn(7, 6), torch.randint(0, 3, (7,))
    log = HessianLogger([Kind.PCH1], CurvatureOptions(), loss, every=1, first=0)
    rows = log.rows(net, x, y, step=3)
    exact = curvature(net, x, y, "exact", loss)
    assert [r["reference"] for r in rows] == pytest.approx([float(b.bias.norm()) for b in exact], rel=1e-12)
    assert all(r["batch"] == 7 and r["mc_samples"] is None and r["step"] == 3 for r in rows)


def test_fisher_logged_per_mc_sample_count(float64_default):
    torch.manual_seed(0)
    net, loss = MLP([6, 5, 3], "sigmoid"), make_loss("cross_entropy")
    x, y = torch.randn(9, 6), torch.randint(0, 3, (9,))
    rows = HessianLogger([Kind.FISHER, Kind.GN], CurvatureOptions(), loss, 1, 0, fisher_mc=[1, 50]).rows(net, x, y, 0)
    fisher = {(r["mc_samples"], r["layer"]): r["error"] for r in rows if r["kind"] == "fisher"}
    assert sorted({k[0] for k in fisher}) == [1, 50]
    assert [r["mc_samples"] for r in rows if r["kind"] == "gn"] == [None, None]
    # More samples -> closer to the exact Fisher (a different matrix than |B|, but a different error too).
    assert fisher[(1, 1)] != fisher[(50, 1)]


def test_fisher_mc_ignored_with_a_note_for_exact_fisher():
    log = HessianLogger([Kind.FISHER], CurvatureOptions(fisher="exact"), make_loss("cross_entropy"), 1, 0, [1, 5])
    assert any("hessian_fisher_mc: ignored" in n for n in log.notes)


def test_run_logs_every_batch_size_without_changing_training(tmp_path):
    base = [*TINY, "solver=sgd", "train.max_steps=3", "log.hessian_every=2", "log.hessian_first=0",
            "log.hessian_kinds=[pch1,fisher]"]
    train(config(*base, "log.hessian_batches=[16,40]", "log.hessian_fisher_mc=[1,4]"), tmp_path / "a")
    train(config(*base), tmp_path / "b")
    df = pd.read_csv(tmp_path / "a" / rf.HESSIAN_ERRORS)
    assert list(df.columns) == rf.HESSIAN_COLUMNS
    assert sorted(df["batch"].unique()) == [16, 40] and sorted(df["step"].unique()) == [0, 2]  # 3 not due
    assert sorted(df.loc[df.kind == "fisher", "mc_samples"].unique()) == [1, 4]
    assert (df["reference"] > 0).all()
    # The extra logging draws its samples off the training RNG: the training curve is the same.
    a, b = (pd.read_csv(tmp_path / r / rf.METRICS)["batch_loss"] for r in ("a", "b"))
    assert a.iloc[1:].tolist() == b.iloc[1:].tolist()  # row 0 is the initial evaluation (no batch loss)


@pytest.mark.parametrize("bad", ["log.hessian_batches=[0]", "log.hessian_fisher_mc=[-1]"])
def test_bad_logging_sizes_are_refused(bad):
    with pytest.raises(ValueError, match=bad.split("=")[0]):
        config(*TINY, bad)


def test_final_state_is_logged_when_due_and_on_resuming_a_finished_run(tmp_path, monkeypatch):
    base = [*TINY, "solver=sgd", "log.hessian_every=2", "log.hessian_first=0", "log.hessian_kinds=[pch1]",
            "log.hessian_batches=[16]", "train.max_steps=4"]
    train(config(*base), tmp_path / "a")  # θ^0, θ^2 and the final θ^4
    steps = pd.read_csv(tmp_path / "a" / rf.HESSIAN_ERRORS)["step"]
    assert sorted(steps.unique()) == [0, 2, 4] and (steps == 4).sum() == (steps == 2).sum()
    train(config(*base), tmp_path / "a")  # resuming the finished run adds nothing
    assert pd.read_csv(tmp_path / "a" / rf.HESSIAN_ERRORS)["step"].tolist() == steps.tolist()
    # A run finished without its final state (as older code wrote them) gets it on resuming.
    with monkeypatch.context() as m:
        m.setattr(_Run, "log_final_hessian", lambda self: None)
        train(config(*base), tmp_path / "c")
    assert 4 not in set(pd.read_csv(tmp_path / "c" / rf.HESSIAN_ERRORS)["step"])
    train(config(*base), tmp_path / "c")
    assert pd.read_csv(tmp_path / "c" / rf.HESSIAN_ERRORS)["step"].tolist() == steps.tolist()
    # On the training batch (no logging batches) the final state is not logged: no batch is left.
    train(config(*[b for b in base if "hessian_batches" not in b]), tmp_path / "b")
    assert sorted(pd.read_csv(tmp_path / "b" / rf.HESSIAN_ERRORS)["step"].unique()) == [0, 2]
