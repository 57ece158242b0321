"""Readable figures and tables (issue 20 item 6, issue 21 item 5): panels, styles, captions, grids, index.

Each test renders from fabricated run folders (``report_fixtures.write_run``) or tidy frames and
reads the texts back from the matplotlib objects or the written files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml

from curvlab.report import load_runs, render, report
from curvlab.report.figures import cr_figure, hessian_error_figure, scaling_figure, training_figure
from curvlab.report.grid import best_labels, heatmap_figure, searches
from curvlab.report.groups import group_runs
from curvlab.report.styles import CurveTraits, curve_traits, natural_key, panels
from curvlab.report.tables import cr_rate_table
from report_fixtures import write_run


def _texts_inside(fig: plt.Figure) -> list[str]:
    """Draw; everything drawn (tight box) and every visible, non-empty text artist lie within the figure (1 px slack).

    Tick labels are checked through the tight box only: matplotlib keeps labels of ticks outside
    the view, which it never draws.
    """
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    tight = fig.get_tightbbox(r)  # inches
    w, h = fig.get_size_inches()
    assert tight.x0 >= -0.01 and tight.y0 >= -0.01 and tight.x1 <= w + 0.01 and tight.y1 <= h + 0.01, tight
    ticks = {id(t) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) for t in axis.get_ticklabels(which="both")}
    box = fig.bbox
    out = []
    for t in fig.findobj(plt.Text):
        if not t.get_visible() or not t.get_text().strip() or id(t) in ticks:
            continue
        b = t.get_window_extent(r)
        assert b.x0 >= box.x0 - 1 and b.y0 >= box.y0 - 1 and b.x1 <= box.x1 + 1 and b.y1 <= box.y1 + 1, t.get_text()
        out.append(t.get_text())
    return out


def _caption(fig: plt.Figure) -> str:
    return " ".join(" ".join(t.get_text() for t in fig.findobj(plt.Text) if t.get_gid() == "caption").split())


def test_natural_key_orders_numbers_as_numbers() -> None:
    names = ["EA-CG · split 16", "EA-CG · split 2", "EA-CG", "lr=0.1", "lr=0.05", "eps=1e-05", "eps=1e-10"]
    assert sorted(names, key=natural_key) == ["EA-CG", "EA-CG · split 2", "EA-CG · split 16", "eps=1e-10",
                                              "eps=1e-05", "lr=0.05", "lr=0.1"]


@pytest.fixture()
def fig1_3(tmp_path: Path) -> Path:
    """The 13 curves of eacg_fig1_3: {EA-CG, KFI, KFI + Eq. 13} × 4 kinds, and momentum SGD."""
    root = tmp_path / "runs"
    for kind in ("fisher", "gn", "pch1", "pch2"):
        for solver, extra in (("eacg", {}), ("kfi", {}), ("kfi", {"rank_one_first_layer": True})):
            name = f"{solver}{'_r1' if extra else ''}_{kind}"
            write_run(root, name, experiment="fig", curvature=kind, solver=solver, seed=0,
                      cfg_extra={"solver": {"name": solver, "lr": 0.1, **extra}, "curvature": {"kind": kind}})
    write_run(root, "sgd", experiment="fig", curvature=None, solver="sgd", seed=0,
              cfg_extra={"solver": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})
    return root


def test_crowded_figure_is_one_panel_per_kind(fig1_3: Path) -> None:
    r = load_runs([fig1_3])
    runs = group_runs(r.runs).runs
    m = r.metrics.assign(label=r.metrics["run_dir"].map(dict(zip(runs["run_dir"], runs["label"]))))
    traits = curve_traits(runs)
    assert traits.method["KFI · Fisher (KFAC) · Eq. 13"] == "KFI · Eq. 13" and traits.kind["EA-CG · PCH-2"] == "PCH-2"
    layout = panels(traits)
    assert [t for t, _ in layout] == ["Fisher", "GN", "PCH-1", "PCH-2"]
    assert all(len(c) == 4 and "SGD (momentum 0.9)" in c for _, c in layout)  # 3 solvers + the SGD reference

    fig = training_figure(m, "eacg_fig1_3 · a long setting label " * 4, traits=traits)
    assert len(fig.axes) == 16  # 4 rows (loss, accuracy by time; by epoch) × 4 kinds
    assert [ax.get_title() for ax in fig.axes[:4]] == ["Fisher", "GN", "PCH-1", "PCH-2"]
    lines = {ln.get_label(): ln for ax in fig.axes for ln in ax.lines if not ln.get_label().startswith("_")}
    assert lines["EA-CG · Fisher"].get_color() == lines["EA-CG · GN"].get_color()  # one colour per method
    assert lines["EA-CG · Fisher"].get_color() != lines["KFI · Fisher (KFAC)"].get_color()
    assert lines["EA-CG · Fisher"].get_linestyle() != lines["EA-CG · GN"].get_linestyle()  # kind: line style
    assert all(len([ln for ln in ax.lines if not ln.get_label().startswith("_")]) <= 6 for ax in fig.axes)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:4] == ["EA-CG · Fisher", "EA-CG · GN", "EA-CG · PCH-1", "EA-CG · PCH-2"]
    assert legend[-1] == "SGD (momentum 0.9)" and len(legend) == 13
    texts = _texts_inside(fig)  # nothing clipped, the wrapped long title included
    assert any("a long setting label" in t for t in texts)
    cap = _caption(fig)
    assert "± 1 standard deviation over the seeds" in cap and "only some of the curve's seeds" in cap
    assert "line style: curvature kind" in cap and "One panel per curvature kind" in cap
    plt.close(fig)


def test_panels_fall_back_to_solver_families_then_chunks() -> None:
    one_kind = CurveTraits({f"{f} · lr={lr}": f"{f} · lr={lr}" for f in ("EA-CG", "KFI") for lr in (1, 2, 3, 4)}
                           | {"SGD": "SGD"}, {})
    one_kind = CurveTraits(one_kind.method, {k: ("" if k == "SGD" else "PCH-1") for k in one_kind.method})
    assert panels(one_kind) == [("EA-CG", ["EA-CG · lr=1", "EA-CG · lr=2", "EA-CG · lr=3", "EA-CG · lr=4", "SGD"]),
                                ("KFI", ["KFI · lr=1", "KFI · lr=2", "KFI · lr=3", "KFI · lr=4", "SGD"])]
    many = CurveTraits.each_own([f"run {i}" for i in range(1, 14)])
    assert [len(c) for _, c in panels(many)] == [6, 6, 1] and panels(many)[0][1][:3] == ["run 1", "run 2", "run 3"]


def test_legend_sorts_naturally_and_report_states_the_bands(tmp_path: Path) -> None:
    for split in (16, 2, 4):
        for seed in (0, 1):
            write_run(tmp_path / "runs", f"s{split}_{seed}", experiment="hbp", curvature="pch1", solver="eacg",
                      seed=seed, cfg_extra={"solver": {"name": "eacg", "lr": 0.1, "split": split}})
    r = load_runs([tmp_path / "runs"])
    runs = group_runs(r.runs).runs
    m = r.metrics.assign(label=r.metrics["run_dir"].map(dict(zip(runs["run_dir"], runs["label"]))))
    fig = training_figure(m, "hbp", traits=curve_traits(runs))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "EA-CG · PCH-1 · split 2", "EA-CG · PCH-1 · split 4", "EA-CG · PCH-1 · split 16"]
    assert len(fig.axes) == 4 and fig.axes[1].collections  # 2 seeds: shaded bands
    _texts_inside(fig)
    plt.close(fig)
    files = report([tmp_path / "runs"], tmp_path / "o")
    final = pd.read_csv(tmp_path / "o" / "hbp_final.csv", index_col=0)
    assert list(final.index) == ["EA-CG · PCH-1 · split 2", "EA-CG · PCH-1 · split 4", "EA-CG · PCH-1 · split 16"]
    index = (tmp_path / "o" / "index.md").read_text()
    assert "± 1 standard deviation over the seeds" in index  # the figure's caption, in the Markdown index
    assert files[-1].name == "index.md"


def test_final_table_shows_constants_alone_and_drops_zero_columns(tmp_path: Path) -> None:
    for seed in (0, 1, 2):
        d = write_run(tmp_path / "runs", f"r{seed}", experiment="e", curvature="pch1", solver="eacg", seed=seed)
        s = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**s, "log_time": 0.0, "train_loss": 0.5 + seed}))
    report([tmp_path / "runs"], tmp_path / "o", want={"tables"})
    md = (tmp_path / "o" / "e_final.md").read_text()
    final = pd.read_csv(tmp_path / "o" / "e_final.csv", index_col=0)
    assert final.loc["EA-CG · PCH-1", "steps"] == 6 and "6 ± 0" not in md  # a run length, not "6 ± 0"
    assert final.loc["EA-CG · PCH-1", "train loss"] == "1.5 ± 1"  # what differs keeps its spread
    assert not any(c.startswith("Hessian-log time") for c in final.columns)  # 0 in every run: dropped
    runs = pd.read_csv(tmp_path / "o" / "e_runs.csv", index_col=0)
    assert not any(c.startswith("Hessian-log time") for c in runs.columns)


def test_cr_peak_moving_average_uses_full_windows_only() -> None:
    """A huge α at update 0 alone is the peak of a min_periods=1 average (100 at update 0); full windows
    dilute it over the first ``period`` updates."""
    alpha = np.full(12, 0.1)
    alpha[0] = 10.0
    m = pd.DataFrame({"label": "CR", "run_dir": "r", "step": np.arange(12), "step_size": alpha, "lr": 0.1})
    tab = cr_rate_table(m, ["CR"], window=3, period=4)
    assert tab.loc["CR", "max moving-average alpha/lr"] == pytest.approx((100 + 3) / 4)  # updates 0–3
    assert tab.loc["CR", "at update"] == 3  # the first full window, not update 0
    short = cr_rate_table(m.iloc[:3], ["CR"], window=3, period=4)  # shorter than one window: no peak
    assert pd.isna(short.loc["CR", "max moving-average alpha/lr"]) and pd.isna(short.loc["CR", "at update"])


def test_error_and_cr_figures_explain_their_lines_and_fit(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_run(tmp_path / "runs", f"e{seed}", experiment="e", curvature="pch1", solver="eacg", seed=seed,
                  kinds=("fisher", "gn", "pch1", "pch2"), reference=True)
        write_run(tmp_path / "runs", f"cr{seed}", experiment="c", curvature=None, solver="cr", seed=seed, cr=True,
                  steps=12)
        write_run(tmp_path / "runs", f"sgd{seed}", experiment="c", curvature=None, solver="sgd", seed=seed, steps=12)
    r = load_runs([tmp_path / "runs"])
    fig = hessian_error_figure(r.errors, "errors " * 30)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Fisher", "GN", "PCH-1", "PCH-2"]
    assert "geometric standard deviation" in _caption(fig)
    _texts_inside(fig)
    plt.close(fig)
    runs = group_runs(r.select("c").runs).runs
    m = r.metrics.assign(label=r.metrics["run_dir"].map(dict(zip(runs["run_dir"], runs["label"])))).dropna(
        subset=["label"])
    fig = cr_figure(m, "cr", cr_groups=["SGD + CR"], period=4)
    rate = [ln for ln in fig.axes[1].lines if ln.get_label() == "SGD + CR: moving average (4)"][0]
    assert np.isnan(np.asarray(rate.get_ydata(), float)[:3]).all()  # full windows: none before update 3
    assert "full windows of 4" in _caption(fig)
    _texts_inside(fig)
    plt.close(fig)


def test_scaling_figure_has_labelled_slope_guides_through_the_first_point() -> None:
    rows = [{"sweep": "depth", "value": d, "method": m, "repeat": 0, "seconds": c * d ** p}
            for d in (2, 4, 8, 16) for m, c, p in (("inverse H", 0.01, 1.0), ("dense solve", 0.1, 3.0))]
    fig = scaling_figure(pd.DataFrame(rows), "t", anchor="inverse H")
    ax = fig.axes[0]
    guides = {ln.get_label(): ln for ln in ax.lines if ln.get_label().startswith("slope")}
    assert set(guides) == {"slope 1 (y ∝ x)", "slope 2 (y ∝ x^2)"}
    for k, ln in zip((1, 2), (guides["slope 1 (y ∝ x)"], guides["slope 2 (y ∝ x^2)"])):
        x, y = np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float)
        assert (x[0], y[0]) == pytest.approx((2, 0.02))  # the first point of inverse H
        assert np.log(y[-1] / y[0]) / np.log(x[-1] / x[0]) == pytest.approx(k)
    assert {t.get_text() for t in ax.texts} == {"slope 1", "slope 2"}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["dense solve", "inverse H", "slope 1 (y ∝ x)",
                                                                  "slope 2 (y ∝ x^2)"]
    assert "through the first point of inverse H" in _caption(fig)
    _texts_inside(fig)
    plt.close(fig)


def _grid_run(root: Path, name: str, lr: float, alpha: float, loss: float, acc: float, seed: int = 0) -> None:
    """A tiny completed run of EA-CG at (lr, alpha): two metric rows, the final values as given."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"experiment": "grid", "seed": seed, "curvature": {"kind": "pch1"},
                                                   "solver": {"name": "eacg", "lr": lr, "alpha": alpha},
                                                   "dataset": {"name": "tiny"}}))
    pd.DataFrame({"step": [0, 1], "epoch": [0, 1], "wall_time": [0.1, 0.2], "train_loss": [2.0, loss],
                  "test_acc": [0.1, acc]}).to_csv(d / "metrics.csv", index=False)
    (d / "summary.json").write_text(json.dumps({
        "status": "completed", "steps": 2, "epochs": 1, "wall_time": 0.2, "train_loss": loss, "test_acc": acc,
        "experiment": "grid", "dataset": "tiny", "loss": "cross_entropy", "curvature": "pch1", "solver": "eacg",
        "seed": seed}))


