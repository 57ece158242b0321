"""What `curvlab train` writes and says: the locked run directory, failed sweep jobs, train.log on a terminal."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import hydra.core.utils

from curvlab import cli


class _Ticking(dt.datetime):
    """A clock a second further on at every reading, as a second boundary between the preflight's
    resolution of ``${now:...}`` and Hydra's own would make it."""

    ticks = itertools.count()

    @classmethod
    def now(cls, tz=None):  # type: ignore[override]
        return dt.datetime(2026, 1, 1) + dt.timedelta(seconds=next(cls.ticks))


def test_a_run_writes_into_the_locked_directory_even_when_the_clock_moves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hydra.core.utils, "datetime", _Ticking)  # Hydra's ${now:} resolver reads this name
    assert cli.main(["train", "train.max_steps=1", "log.hessian_every=0", "log.progress=false"]) == 0
    runs = [p for p in Path("runs").rglob("2026-01-01_*") if p.is_dir()]
    assert len(runs) == 1, runs  # before the fix: an empty locked folder beside the run's own
    assert (runs[0] / "summary.json").is_file() and (runs[0] / ".lock").is_file()


def test_a_failed_job_of_a_sweep_in_a_relative_folder_is_listed_once(tmp_path, monkeypatch, capsys):
    """The default sweep folder is relative: the job's own record (absolute) and the summary's must be one entry."""
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "-m", "solver=sgd", "solver.momentum=0", "solver.lr=1e6,0.1", "train.divergence_factor=2",
                     "train.max_steps=3", "log.hessian_every=0", "log.hessian_first=0", "log.progress=false"])
    err = capsys.readouterr().err
    assert code == 1 and "1 job(s) of the sweep failed" in err
    listed = [line for line in err.splitlines() if line.startswith("  ") and "diverged" in line]
    assert len(listed) == 1 and listed[0].strip().startswith(str(tmp_path)), listed


def test_on_a_terminal_train_log_keeps_every_progress_line_and_the_hessian_summary(tmp_path, monkeypatch):
    """With a progress bar (stderr a terminal) the evaluation lines still reach train.log, and the run
    ends with one line of the last logged layer-wise Hessian errors."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert cli.main(["train", "train.max_steps=6", "train.eval_every=2", f"run_dir={tmp_path}"]) == 0
    log = (tmp_path / "train.log").read_text()
    assert [f"step {n}/6" in log for n in (2, 4, 6)] == [True, True, True], log
    summary = [line for line in log.splitlines() if "layer-wise Hessian errors at update" in line]
    assert len(summary) == 1 and "pch1 " in summary[0] and "fisher (MC 1) " in summary[0], summary


def test_hessian_summary_line_totals_the_last_update_over_layers():
    from curvlab.hessian_log import summary_line

    rows = [{"step": s, "layer": t, "kind": "pch1", "error": e, "reference": 1.0, "batch": 8, "mc_samples": None,
             "fisher": None} for s, t, e in ((0, 1, 9.0), (5, 1, 3.0), (5, 2, 4.0))]
    line = summary_line(rows)
    assert line is not None and "update 5" in line and "pch1 5 (353.6%)" in line  # √(3²+4²) = 5, / √2
    assert summary_line([]) is None
