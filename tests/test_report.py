"""Tests of curvlab.report: loading run files, aggregation, tables, figures and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from curvlab.report import load_runs, main, report
from curvlab.report.figures import curve_stats, fit_loglog_slope, hessian_error_figure, mean_std, training_figure
from curvlab.report.grid import grid_axes, grid_tables
from curvlab.report.groups import group_runs, method_label
from curvlab.report.paper import EACG_TABLES
from curvlab.report.render import seed_phrase
from curvlab.report.tables import (
    cr_rate_table, error_totals, hessian_error_table, paper_match_table, relative_error_table, side_by_side, to_latex,
    to_markdown, write_table,
)
from report_fixtures import write_run

KINDS = ("fisher", "gn", "pch1", "pch2")


@pytest.fixture()
def table_runs(tmp_path: Path) -> Path:
    for seed in (0, 1, 2):
        write_run(tmp_path / "runs", f"t2_{seed}", experiment="eacg_table2", curvature="pch1", solver="eacg", seed=seed,
                  kinds=KINDS)
    return tmp_path / "runs"


@pytest.fixture()
def curve_runs(tmp_path: Path) -> Path:
    for seed in (0, 1):
        write_run(tmp_path / "runs", f"sgd_{seed}", experiment="fig", curvature=None, solver="sgd", seed=seed)
        write_run(tmp_path / "runs", f"eacg_{seed}", experiment="fig", curvature="pch1", solver="eacg", seed=seed)
        write_run(tmp_path / "runs", f"cr_{seed}", experiment="fig", curvature=None, solver="cr", seed=seed, cr=True)
        write_run(tmp_path / "runs", f"sgdm_{seed}", experiment="fig", curvature=None, solver="sgd", seed=seed,
                  cfg_extra={"solver": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})
    return tmp_path / "runs"


def test_load_runs_reads_every_file(table_runs: Path) -> None:
    r = load_runs([table_runs])
    assert len(r.runs) == 3 and set(r.runs["seed"]) == {0, 1, 2}
    assert len(r.errors) == 3 * 6 * 3 * 4 and len(r.metrics) == 3 * 6
    assert r.runs["cfg.solver.lr"].eq(0.1).all()
    assert r.experiments() == ["eacg_table2"]


def test_load_runs_rejects_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_runs([tmp_path / "nope"])


def test_hessian_error_table_matches_numpy(table_runs: Path) -> None:
    r = load_runs([table_runs])
    s = 4
    tab = hessian_error_table(r.errors, steps=s)
    assert list(tab.columns) == list(KINDS)
    assert list(tab.index) == ["Layer-1", "Layer-2", "Layer-3", "Total"]
    for kind in KINDS:
        per_layer = []
        for layer in (1, 2, 3):
            runs = []
            for _, g in r.errors.groupby("run_dir"):
                e = g[(g.kind == kind) & (g.layer == layer)].sort_values("step")["error"].to_numpy()[:s]
                runs.append(e.mean())
            per_layer.append(np.mean(runs))
            assert tab.loc[f"Layer-{layer}", kind] == pytest.approx(per_layer[-1], rel=1e-12)
        assert tab.loc["Total", kind] == pytest.approx(math.sqrt(sum(v * v for v in per_layer)), rel=1e-12)


def test_hessian_error_table_leaves_missing_kind_empty(table_runs: Path) -> None:
    r = load_runs([table_runs])
    tab = hessian_error_table(r.errors[r.errors.kind != "gn"])
    assert "gn" not in tab.columns
    both = side_by_side(tab, "table4")
    assert both["GN ours"].isna().all() and both["GN paper"].isna().all()
    assert both.loc["Total", "PCH-1 paper"] == pytest.approx(0.0349)


@pytest.mark.parametrize("table", sorted(EACG_TABLES))
def test_paper_totals_are_root_sum_of_squares(table: str) -> None:
    """Guards the transcription of Tables 2–5 and our reading of the paper's Total row."""
    for kind, col in EACG_TABLES[table]["values"].items():  # type: ignore[union-attr]
        if col[0] is None:
            continue
        assert math.sqrt(sum(v * v for v in col[:-1])) == pytest.approx(col[-1], abs=6e-4), (table, kind)


def test_markdown_and_latex_are_well_formed(table_runs: Path) -> None:
    tab = side_by_side(hessian_error_table(load_runs([table_runs]).errors), "table2")
    md = to_markdown(tab).strip().splitlines()
    assert len(md) == len(tab) + 2
    assert {line.count("|") for line in md} == {len(tab.columns) + 2}
    assert "-" in md[-1].split("|")[2] or md[-1].split("|")[2].strip()  # ours Total present
    tex = to_latex(tab, caption="x_y")
    assert tex.count(r"\\") == len(tab) + 1 and r"\begin{tabular}{l" in tex and r"x\_y" in tex


