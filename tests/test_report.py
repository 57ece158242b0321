"""Tests of curvlab.report: loading run files, aggregation, tables, figures and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curvlab.report import load_runs, main, report
from curvlab.report.figures import fit_loglog_slope, mean_std
from curvlab.report.load import run_label
from curvlab.report.paper import EACG_TABLES
from curvlab.report.render import variant_labels
from curvlab.report.tables import cr_rate_table, hessian_error_table, side_by_side, to_latex, to_markdown
from report_fixtures import write_run

KINDS = ("fisher", "gn", "pch1", "pch2")


@pytest.fixture()
def table_runs(tmp_path: Path) -> Path:
    for seed in (0, 1, 2):
        write_run(tmp_path, f"t2_{seed}", experiment="eacg_table2", curvature="pch1", solver="eacg", seed=seed,
                  kinds=KINDS)
    return tmp_path


@pytest.fixture()
def curve_runs(tmp_path: Path) -> Path:
    for seed in (0, 1):
        write_run(tmp_path, f"sgd_{seed}", experiment="fig", curvature=None, solver="sgd", seed=seed)
        write_run(tmp_path, f"eacg_{seed}", experiment="fig", curvature="pch1", solver="eacg", seed=seed)
        write_run(tmp_path, f"cr_{seed}", experiment="fig", curvature=None, solver="cr", seed=seed, cr=True)
        write_run(tmp_path, f"sgdm_{seed}", experiment="fig", curvature=None, solver="sgd", seed=seed,
                  cfg_extra={"solver": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})
    return tmp_path


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
    sgd = r.metrics[(r.metrics.label == "sgd") & r.metrics.test_acc.notna()]
    ref = sgd.groupby("step").agg(x=("wall_time", "mean"), y=("test_acc", "mean"), s=("test_acc", "std"))
    got = st[st.group == "sgd"].set_index("step")
    assert list(got.index) == [0, 2, 4]  # only evaluated steps
    np.testing.assert_allclose(got["y"], ref["y"])
    np.testing.assert_allclose(got["y_std"], ref["s"])
    np.testing.assert_allclose(got["x"], ref["x"])


def test_labels_separate_variants(curve_runs: Path) -> None:
    r = load_runs([curve_runs])
    assert run_label({"solver": "sgd", "curvature": "pch1"}) == "sgd"
    assert run_label({"solver": "kfi", "curvature": "fisher"}) == "fisher/kfi"
    assert run_label({"solver": "cr", "cfg.solver.base": "adagrad"}) == "adagrad+cr"
    assert run_label({"solver": "exact_inverse", "cfg.solver.curvature": "gn"}) == "exact_inverse(gn)"
    # Runs that share a label but differ in a config value get it appended; seeds do not count.
    assert set(variant_labels(r.runs)) == {"sgd", "sgd momentum=0.9", "pch1/eacg", "sgd+cr"}


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
    m = r.metrics.assign(label=r.metrics["run_dir"].map(dict(zip(r.runs["run_dir"], variant_labels(r.runs)))))
    tab = cr_rate_table(m, ["sgd+cr"], window=3, period=2)
    ref = [np.median((g.sort_values("step")["step_size"] / 0.1).to_numpy()[:3]) for _, g in m[m.label == "sgd+cr"].groupby("run_dir")]
    assert tab.loc["sgd+cr", "alpha/lr, first updates"] == pytest.approx(np.median(ref))
    assert tab.loc["sgd+cr", "seeds"] == 2 and 1 <= tab.loc["sgd+cr", "max moving-average alpha/lr"] <= 2


def test_repeated_first_order_runs_count_once(tmp_path: Path) -> None:
    """`curvlab train -m solver=eacg,sgd curvature=fisher,pch1` trains SGD twice per seed."""
    for kind in ("fisher", "pch1"):
        write_run(tmp_path, f"sgd_{kind}", experiment="e", curvature=kind, solver="sgd", seed=0,
                  cfg_extra={"curvature": {"kind": kind}})
        write_run(tmp_path, f"eacg_{kind}", experiment="e", curvature=kind, solver="eacg", seed=0,
                  cfg_extra={"curvature": {"kind": kind}})
    report([tmp_path], tmp_path / "o")
    final = pd.read_csv(tmp_path / "o" / "e_final.csv").set_index("label")
    assert set(final.index) == {"sgd", "fisher/eacg", "pch1/eacg"} and final.loc["sgd", "seeds"] == 1


def test_report_only_tables(table_runs: Path, tmp_path: Path) -> None:
    files = report([table_runs], tmp_path / "o", want={"tables"})
    assert files and all(f.suffix in {".md", ".csv", ".tex"} for f in files)


def test_main_exit_codes(table_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(table_runs), "--out", str(tmp_path / "o"), "--steps", "2"]) == 0
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


def test_fit_loglog_slope_recovers_power() -> None:
    c = np.logspace(-3, 0, 10)
    assert fit_loglog_slope(c, 5 * c**3) == pytest.approx(3.0)
    assert math.isnan(fit_loglog_slope(c[:1], c[:1]))
