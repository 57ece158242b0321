"""``curvlab.report.milestones``: each curve at fixed points of its run, its plateau exit, best and lowest values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curvlab.report.load import load_runs
from curvlab.report.milestones import (
    milestone_steps, milestone_table, plateau_exit, plateau_table, plateau_threshold,
)
from curvlab.report.render import render_experiment
from tests.report_fixtures import write_run


def _metrics(rng: np.random.Generator) -> tuple[pd.DataFrame, dict[tuple[str, int], pd.DataFrame]]:
    """Two curves × 3 seeds, evaluated every 100 of 1,000 updates (plus an epoch end at 469, logged twice)."""
    runs, frames = {}, []
    for label, loss, start in (("A", "cross_entropy", 2.4), ("B", "nonconvex", 0.7)):
        for seed in range(3):
            steps = np.array([0, 100, 200, 300, 400, 469, 469, 500, 600, 700, 800, 900, 1000])
            train = start * np.exp(-steps / (300.0 + 200 * seed)) + 0.01 * rng.random(len(steps))
            df = pd.DataFrame({"step": steps, "epoch": steps / 469, "train_loss": train,
                               "test_loss": 1 + rng.random(len(steps)), "test_acc": rng.random(len(steps)),
                               "run_dir": f"{label}{seed}", "label": label, "seed": seed, "loss": loss})
            df.loc[6, ["train_loss", "test_loss", "test_acc"]] += [0.5, 0.5, 0.0]  # the later row of 469 counts
            runs[(label, seed)] = df.drop(index=5)
            frames.append(df)
    batch_rows = pd.DataFrame({"step": [50], "train_loss": [np.nan], "run_dir": ["A0"], "label": ["A"]})
    return pd.concat([*frames, batch_rows], ignore_index=True), runs


def test_milestone_steps_are_the_nearest_evaluated_updates() -> None:
    assert milestone_steps([0, 250, 469, 500, 750, 1000, 2000]) == [250, 500, 1000, 2000]  # 200 → 250
    assert milestone_steps(range(0, 20001, 100)) == [2000, 5000, 10000, 20000]
    assert milestone_steps([0]) == [0] and milestone_steps([]) == []


def test_milestone_table_means_and_stds_over_seeds() -> None:
    metrics, runs = _metrics(np.random.default_rng(0))
    tab = milestone_table(metrics)
    assert tab.loc["A", "update"].tolist() == [100, 200, 500, 1000]  # nearest to 100, 250, 500, 1000
    for label in ("A", "B"):
        for step in (100, 200, 500, 1000):
            row = tab.loc[label].set_index("update").loc[step]
            at = pd.concat([r[r["step"] == step] for (lab, _), r in runs.items() if lab == label])
            assert row["seeds"] == 3
            assert row["train loss"] == f"{at.train_loss.mean():.4g} ± {at.train_loss.std(ddof=1):.2g}"
            acc = at.test_acc * 100
            assert row["test acc (%)"] == f"{acc.mean():.4g} ± {acc.std(ddof=1):.2g}"


def test_plateau_exit_best_and_lowest_per_seed() -> None:
    metrics, runs = _metrics(np.random.default_rng(1))
    tab = plateau_table(metrics)
    for label, threshold in (("A", 2.25), ("B", 0.60)):
        exits = [plateau_exit(runs[(label, s)], threshold) for s in range(3)]
        assert all(e is not None for e in exits) and exits == sorted(exits)  # slower seeds leave later
        assert tab.loc[label, "leaves the plateau at"] == ", ".join(f"{e:,}" for e in exits)
        best = [runs[(label, s)].loc[runs[(label, s)].test_acc.idxmax()] for s in range(3)]
        vals = pd.Series([100 * b.test_acc for b in best])
        assert tab.loc[label, "best test acc (%)"] == f"{vals.mean():.4g} ± {vals.std(ddof=1):.2g}"
        assert tab.loc[label, "best test acc at"] == ", ".join(f"{int(b.step):,}" for b in best)
        low = [runs[(label, s)].loc[runs[(label, s)].test_loss.idxmin()] for s in range(3)]
        assert tab.loc[label, "lowest test loss at"] == ", ".join(f"{int(b.step):,}" for b in low)
    assert plateau_exit(runs[("A", 0)], 0.0) is None
    never = metrics.assign(train_loss=lambda d: d.train_loss + 10)
    assert plateau_table(never).loc["A", "leaves the plateau at"] == "never, never, never"
    assert plateau_table(metrics.assign(loss="hinge")).loc["A", "leaves the plateau at"] == "-"
    # two classes: the same fraction of ln 2 (0.68), so curve A (from 2.4) leaves later than with ten
    two = plateau_table(metrics, {f"A{s}": 2 for s in range(3)})
    assert two.loc["A", "leaves the plateau at"] == ", ".join(f"{plateau_exit(runs[('A', s)], 0.6773):,}"
                                                             for s in range(3))
    assert plateau_threshold("cross_entropy") == 2.25 and plateau_threshold("cross_entropy", 2) == pytest.approx(
        0.6773, abs=1e-4)


def test_render_writes_the_milestone_tables(tmp_path: Path) -> None:
    for seed in range(2):
        write_run(tmp_path / "runs", f"e/s{seed}", experiment="e", curvature="pch1", solver="eacg", seed=seed,
                  steps=40)
    files = {p.name for p in render_experiment(load_runs([tmp_path / "runs"]), "e", tmp_path / "o")}
    assert {"e_milestones.md", "e_milestones.csv", "e_plateau.md", "e_plateau.tex"} <= files
    steps = pd.read_csv(tmp_path / "o" / "e_milestones.csv", index_col=0)
    assert steps["update"].tolist() == [4, 10, 18, 38]  # evaluated every other update; 19: the first of a tie
    plateau = pd.read_csv(tmp_path / "o" / "e_plateau.csv", index_col=0)
    assert plateau["seeds"].tolist() == [2] and plateau["leaves the plateau at"].tolist() == ["0, 0"]


@pytest.mark.parametrize("fractions", [(0.5,), (0.1, 1.0)])
def test_milestone_steps_fractions(fractions: tuple[float, ...]) -> None:
    steps = milestone_steps(range(0, 1001, 10), fractions)
    assert steps == [round(f * 1000) for f in fractions]