def test_mean_std_aligns_seeds_on_step(curve_runs: Path) -> None:
    r = load_runs([curve_runs])
    st = mean_std(r.metrics, "wall_time", "test_acc")
    sgd = r.metrics[(r.metrics.label == "SGD") & r.metrics.test_acc.notna()]
    ref = sgd.groupby("step").agg(x=("wall_time", "mean"), y=("test_acc", "mean"), s=("test_acc", "std"))
    got = st[st.group == "SGD"].set_index("step")
    assert list(got.index) == [0, 2, 4]  # only evaluated steps
    np.testing.assert_allclose(got["y"], ref["y"])
    np.testing.assert_allclose(got["y_std"], ref["s"])
    np.testing.assert_allclose(got["x"], ref["x"])


def test_report_writes_tables_and_figures(curve_runs: Path, table_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = report([curve_runs], out)
    names = {f.name for f in files}
    assert {"fig.png", "fig.pdf", "fig_cr.png", "fig_cr_rate.md", "fig_final.md", "fig_final.csv", "fig_final.tex"} <= names
    assert "eacg_table2_vs_paper.md" in names and "eacg_table2.tex" in names
    for f in files:
        assert f.stat().st_size > 0
    assert (out / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "fig.pdf").read_bytes()[:5] == b"%PDF-"
    final = pd.read_csv(out / "fig_final.csv", index_col=0)
    assert final["seeds"].eq(2).all() and len(final) == 4


def test_cr_rate_table_is_alpha_over_lr(curve_runs: Path) -> None:
    r = load_runs([curve_runs])
    g = group_runs(r.runs).runs
    m = r.metrics.assign(label=r.metrics["run_dir"].map(dict(zip(g["run_dir"], g["label"]))))
    tab = cr_rate_table(m, ["SGD + CR"], window=3, period=2)
    ref = [np.median((g.sort_values("step")["step_size"] / 0.1).to_numpy()[:3])
           for _, g in m[m.label == "SGD + CR"].groupby("run_dir")]
    assert tab.loc["SGD + CR", "alpha/lr, first updates"] == pytest.approx(np.median(ref))
    assert tab.loc["SGD + CR", "seeds"] == 2 and 1 <= tab.loc["SGD + CR", "max moving-average alpha/lr"] <= 2


def test_repeated_first_order_runs_count_once(tmp_path: Path) -> None:
    """`curvlab train -m solver=eacg,sgd curvature=fisher,pch1` trains SGD twice per seed."""
    for kind in ("fisher", "pch1"):
        write_run(tmp_path / "runs", f"sgd_{kind}", experiment="e", curvature=kind, solver="sgd", seed=0,
                  cfg_extra={"curvature": {"kind": kind}})
        write_run(tmp_path / "runs", f"eacg_{kind}", experiment="e", curvature=kind, solver="eacg", seed=0,
                  cfg_extra={"curvature": {"kind": kind}})
    report([tmp_path / "runs"], tmp_path / "o", want={"tables"})
    final = pd.read_csv(tmp_path / "o" / "e_final.csv").set_index("label")
    assert set(final.index) == {"SGD", "EA-CG · Fisher", "EA-CG · PCH-1"} and final.loc["SGD", "seeds"] == 1


def test_report_only_tables(table_runs: Path, tmp_path: Path) -> None:
    files = report([table_runs], tmp_path / "o", want={"tables"})
    assert files and all(f.suffix in {".md", ".csv", ".tex"} for f in files)


def test_main_exit_codes(table_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(table_runs), "--out", str(tmp_path / "o"), "--steps", "2", "--only", "tables"]) == 0
    assert main([str(table_runs), "--out", str(table_runs / "o")]) == 2  # never into an input folder
    with pytest.raises(SystemExit):
        main([str(table_runs), "--out", str(tmp_path / "o"), "--error-steps", "4:2"])
    assert "FIRST must not exceed LAST" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--out", str(tmp_path / "o2")]) == 1


def _study(root: Path, name: str, data: pd.DataFrame, **meta: object) -> None:
    root.mkdir(parents=True)
    data.to_csv(root / "data.csv", index=False)
    (root / "study.json").write_text(json.dumps({"study": name, "name": name, "data": "data.csv", **meta}))


