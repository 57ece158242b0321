"""Quiet-machine time (curvlab.report.timing): Σ of the quiet study's per-update costs, and its fall-back."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from curvlab.report import load_runs, report
from curvlab.report.figures import training_figure
from curvlab.report.timing import find_step_costs, method_key, run_method_key, time_axis, with_quiet_time
from report_fixtures import write_run

ROOT = Path(__file__).resolve().parents[1]
WIDTHS, BATCH = [4, 3, 2], 8
SETTING = {"net": {"widths": WIDTHS}, "train": {"batch_size": BATCH}}
SGD, EACG = 0.5, (0.25, 0.125)  # seconds per update; EA-CG: c0 + c1 · cg_iters (binary fractions: exact sums)
CG = [np.nan, 2, 3, 1, 4, 2]  # cg_iters of steps 0 (evaluation only) … 5


def _study(path: Path, widths: list[int] = WIDTHS) -> Path:
    path.mkdir(parents=True)
    (path / "study.json").write_text(json.dumps({"study": "table1_measured", "name": "table1_measured",
                                                 "widths": widths, "batch": BATCH, "device": "cpu",
                                                 "machine": "Test box (x86_64, 2 cores)", "threads": 2}))
    pd.DataFrame([
        {"method": "sgd", "step_seconds": SGD, "cg_iters": None, "step_seconds_base": SGD, "seconds_per_cg_iter": 0.0},
        {"method": "pch1/eacg", "step_seconds": 0.6, "cg_iters": 3, "step_seconds_base": EACG[0],
         "seconds_per_cg_iter": EACG[1]},
    ]).to_csv(path / "data.csv", index=False)
    return path


@pytest.fixture()
def runs_dir(tmp_path: Path) -> Path:
    """results/runs layout: runs/fig/<run> (SGD, EA-CG with cg_iters, KFI without a quiet cost), runs/studies/."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run(root / "fig", f"sgd_{seed}", experiment="fig", curvature=None, solver="sgd", seed=seed,
                  cfg_extra={**SETTING, "solver": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})
        d = write_run(root / "fig", f"eacg_{seed}", experiment="fig", curvature="pch1", solver="eacg", seed=seed,
                      cfg_extra=SETTING)
        pd.read_csv(d / "metrics.csv").assign(cg_iters=CG).to_csv(d / "metrics.csv", index=False)
        write_run(root / "fig", f"kfi_{seed}", experiment="fig", curvature="pch1", solver="kfi", seed=seed,
                  cfg_extra=SETTING)
    _study(root / "studies" / "table1_measured")
    return root


def _quiet(r, label: str) -> pd.Series:
    m = r.metrics[r.metrics["label"] == label]
    return m[m["seed"] == 0].sort_values("step")["quiet_time"].reset_index(drop=True)


def test_quiet_time_is_the_sum_of_per_update_costs(runs_dir: Path) -> None:
    costs = find_step_costs([runs_dir / "fig"])  # found in studies/ next to the experiment folder
    assert costs is not None and costs.machine == "Test box (x86_64, 2 cores), cpu, 2 thread(s)"
    r = with_quiet_time(load_runs([runs_dir / "fig"]), costs)
    assert _quiet(r, "SGD (momentum 0.9)").tolist() == [SGD * k for k in range(6)]
    eacg = [0.0, *np.cumsum([EACG[0] + EACG[1] * i for i in CG[1:]])]  # c0 + c1 · cg_iters of each update
    assert _quiet(r, "EA-CG · PCH-1").tolist() == eacg == [0.0, 0.5, 1.125, 1.5, 2.25, 2.75]
    assert _quiet(r, "KFI · PCH-1").isna().all()  # the study has no KFI cost
    final = r.runs.set_index("label")["quiet_time"]
    assert final["EA-CG · PCH-1"].tolist() == [2.75, 2.75] and final["SGD (momentum 0.9)"].tolist() == [2.5, 2.5]


def test_logged_rows_count_every_update_since_the_previous_row(runs_dir: Path) -> None:
    d = runs_dir / "fig" / "eacg_0"
    pd.read_csv(d / "metrics.csv").iloc[[0, 2, 5]].to_csv(d / "metrics.csv", index=False)  # steps 0, 2, 5
    r = with_quiet_time(load_runs([d]), find_step_costs([runs_dir]))
    assert _quiet(r, "EA-CG · PCH-1").tolist() == [0.0, 2 * (0.25 + 0.125 * 3), 1.25 + 3 * (0.25 + 0.125 * 2)]