def test_small_grid_gives_best_point_table_and_annotated_heat_map(tmp_path: Path) -> None:
    lrs, alphas = (0.05, 0.1, 0.2), (0.01, 0.02, 0.05, 0.1)
    loss = {(lr, a): 1 + abs(lr - 0.1) + 3 * a for lr in lrs for a in alphas}  # best: lr 0.1, alpha 0.01
    for (lr, a), v in loss.items():
        _grid_run(tmp_path / "runs", f"p{lr}_{a}", lr, a, v, 0.5 - v / 10)
    write_run(tmp_path / "runs", "sgd", experiment="grid", curvature=None, solver="sgd", seed=0)
    files = {f.name for f in report([tmp_path / "runs"], tmp_path / "o")}
    assert {"grid_best.md", "grid_best.csv", "grid_heatmap.png", "grid_grid.csv", "index.md"} <= files
    best = pd.read_csv(tmp_path / "o" / "grid_best.csv", index_col=0)
    assert best.loc["EA-CG · PCH-1", "best point"] == "alpha=0.01 lr=0.1"
    assert best.loc["EA-CG · PCH-1", "train loss"] == pytest.approx(1.03)
    assert best.loc["EA-CG · PCH-1", "points searched"] == 12 and best.loc["EA-CG · PCH-1", "seeds"] == 1

    kept = group_runs(load_runs([tmp_path / "runs"]).runs).runs
    found = searches(kept)
    (s,) = found
    fig = heatmap_figure(s, "grid")
    loss_ax, acc_ax = fig.axes[0], fig.axes[1]
    assert (loss_ax.get_xlabel(), loss_ax.get_ylabel()) == ("lr", "alpha")  # rows: the field with more values
    assert [t.get_text() for t in loss_ax.get_xticklabels()] == ["0.05", "0.1", "0.2"]
    assert [t.get_text() for t in loss_ax.get_yticklabels()] == ["0.01", "0.02", "0.05", "0.1"]
    assert len(fig.axes) == 4  # two heat maps, two colour bars
    cells = [float(t.get_text()) for t in loss_ax.texts]
    assert len(cells) == 12 and min(cells) == pytest.approx(1.03)
    assert loss_ax.images[0].get_array()[0, 1] == pytest.approx(1.03)  # (alpha 0.01, lr 0.1)
    assert "best point (alpha=0.01 lr=0.1)" in _caption(fig)
    _texts_inside(fig)
    plt.close(fig)
    left_out = best_labels(found)  # 12 points > 6: the training figure draws the best one only
    assert len(left_out) == 11 and "EA-CG · PCH-1 · alpha=0.01 lr=0.1" not in left_out