def test_study_renderers_fit_the_slopes(tmp_path: Path) -> None:
    c = np.logspace(-3, 0, 7)
    app = pd.DataFrame([{"seed": 0, "block": b, "layer": 1, "c": v, "rel_error": 2 * v, "abs_error": v**3,
                         "h_norm": v**2} for b in ("bias", "weight") for v in c])
    _study(tmp_path / "runs" / "app", "appendix_chain_rule", app, fit_max=0.05, seeds=1)
    sc = pd.DataFrame([{"sweep": sw, "value": v, "method": m, "repeat": 0, "seconds": k * v**p}
                       for sw, p in (("depth", 1.0), ("width", 3.0)) for v in (2, 4, 8)
                       for m, k in (("HVP", 1e-3), ("inverse H", 1e-1))])
    _study(tmp_path / "runs" / "sc", "rahimi_scaling", sc)
    report([tmp_path / "runs"], tmp_path / "o")
    slopes = pd.read_csv(tmp_path / "o" / "appendix_chain_rule.csv", index_col=0)
    assert slopes["slope rel_error"].to_numpy() == pytest.approx([1, 1])
    assert slopes["slope abs_error"].to_numpy() == pytest.approx([3, 3])
    sc_slopes = pd.read_csv(tmp_path / "o" / "rahimi_scaling_slopes.csv", index_col=0)
    assert sc_slopes.loc["slope vs depth", "inverse H"] == pytest.approx(1.0)
    assert sc_slopes.loc["slope vs width", "HVP"] == pytest.approx(3.0)
    assert (tmp_path / "o" / "rahimi_scaling.png").stat().st_size > 0
    assert not (tmp_path / "o" / "rahimi_scaling_memory.csv").exists()  # older studies: no memory column


def test_rahimi_memory_is_rendered_with_its_slopes(tmp_path: Path) -> None:
    sc = pd.DataFrame([{"sweep": sw, "value": v, "method": m, "repeat": 0, "seconds": 1e-3 * v,
                        "peak_mb": k * v**p} for sw, p in (("depth", 1.0), ("width", 2.0)) for v in (2, 4, 8)
                       for m, k in (("HVP", 0.5), ("inverse H", 2.0))])
    _study(tmp_path / "runs" / "sc", "rahimi_scaling", sc)
    report([tmp_path / "runs"], tmp_path / "o")
    slopes = pd.read_csv(tmp_path / "o" / "rahimi_scaling_memory_slopes.csv", index_col=0)
    assert slopes.loc["slope vs depth", "inverse H"] == pytest.approx(1.0)
    assert slopes.loc["slope vs width", "HVP"] == pytest.approx(2.0)
    assert (tmp_path / "o" / "rahimi_scaling_memory.png").stat().st_size > 0


def test_fit_loglog_slope_recovers_power() -> None:
    c = np.logspace(-3, 0, 10)
    assert fit_loglog_slope(c, 5 * c**3) == pytest.approx(3.0)
    assert math.isnan(fit_loglog_slope(c[:1], c[:1]))


# --- grouping and labels (issue 11, item 12) ----------------------------------------------


@pytest.mark.parametrize("row, label", [
    ({"cfg.solver.name": "exact_inverse", "cfg.solver.curvature": "exact"}, "Newton (H)"),
    ({"cfg.solver.name": "exact_inverse", "cfg.solver.curvature": "gn"}, "Newton (GN)"),
    ({"cfg.solver.name": "eacg", "cfg.curvature.kind": "pch1", "cfg.solver.split": 1}, "EA-CG · PCH-1"),
    ({"cfg.solver.name": "eacg", "cfg.curvature.kind": "pch1", "cfg.solver.split": 4}, "EA-CG · PCH-1 · split 4"),
    ({"cfg.solver.name": "kfi", "cfg.curvature.kind": "fisher"}, "KFI · Fisher (KFAC)"),
    ({"cfg.solver.name": "kfi", "cfg.curvature.kind": "gn"}, "KFI · GN (KFRA)"),
    ({"cfg.solver.name": "kfi", "cfg.curvature.kind": "fisher", "cfg.solver.rank_one_first_layer": True},
     "KFI · Fisher (KFAC) · Eq. 13"),
    ({"cfg.solver.name": "sgd", "cfg.solver.momentum": 0.9, "cfg.curvature.kind": "pch1"}, "SGD (momentum 0.9)"),
    ({"cfg.solver.name": "sgd", "cfg.solver.momentum": 0.0}, "SGD"),
    ({"cfg.solver.name": "cr", "cfg.solver.base": "adagrad"}, "Adagrad + CR"),
    ({"cfg.solver.name": "cr", "cfg.solver.base": "eacg", "cfg.curvature.kind": "pch2"}, "EA-CG · PCH-2 + CR"),
])
def test_method_labels(row: dict, label: str) -> None:
    assert method_label(row) == label


