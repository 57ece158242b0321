"""The ``curvlab`` console script: ``curvlab train [overrides]`` and ``curvlab report ...``.

``train`` is a thin ``@hydra.main`` wrapper: it converts the composed config to
dataclasses (:func:`curvlab.config.parse_config`) and calls the plain
:func:`curvlab.train.train`. Exit codes: 0 when every run completed, 1 when a run (or, with
``-m``, any job of the sweep) failed, 2 for a config error in a single run. In a multirun a
failing job never stops the sweep: the task function records the failure in that job's
``summary.json`` and returns, and :class:`SweepStatus` (a Hydra callback that runs in the
launching process after the sweep, whichever launcher ran the jobs) collects the failures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

__all__ = ["main", "SweepStatus", "CONFIG_DIR"]

log = logging.getLogger("curvlab")

# configs/hydra/launcher/*.yaml extend the plugins' schemas of the same name on purpose (so that
# `hydra/launcher=joblib` picks up our defaults); Hydra warns about that pattern, harmlessly.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/.*' is validated against ConfigStore schema")

# The configs live next to the package in the source tree (editable install); CURVLAB_CONFIGS
# points elsewhere, e.g. at a copy of configs/ with extra experiment presets.
CONFIG_DIR = os.environ.get("CURVLAB_CONFIGS", str(Path(__file__).resolve().parents[1] / "configs"))

USAGE = """usage: curvlab COMMAND [ARGS]

commands:
  train [overrides]   train one run (Hydra overrides, e.g. solver=kfi curvature=pch2);
                      -m for a sweep: curvlab train -m solver=eacg,kfi solver.alpha=0.01,0.1
                      `curvlab train --help` lists the config groups
  report [args]       tables and figures from run directories (curvlab report --help)
"""

# Failures seen by this process: single runs and basic-launcher jobs add theirs directly,
# SweepStatus adds those of jobs that ran in other processes (joblib, submitit).
_FAILURES: dict[str, str] = {}
_LAUNCHER_PID: int | None = None  # the `curvlab train` process (jobs in other processes watch it)
_CONFIG_ERROR = False


class SweepStatus(Callback):
    """After a multirun, read every job's ``summary.json`` and report the failed ones."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from curvlab import runfiles as rf

        sweep_dir = Path(str(config.hydra.sweep.dir))
        for path in sorted(sweep_dir.glob(f"**/{rf.SUMMARY}")):
            summary = rf.read_json(path)
            if summary.get("status") != "completed":
                _FAILURES[str(path.parent)] = str(summary.get("failure") or f"status {summary.get('status')}")
        if _FAILURES:
            print(f"curvlab train: {len(_FAILURES)} job(s) of the sweep failed:", file=sys.stderr)
            for run_dir, reason in sorted(_FAILURES.items()):
                print(f"  {run_dir}: {reason}", file=sys.stderr)


def _record_failure(run_dir: str, reason: str) -> None:
    from curvlab import runfiles as rf

    _FAILURES[run_dir] = reason
    summary_path = Path(run_dir) / rf.SUMMARY
    if not summary_path.exists():  # a config or data error: no run started, say why anyway
        rf.write_json(summary_path, {"status": "failed", "failure": reason})


def _task(cfg: Any) -> None:
    """The Hydra task function: validate, train, and turn errors into recorded failures."""
    global _CONFIG_ERROR
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from curvlab.config import parse_config
    from curvlab.safety import exit_with_parent
    from curvlab.train import RunDirBusy, TrainingFailed, train

    hc = HydraConfig.get()
    run_dir = str(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun and os.getpid() != _LAUNCHER_PID:  # a joblib/submitit worker: stop when the sweep is killed
        exit_with_parent()
    try:
        run = parse_config(cfg)
        run.run_dir = run_dir  # the directory Hydra made (a sweep job's, or run_dir itself)
        summary = train(run, run_dir)
    except RunDirBusy as err:  # another run owns the directory: write nothing into it
        log.error("%s", err)
        _FAILURES[run_dir] = str(err)
        return
    except TrainingFailed as err:
        log.error("%s", err)
        _record_failure(run_dir, str(err))
        return
    except ValueError as err:  # config or data: fails before training
        log.error("config error: %s", err)
        _record_failure(run_dir, f"config error: {err}")
        _CONFIG_ERROR = not multirun
        return
    acc = summary.get("test_acc")
    log.info(
        "%s: %d steps in %.1f s (%.1f s solver, %.1f s Hessian-error logging), test loss %.4f, test accuracy %s -> %s",
        summary["status"], summary["steps"], summary["elapsed"], summary["wall_time"], summary["log_time"],
        summary.get("test_loss") or float("nan"),
        "n/a" if acc is None else f"{acc:.4f}", run_dir,
    )
    for note in summary.get("notes", []):
        log.info("note: %s", note)


def _train(argv: list[str]) -> int:
    global _LAUNCHER_PID, _CONFIG_ERROR
    import hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from curvlab.config import compose_error_message  # also registers the resolvers the configs use
    from curvlab import runfiles as rf
    from curvlab.safety import check_overrides, single_run_dir

    try:
        check_overrides(argv)
    except ValueError as err:
        print(f"curvlab train: config error: {err}", file=sys.stderr)
        return 2
    run_dir = single_run_dir(argv)  # locked before Hydra writes .hydra/ into it (train() re-enters the lock)
    lock = rf.lock_run_dir(run_dir) if run_dir else contextlib.nullcontext()
    _LAUNCHER_PID = os.getpid()
    _FAILURES.clear()
    _CONFIG_ERROR = False
    entry = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")(_task)
    saved, full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [saved[0] if saved else "curvlab", *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's own errors reach us, instead of Hydra exiting 1
    try:
        with lock:
            entry()
    except rf.RunDirBusy as err:
        print(f"curvlab train: {err}", file=sys.stderr)
        return 1
    except (HydraException, OmegaConfBaseException, ValueError) as err:  # composing the config failed
        print(f"curvlab train: config error: {compose_error_message(err, argv)}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
        GlobalHydra.instance().clear()  # a failed composition leaves it set; the next call starts clean
    if _CONFIG_ERROR:
        return 2
    return 1 if _FAILURES else 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``curvlab train`` (Hydra) and ``curvlab report`` (``curvlab.report.main``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        return _train(rest)
    if command == "report":
        from curvlab.report import main as report_main  # lazily: plotting imports are slow

        return int(report_main(rest) or 0)
    print(f"curvlab: unknown command {command!r}; allowed: train, report\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