def test_a_method_without_cost_keeps_measured_time_and_the_footnote_says_so(runs_dir: Path) -> None:
    costs = find_step_costs([runs_dir])
    r = with_quiet_time(load_runs([runs_dir / "fig"]), costs)
    axis = time_axis(r.metrics, costs, "measured note")
    assert axis.measured == ["KFI · PCH-1"] and axis.column == "time"
    assert "quiet Table 1 study on Test box" in axis.note and "no quiet cost: KFI · PCH-1." in axis.note
    kfi = axis.metrics[axis.metrics["label"] == "KFI · PCH-1"]
    assert kfi["time"].tolist() == kfi["wall_time"].tolist()
    fig = training_figure(axis.metrics, "t", wall_note=axis.note, time=axis.column, time_name=axis.name)
    assert fig.axes[0].get_xlabel() == "quiet-machine time / *measured (s)"
    assert "no quiet cost: KFI" in fig._supxlabel.get_text()
    plt.close(fig)
    only = r.metrics[r.metrics["label"] != "KFI · PCH-1"]  # every curve costed: quiet time only
    axis = time_axis(only, costs, "measured note")
    assert (axis.column, axis.name, axis.measured) == ("quiet_time", "quiet-machine time", [])
    assert "*Measured" not in axis.note
    none = time_axis(r.metrics, None, "measured note")  # no study: the measured time and its own note
    assert (none.column, none.note) == ("wall_time", "measured note")


def test_costs_apply_to_the_study_net_and_batch_only(tmp_path: Path, runs_dir: Path) -> None:
    study = _study(tmp_path / "other", widths=[4, 5, 2])
    r = with_quiet_time(load_runs([runs_dir / "fig"]), find_step_costs([], study))
    assert r.metrics["quiet_time"].isna().all()
    assert find_step_costs([tmp_path / "other"]) is not None and find_step_costs([tmp_path / "nothing"]) is None


def test_report_draws_quiet_time_and_keeps_the_measured_one(runs_dir: Path, tmp_path: Path) -> None:
    files = report([runs_dir / "fig"], tmp_path / "out")
    final = pd.read_csv(tmp_path / "out" / "fig_final.csv", index_col=0)
    assert final.loc["EA-CG · PCH-1", "quiet-machine time (s)"] == "2.75"  # every seed agrees: the value alone
    assert final.loc["SGD (momentum 0.9)", "quiet-machine time (s)"] == "2.5"
    assert "solver time (s)" in final  # the measured time stays in the table
    assert tmp_path / "out" / "fig.png" in files
    report([runs_dir / "fig"], tmp_path / "measured", measured_time=True)
    assert "quiet-machine time (s)" not in pd.read_csv(tmp_path / "measured" / "fig_final.csv", index_col=0)


def test_method_keys_of_run_configs() -> None:
    row = lambda **cfg: pd.Series({f"cfg.{k}": v for k, v in cfg.items()})  # noqa: E731
    assert run_method_key(row(**{"solver.name": "sgd", "solver.momentum": 0.9})) == "sgd"
    assert run_method_key(row(**{"solver.name": "kfi", "curvature.kind": "pch2",
                                 "solver.rank_one_first_layer": True})) == "pch2/kfi+rank1"
    assert run_method_key(row(**{"solver.name": "eacg", "curvature.kind": "pch1", "solver.split": 16,
                                 "curvature.jacobian_average": "mean"})) == "pch1/eacg+meanJ+split16"
    assert run_method_key(row(**{"solver.name": "cr", "solver.base": "sgd"})) is None
    assert method_key("eacg", "pch") == "pch1/eacg"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_the_study_measures_every_method_the_figure_presets_train() -> None:
    """Every job of the CIFAR-10-net figure presets has a method the Table 1 study measures."""
    from omegaconf import OmegaConf

    from curvlab.report.load import _flatten

    study, reproduce = _script("study_table1"), _script("reproduce")
    for exp in ("eacg_fig1_3", "eacg_fig5_7", "hbp_fig5"):
        for job in reproduce.expand(exp, [], 1):
            cfg = _flatten(job.cfg if isinstance(job.cfg, dict) else OmegaConf.to_container(job.cfg, resolve=True))
            assert cfg["cfg.net.widths"] == str(study.WIDTHS) and cfg["cfg.train.batch_size"] == 500
            assert run_method_key(pd.Series(cfg)) in study.SPECS, (exp, job.name)


def test_a_wrong_step_costs_folder_is_named_in_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from curvlab.report import main

    (tmp_path / "runs").mkdir()
    args = [str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--step-costs", str(tmp_path / "nowhere")]
    assert main(args) == 2
    assert "--step-costs" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not a table1_measured study folder"):
        find_step_costs([], tmp_path)


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_study_refuses_a_bad_thread_count(threads: str) -> None:
    with pytest.raises(SystemExit) as done:
        _script("study_table1").main(["--threads", threads, "--quick", "--out", "/nonexistent"])
    assert done.value.code == 2