def test_two_nets_are_not_pooled(tmp_path: Path) -> None:
    """Issue 11: the layer-wise errors of a 2-layer and a 3-layer net were averaged in one table."""
    for seed in (0, 1):
        for layers, widths in ((2, [4, 3, 2]), (3, [4, 3, 3, 2])):
            write_run(tmp_path / "runs", f"n{layers}_{seed}", experiment="demo", curvature="pch1", solver="eacg",
                      seed=seed,
                      kinds=KINDS, layers=layers, cfg_extra={"net": {"widths": widths, "activation": "sigmoid"}})
    g = group_runs(load_runs([tmp_path / "runs"]).runs)
    assert g.runs.groupby("setting").size().to_dict() == {"tiny · net 4-3-2 sigmoid · cross-entropy": 2,
                                                           "tiny · net 4-3-3-2 sigmoid · cross-entropy": 2}
    assert g.dropped.empty
    files = {f.name for f in report([tmp_path / "runs"], tmp_path / "o", want={"tables"})}
    two = pd.read_csv(tmp_path / "o" / "demo__tiny_net_4-3-2_sigmoid_cross-entropy.csv", index_col=0)
    three = pd.read_csv(tmp_path / "o" / "demo__tiny_net_4-3-3-2_sigmoid_cross-entropy.csv", index_col=0)
    assert list(two.index) == ["Layer-1", "Layer-2", "Total"] and list(three.index)[-2:] == ["Layer-3", "Total"]
    assert "demo.csv" not in files


def test_same_seed_is_kept_once_the_longer(tmp_path: Path) -> None:
    """Issue 11: a 30-step and a 60-step run of one seed were counted as two seeds."""
    short = write_run(tmp_path / "runs", "short", experiment="e", curvature="pch1", solver="eacg", seed=0, steps=4)
    long = write_run(tmp_path / "runs", "long", experiment="e", curvature="pch1", solver="eacg", seed=0, steps=8)
    write_run(tmp_path / "runs", "other", experiment="e", curvature="pch1", solver="eacg", seed=1, steps=4)
    g = group_runs(load_runs([tmp_path / "runs"]).runs)
    assert g.runs["group"].nunique() == 1 and sorted(g.runs["seed"]) == [0, 1]
    assert set(g.runs["run_dir"]) == {str(long.resolve()), str((tmp_path / "runs" / "other").resolve())}
    assert list(g.dropped["run_dir"]) == [str(short.resolve())] and list(g.dropped["kept"]) == [str(long.resolve())]
    report([tmp_path / "runs"], tmp_path / "o", want={"tables"})
    assert pd.read_csv(tmp_path / "o" / "e_final.csv", index_col=0)["seeds"].tolist() == [2]
    runs = pd.read_csv(tmp_path / "o" / "e_runs.csv", index_col=0)
    assert runs.loc["runs/short", "used"].startswith("no: the longer run runs/long")


def test_labels_say_what_differs(tmp_path: Path) -> None:
    for lr in (0.05, 0.1):
        write_run(tmp_path / "runs", f"eacg_{lr}", experiment="e", curvature="pch1", solver="eacg", seed=0,
                  cfg_extra={"solver": {"name": "eacg", "lr": lr, "alpha": 0.02}})
    write_run(tmp_path / "runs", "kfi", experiment="e", curvature="fisher", solver="kfi", seed=0,
              cfg_extra={"solver": {"name": "kfi", "lr": 0.3, "alpha": 0.02}})
    # Bookkeeping (paths, length, logging and its sinks, device, threads, denormal flushing — absent
    # from runs before that option) and what a solver ignores do not make a new curve.
    for seed, kind in ((0, "gn"), (1, "pch1")):
        train_cfg = {"max_steps": 5 + seed, **({"flush_denormal": True, "threads": 1} if seed else {})}
        logger = {"logger": {"kinds": ["csv"], "mlflow_uri": "sqlite:///m.db"}} if seed else {}
        write_run(tmp_path / "runs", f"sgd_{seed}", experiment="e", curvature=kind, solver="sgd", seed=seed,
                  cfg_extra={"curvature": {"kind": kind}, "run_dir": f"/x/{seed}", "device": "cpu",
                             "log": {"hessian_every": seed}, "train": train_cfg, **logger})
    labels = group_runs(load_runs([tmp_path / "runs"]).runs).runs.groupby("label")["seed"].apply(sorted).to_dict()
    assert labels == {"EA-CG · PCH-1 · lr=0.05": [0], "EA-CG · PCH-1 · lr=0.1": [0], "KFI · Fisher (KFAC)": [0],
                      "SGD": [0, 1]}