def test_576_point_grid_reports_best_points_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 24 × 24 grid: the best-point table, one heat map without cell labels, a training figure of 1 curve.

    Figures are caught before they are written (``save``), which keeps the test fast; their files are
    tested on the 3 × 4 grid above.
    """
    rng = np.random.default_rng(0)
    lrs, alphas = np.round(np.geomspace(0.01, 1, 24), 5), np.round(np.geomspace(0.001, 0.5, 24), 5)
    loss = rng.random((24, 24)) + 1.0
    loss[7, 3] = 0.5
    for i, lr in enumerate(lrs):
        for j, a in enumerate(alphas):
            _grid_run(tmp_path / "runs", f"p{i}_{j}", float(lr), float(a), float(loss[i, j]), 0.3)
    drawn: dict[str, plt.Figure] = {}
    monkeypatch.setattr(render.F, "save", lambda fig, out, name: drawn.setdefault(name, fig) and [])
    files = render.render_experiment(load_runs([tmp_path / "runs"]), "grid", tmp_path / "o")
    best = pd.read_csv(tmp_path / "o" / "grid_best.csv", index_col=0)
    assert best.loc["EA-CG · PCH-1", "best point"] == f"alpha={alphas[3]:g} lr={lrs[7]:g}"
    assert best.loc["EA-CG · PCH-1", "points searched"] == 576 and best.loc["EA-CG · PCH-1", "swept"] == "alpha, lr"
    assert {"grid_best.md", "grid_grid.csv", "grid_final.md"} <= {f.name for f in files}
    assert set(drawn) == {"grid", "grid_heatmap"}
    heat = drawn["grid_heatmap"]
    assert heat.axes[0].images[0].get_array().shape == (24, 24) and not heat.axes[0].texts  # > 100 cells: no labels
    assert [t.get_text() for t in heat.axes[0].get_yticklabels()] == [f"{v:g}" for v in alphas]
    curves = drawn["grid"]
    legend = [t.get_text() for t in curves.legends[0].get_texts()]
    assert legend == [f"EA-CG · PCH-1 · alpha={alphas[3]:g} lr={lrs[7]:g} (best of 576)"]
    assert all(len(ax.lines) == 1 for ax in curves.axes)
    for fig in drawn.values():
        plt.close(fig)


def test_index_lists_every_file_by_experiment(fig1_3: Path, tmp_path: Path) -> None:
    files = report([fig1_3], tmp_path / "o", want={"tables"})
    index = (tmp_path / "o" / "index.md").read_text()
    assert files[-1] == tmp_path / "o" / "index.md"
    listed = re.findall(r"^- \[`([^`]+)`\]\([^)]+\): (.+)$", index, re.M)
    assert [n for n, _ in listed] == [f.name for f in files[:-1]]
    what = dict(listed)
    assert what["fig_final.csv"] == "the table fig_final.md as CSV"
    assert what["fig_final.md"].startswith("table: fig · tiny") and "final metrics" in what["fig_final.md"]


def test_index_keeps_the_entries_of_experiments_not_rendered_this_time(tmp_path):
    """Rendering one experiment into a full report's folder keeps the others listed (while their files exist)."""
    from curvlab.report.index import write_index

    for name in ("a_final.md", "b_final.md"):
        (tmp_path / name).write_text(f"**{name[0]} caption**\n\n| x |\n|---|\n| 1 |\n")
    write_index(tmp_path, [("exp_a", [tmp_path / "a_final.md"])])
    write_index(tmp_path, [("exp_b", [tmp_path / "b_final.md"])])
    text = (tmp_path / "index.md").read_text()
    assert "## exp_a" in text and "## exp_b" in text and "(2)" in text
    assert "a caption" in text and "b caption" in text
    (tmp_path / "a_final.md").unlink()
    write_index(tmp_path, [("exp_b", [tmp_path / "b_final.md"])])
    text = (tmp_path / "index.md").read_text()
    assert "## exp_a" not in text and "## exp_b" in text and "(1)" in text