def test_grid_search_renders_as_grid(tmp_path: Path) -> None:
    """A method swept over two fields gets its grid: rows × columns of final metrics, mean over seeds."""
    expect: dict[tuple[float, float], list[tuple[float, float]]] = {}
    for lr in (0.05, 0.1, 0.2):
        for alpha in (0.01, 0.02):
            if (lr, alpha) == (0.2, 0.02):
                continue  # a point that never ran is shown as "-"
            for seed in (0, 1):
                d = write_run(tmp_path / "runs", f"p{lr}_{alpha}_{seed}", experiment="g", curvature="pch1",
                              solver="eacg", seed=seed, cfg_extra={"solver": {"name": "eacg", "lr": lr, "alpha": alpha}})
                summary = json.loads((d / "summary.json").read_text())
                loss, acc = 10 * lr + alpha + 0.5 * seed, 0.3 + alpha + 0.1 * seed
                (d / "summary.json").write_text(json.dumps({**summary, "train_loss": loss, "test_acc": acc}))
                expect.setdefault((lr, alpha), []).append((loss, 100 * acc))
    write_run(tmp_path / "runs", "sgd", experiment="g", curvature=None, solver="sgd", seed=0)  # no grid of its own
    files = {f.name for f in report([tmp_path / "runs"], tmp_path / "o", want={"tables"})}
    assert "g_grid.csv" in files and "g_grid.md" in files
    tab = pd.read_csv(tmp_path / "o" / "g_grid.csv", index_col=0)
    assert list(tab.index) == ["lr=0.05", "lr=0.1", "lr=0.2"] and list(tab.columns) == ["alpha=0.01", "alpha=0.02"]
    assert tab.loc["lr=0.2", "alpha=0.02"] == "-"
    for (lr, alpha), vals in expect.items():
        loss, acc = (float(x) for x in tab.loc[f"lr={lr:g}", f"alpha={alpha:g}"].split(" / "))
        assert loss == pytest.approx(np.mean([v[0] for v in vals]), rel=1e-3)
        assert acc == pytest.approx(np.mean([v[1] for v in vals]), abs=0.05)


def test_one_swept_field_gives_no_grid(tmp_path: Path) -> None:
    for lr in (0.05, 0.1):
        write_run(tmp_path / "runs", f"e{lr}", experiment="g", curvature="pch1", solver="eacg", seed=0,
                  cfg_extra={"solver": {"name": "eacg", "lr": lr, "alpha": 0.02}})
    kept = group_runs(load_runs([tmp_path / "runs"]).runs).runs
    assert grid_axes(kept) == ["cfg.solver.lr"] and grid_tables(kept) == {}


@pytest.mark.parametrize("counts, phrase", [([1], "1 run"), ([3], "3 seeds"), ([1, 1], "1 seed per curve"),
                                            ([3, 3], "3 seeds per curve"), ([1, 3], "1–3 seeds per curve")])
def test_seed_phrase(counts: list[int], phrase: str) -> None:
    assert seed_phrase(pd.Series(counts)) == phrase


# --- figures (item 14) ----------------------------------------------------------------------


def _overlaps(fig: plt.Figure, artist: object) -> bool:
    fig.canvas.draw()
    box = artist.get_window_extent(fig.canvas.get_renderer())  # type: ignore[attr-defined]
    return any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)


def _metrics(losses: dict[int, list[float]], label: str = "A") -> pd.DataFrame:
    """Two evaluated steps per seed: step 0 and 10, train_loss as given, test_acc as a fraction."""
    rows = [{"label": label, "run_dir": f"r{seed}", "step": step, "epoch": step / 10, "wall_time": 90.0 * step,
             "train_loss": v, "test_acc": 0.5 + 0.01 * seed} for seed, vals in losses.items()
            for step, v in zip((0, 10), vals)]
    return pd.DataFrame(rows)


def test_log_spread_is_geometric_and_positive() -> None:
    """A ±std band of 0.01 and 1.0 dives below zero; the log-space band is exp(mean ± std of log)."""
    m = _metrics({0: [2.0, 0.01], 1: [2.2, 1.0]})
    st = curve_stats(m, "step", "train_loss", log=True).set_index("step")
    logs = np.log([0.01, 1.0])
    assert st.loc[10, "y"] == pytest.approx(math.exp(logs.mean()))
    assert st.loc[10, "lo"] == pytest.approx(math.exp(logs.mean() - logs.std(ddof=1)))
    assert st.loc[10, "hi"] == pytest.approx(math.exp(logs.mean() + logs.std(ddof=1)))
    assert mean_std(m, "step", "train_loss").set_index("step").eval("y - y_std").loc[10] < 0  # what linear would draw
    fig = training_figure(m, "t")
    loss_ax = fig.axes[0]
    assert loss_ax.get_yscale() == "log"
    band = np.concatenate([p.vertices for c in loss_ax.collections for p in c.get_paths()])
    assert band[:, 1].min() == pytest.approx(st["lo"].min()) and band[:, 1].min() > 0
    plt.close(fig)


def test_training_figure_units_legend_and_note() -> None:
    m = pd.concat([_metrics({0: [2.0, 1.0], 1: [2.1, 0.9]}, "A"), _metrics({0: [2.0, 1.5]}, "B")])
    fig = training_figure(m, "t", wall_note="shared machine", legend_labels={"B": "B (1 run)"})
    time_ax, acc_ax = fig.axes[0], fig.axes[1]
    assert time_ax.get_xlabel() == "solver wall-clock time (min)"  # 900 s → minutes
    assert max(line.get_xdata().max() for line in time_ax.lines) == pytest.approx(15.0)
    assert acc_ax.get_ylabel() == "test accuracy (%)"
    assert max(line.get_ydata().max() for line in acc_ax.lines) == pytest.approx(50.5)  # mean of 0.5, 0.51 in %
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["A", "B (1 run)"]
    assert not _overlaps(fig, fig.legends[0])
    assert "shared machine" in fig._supxlabel.get_text()  # the wall-clock footnote
    plt.close(fig)


def test_hessian_error_figure_and_tables_match_numpy(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_run(tmp_path / "runs", f"r{seed}", experiment="e", curvature="pch1", solver="eacg", seed=seed,
                  kinds=KINDS,
                  reference=True)
    errors = load_runs([tmp_path / "runs"]).errors
    tot = error_totals(errors)
    one = errors[(errors.run_dir == errors.run_dir.iloc[0]) & (errors.batch == 20) & (errors.kind == "gn")
                 & (errors.step == 3)]
    got = tot[(tot.run_dir == one.run_dir.iloc[0]) & (tot.batch == 20) & (tot.column == "gn") & (tot.step == 3)]
    assert got["total"].item() == pytest.approx(math.sqrt((one.error**2).sum()))
    assert got["relative"].item() == pytest.approx(math.sqrt((one.error**2).sum() / (one.reference**2).sum()))
    rel = relative_error_table(errors[errors.batch == 10])
    part = errors[(errors.batch == 10) & (errors.kind == "pch2") & (errors.layer == 2)]
    per_run = (part.error / part.reference).groupby(part.run_dir).mean()
    assert rel.loc["Layer-2", "pch2"] == pytest.approx(100 * per_run.mean())
    fig = hessian_error_figure(errors, "t")
    assert len(fig.axes) == 4  # batches 10, 20 × (Total, relative)
    assert all(ax.get_yscale() == "log" for ax in fig.axes) and not _overlaps(fig, fig.legends[0])
    plt.close(fig)
    files = {f.name for f in report([tmp_path / "runs"], tmp_path / "o", want={"tables"})}
    assert {"e_b10.md", "e_b20_relative.csv"} <= files
    assert not any("vs_paper" in f for f in files)  # neither named after a paper table nor on its data



def test_fisher_mc_variants_get_their_own_columns(table_runs: Path) -> None:
    errors = load_runs([table_runs]).errors
    fisher = errors[errors.kind == "fisher"]
    both = pd.concat([errors.assign(mc_samples=np.where(errors.kind == "fisher", 1, np.nan)),
                      fisher.assign(mc_samples=8, error=fisher.error * 2)])
    tab = hessian_error_table(both)
    assert list(tab.columns) == ["fisher (MC 1)", "fisher (MC 8)", "gn", "pch1", "pch2"]
    assert tab["fisher (MC 8)"].to_numpy() == pytest.approx(2 * tab["fisher (MC 1)"].to_numpy())
    paper = side_by_side(tab, "table2")
    ratio = paper.loc["Layer-3", "Fisher (MC 8) ours/paper"]
    assert ratio == pytest.approx(tab.loc["Layer-3", "fisher (MC 8)"] / 0.1140)


def test_side_by_side_ratio_is_ours_over_paper(table_runs: Path) -> None:
    tab = hessian_error_table(load_runs([table_runs]).errors)
    both = side_by_side(tab, "table2")
    assert both.loc["Total", "GN ours/paper"] == pytest.approx(tab.loc["Total", "gn"] / 0.0446)
    assert math.isnan(both.loc["Layer-8", "PCH-1 ours/paper"])  # the paper's 0.0000, and no layer 8 of ours


# --- the report as a whole ------------------------------------------------------------------


def test_report_never_writes_into_its_inputs(table_runs: Path) -> None:
    with pytest.raises(ValueError, match="inside the input folder"):
        report([table_runs], table_runs / "report")
    with pytest.raises(ValueError, match="inside the input folder"):
        report([table_runs], table_runs)


def test_report_is_deterministic(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_run(tmp_path / "runs", f"sgd_{seed}", experiment="fig", curvature=None, solver="sgd", seed=seed)
    a = report([tmp_path / "runs"], tmp_path / "a")
    b = report([tmp_path / "runs"], tmp_path / "b")
    assert {f.suffix for f in a} == {".png", ".pdf", ".md", ".csv", ".tex"}
    assert [f.name for f in a] == [f.name for f in b]
    for fa, fb in zip(a, b):
        assert fa.read_bytes() == fb.read_bytes(), fa.name


SAMPLE = Path(__file__).parent / "fixtures" / "report_sample"
SMALL, TINY = "sample__digits_net_64-32-16-10_sigmoid_cross-entropy", "sample__digits_net_64-8-10_sigmoid_cross-entropy"


def test_report_renders_the_committed_sample(tmp_path: Path) -> None:
    """Real runs (tests/fixtures/make_report_sample.py): each file appears and its numbers follow from the CSVs."""
    out = tmp_path / "out"
    assert main([str(SAMPLE), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    for stem in (SMALL, TINY):
        assert {f"{stem}.png", f"{stem}.pdf", f"{stem}_final.md", f"{stem}_runs.tex"} <= names
    for batch in (32, 128):
        assert {f"{TINY}_b{batch}.md", f"{TINY}_b{batch}_relative.csv"} <= names
    assert f"{TINY}_hessian_errors.png" in names and not any(n.startswith(f"{SMALL}_b") for n in names)

    final = pd.read_csv(out / f"{TINY}_final.csv", index_col=0)
    assert final["seeds"].to_dict() == {"EA-CG · PCH-1": 2, "KFI · Fisher (KFAC)": 2, "Newton (GN)": 1,
                                        "SGD (momentum 0.9)": 2}
    runs = pd.read_csv(out / f"{TINY}_runs.csv", index_col=0)
    assert runs.loc["report_sample/sample/sgd_s0_short", "used"].startswith("no: the longer run")
    raw = pd.read_csv(SAMPLE / "sample" / "eacg_pch1_s1" / "metrics.csv")
    assert runs.loc["report_sample/sample/eacg_pch1_s1", "CG iters (max)"] == pytest.approx(raw["cg_iters"].mean())

    tab = pd.read_csv(out / f"{TINY}_b128.csv", index_col=0)
    assert list(tab.columns) == ["fisher (MC 1)", "fisher (MC 4)", "gn", "pch1", "pch2"]
    errs = pd.concat(pd.read_csv(SAMPLE / "sample" / f"eacg_pch1_s{s}" / "hessian_errors.csv").assign(seed=s)
                     for s in (0, 1))
    gn = errs[(errs.kind == "gn") & (errs.batch == 128)].groupby(["layer", "seed"])["error"].mean()
    gn = gn.groupby("layer").mean()  # mean over the logged updates, then over the seeds
    assert tab.loc["Total", "gn"] == pytest.approx(math.sqrt((gn**2).sum()), rel=1e-6)


def test_error_window_averages_only_those_updates(table_runs: Path) -> None:
    errors = load_runs([table_runs]).errors
    tab = hessian_error_table(errors, window=(3, 4))
    part = errors[errors.step.between(3, 4) & (errors.kind == "gn") & (errors.layer == 1)]
    assert tab.loc["Layer-1", "gn"] == pytest.approx(part.groupby("run_dir")["error"].mean().mean())
    assert hessian_error_table(errors, steps=1, window=(3, 4)).equals(hessian_error_table(errors, window=(3, 3)))
    with pytest.raises(ValueError, match="no hessian_errors.csv rows in the step window"):
        hessian_error_table(errors, window=(50, 60))


@pytest.mark.parametrize("overrides, name", [
    (["net=tiny", "seed=3", "dataset.root=../x", "log.progress=false", "device=cpu"], "net=tiny,seed=3"),
    ([], None),
])
def test_adhoc_runs_are_named_by_their_overrides(overrides: list[str], name: str | None) -> None:
    """Issue 11: every ad-hoc run was `runs/demo/<time>`; paths and bookkeeping stay out of the name."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    import curvlab.config  # noqa: F401  (registers the if_null resolver)

    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        parts = Path(cfg.hydra.run.dir).parts
    finally:
        HydraConfig.instance().cfg = None
    assert parts[:2] == ("runs", "demo") and len(parts) == (4 if name else 3)
    if name:
        assert parts[2] == name


def test_a_study_without_renderer_is_one_table(tmp_path: Path) -> None:
    data = pd.DataFrame({"method": ["cr", "sgd"], "value": [100.0, 0.1], "final_train_loss": [0.5, 0.7]})
    _study(tmp_path / "runs" / "new", "new_study", data, paper="Bakker et al. Section 4")
    report([tmp_path / "runs"], tmp_path / "o")
    assert pd.read_csv(tmp_path / "o" / "new_study.csv", index_col=0)["final_train_loss"].to_dict() == {
        "cr": 0.5, "sgd": 0.7}
    assert "Bakker et al. Section 4" in (tmp_path / "o" / "new_study.md").read_text()
    _study(tmp_path / "big" / "s", "big_study", pd.DataFrame({"i": range(501)}))
    assert [f.name for f in report([tmp_path / "big"], tmp_path / "o2")] == ["big_study.csv", "index.md"]  # too long
    assert "CSV only" in (tmp_path / "o2" / "index.md").read_text()
    assert len(pd.read_csv(tmp_path / "o2" / "big_study.csv")) == 501


def test_runs_without_config_are_told_apart_by_their_summary(tmp_path: Path) -> None:
    for solver, kind in (("eacg", "pch1"), ("kfi", "gn"), ("sgd", None)):
        d = write_run(tmp_path / "runs", solver, experiment="e", curvature=kind, solver=solver, seed=0)
        (d / "config.yaml").unlink()
    labels = sorted(group_runs(load_runs([tmp_path / "runs"]).runs).runs["label"])
    assert labels == ["EA-CG · PCH-1", "KFI · GN (KFRA)", "SGD"]


def test_paper_match_scores_each_logged_update(table_runs: Path, tmp_path: Path) -> None:
    errors = load_runs([table_runs]).errors
    match = paper_match_table(errors, "table2")
    assert list(match.index) == sorted(errors.step.unique())
    at = errors[errors.step == 2].groupby(["kind", "layer"])["error"].mean()  # mean over the 3 runs
    paper = EACG_TABLES["table2"]["values"]
    logs = [abs(math.log10(at[(k, l)] / paper[k][l - 1])) for k in KINDS for l in (1, 2, 3)]  # type: ignore[index]
    assert match.loc[2, "score"] == pytest.approx(np.mean(logs)) and match.loc[2, "pairs"] == 12
    total_gn = math.sqrt(sum(at[("gn", l)] ** 2 for l in (1, 2, 3)))
    assert match.loc[2, "GN Total ours/paper"] == pytest.approx(total_gn / 0.0446)
    report([table_runs], tmp_path / "o", want={"tables"})
    best = int(match["score"].idxmin())
    assert f"Closest: step {best} " in (tmp_path / "o" / "eacg_table2_vs_paper_by_step.md").read_text()


def test_write_table_flattens_a_multilevel_index(tmp_path: Path) -> None:
    df = pd.DataFrame({"score": [0.5, 0.25]}, index=pd.MultiIndex.from_tuples([(10, 0), (20, 4)], names=["batch", "step"]))
    write_table(df, tmp_path, "t")
    assert pd.read_csv(tmp_path / "t.csv").to_dict("list") == {"batch": [10, 20], "step": [0, 4], "score": [0.5, 0.25]}
    assert "| batch 20, step 4 | 0.2500 |" in (tmp_path / "t.md").read_text()



def test_setting_label_of_a_layer_list_net() -> None:
    from curvlab.report.groups import _setting_label

    key = (("cfg.dataset.name", "digits"), ("cfg.net.widths", "[64, 32, 16, 10]"), ("cfg.net.activation", "sigmoid"),
           ("cfg.net.layers", "[32, 'gelu', 16, 'sigmoid', 10]"), ("cfg.loss.name", "cross_entropy"))
    assert _setting_label(key, set()) == "digits · net 64-[32 gelu 16 sigmoid 10] · cross-entropy"
    plain = tuple(kv for kv in key if kv[0] != "cfg.net.layers")
    assert _setting_label(plain, set()) == "digits · net 64-32-16-10 sigmoid · cross-entropy"
