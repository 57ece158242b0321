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

__all__ = ["main", "SweepStatus", "CONFIG_DIR", "PACKAGE_CONFIGS", "unswept_warning"]

log = logging.getLogger("curvlab")

# configs/hydra/launcher/*.yaml extend the plugins' schemas of the same name on purpose (so that
# `hydra/launcher=joblib` picks up our defaults); Hydra warns about that pattern, harmlessly.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/.*' is validated against ConfigStore schema")

# The configs ship inside the package (curvlab/configs/; the checkout's configs/ links to it), so a
# wheel installed anywhere finds them: Hydra reads them as pkg://curvlab.configs. CURVLAB_CONFIGS=DIR
# replaces them with a copy of that folder (e.g. with extra presets); `--config-dir DIR` or
# `hydra.searchpath=[file://DIR]` adds a folder of extra group options in front of them.
CONFIG_ENV = "CURVLAB_CONFIGS"
PACKAGE_CONFIGS = "pkg://curvlab.configs"
CONFIG_DIR = str(Path(os.environ.get(CONFIG_ENV) or Path(__file__).resolve().parent / "configs").expanduser().resolve())

USAGE = """usage: curvlab COMMAND [ARGS]

commands:
  train [overrides]   train one run (Hydra overrides, e.g. solver=kfi curvature=pch2);
                      -m for a sweep: curvlab train -m solver=eacg,kfi solver.alpha=0.01,0.1
                      `curvlab train --help` lists the config groups
  report [args]       tables and figures from run directories (curvlab report --help)
  data prepare NAME --root DIR
                      get mnist, cifar10 or imagenet10 through torchvision and cache it as
                      DIR/<name>.npz for dataset.source=npz (curvlab data prepare --help)
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
        paths = sorted(sweep_dir.glob(f"**/{rf.SUMMARY}"))
        if config.hydra.sweeper.get("jobs_file"):  # hydra/sweeper=list: only its jobs (the sweep dir holds others)
            from hydra_plugins.curvlab_sweeper.list_sweeper import read_jobs

            jobs = read_jobs(config.hydra.sweeper.jobs_file)
            paths = [sweep_dir / sub / rf.SUMMARY for sub, _ in jobs if (sweep_dir / sub / rf.SUMMARY).exists()]
        for path in paths:
            summary = rf.read_json(path)
            if summary.get("status") != "completed":
                # keyed like the jobs' own records (absolute), so a job is listed once; the summary's words win
                _FAILURES[_job_key(path.parent)] = str(summary.get("failure") or f"status {summary.get('status')}")
        if _FAILURES:
            print(f"curvlab train: {len(_FAILURES)} job(s) of the sweep failed:", file=sys.stderr)
            for run_dir, reason in sorted(_FAILURES.items()):
                print(f"  {run_dir}: {reason}", file=sys.stderr)


def unswept_warning(params: Any, overrides: list[str]) -> str | None:
    """A warning when a single run (no ``-m``) comes from a config that declares a sweep.

    ``params`` is ``hydra.sweeper.params`` (e.g. an experiment preset's); keys that the command
    line sets are the user's choice and do not count. None when at most one run was declared.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    swept, points = [], 1
    for key, value in dict(params).items():
        if key in given:
            continue
        (override,) = OverridesParser.create().parse_overrides([f"{key}={value}"])
        if override.is_sweep_override():
            try:
                points *= len(list(override.sweep_string_iterator()))
            except Exception:  # a range or interval: count it as many
                points *= 2
            swept.append(f"{key}={value}")
    if points <= 1:
        return None
    experiment = next((o for o in overrides if o.split("=", 1)[0].lstrip("+") == "experiment"), "the config")
    return (
        f"{experiment} declares a sweep of {points} runs ({' '.join(swept)}); without -m only one run is made, with "
        f"its defaults; add -m (curvlab train -m {' '.join(overrides)}) to run the whole sweep"
    )


def _job_key(run_dir: str | Path) -> str:
    """A job's run directory as one key whether it was named relative or absolute."""
    return str(Path(run_dir).resolve())


def _record_failure(run_dir: str, reason: str) -> None:
    from curvlab import runfiles as rf

    _FAILURES[_job_key(run_dir)] = reason
    summary_path = Path(run_dir) / rf.SUMMARY
    if not summary_path.exists():  # a config or data error: no run started, say why anyway
        rf.write_json(summary_path, {"status": "failed", "failure": reason})


def _pinned_run_dir(run_dir: Path | None, argv: list[str]) -> list[str]:
    """``hydra.run.dir`` set to the directory the preflight resolved and locked.

    The default run directory ends in ``${now:...}``: resolved again by Hydra a second later it
    would name another folder than the one locked (and leave the locked one empty).
    """
    from hydra_plugins.curvlab_sweeper.list_sweeper import quote  # the one quoting of override values

    if run_dir is None or any(a.startswith("hydra.run.dir=") for a in argv):
        return []
    try:
        return [f"hydra.run.dir={quote(str(run_dir))}"]
    except ValueError:  # a backslash: Hydra's grammar cannot carry it, so Hydra resolves the directory itself
        return []


def _task(cfg: Any) -> None:
    """The Hydra task function: validate, train, and turn errors into recorded failures."""
    global _CONFIG_ERROR
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from curvlab.config import parse_config
    from curvlab.safety import exit_with_parent
    from curvlab.threads import AUTO, launcher_threads
    from curvlab.train import RunDirBusy, TrainingFailed, train

    hc = HydraConfig.get()
    run_dir = str(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun and os.getpid() != _LAUNCHER_PID:  # a joblib/submitit worker: stop when the sweep is killed
        exit_with_parent()
    if not multirun:
        warning = unswept_warning(hc.sweeper.get("params") or {}, list(hc.overrides.task))
        if warning:
            log.warning("%s", warning)
    try:
        run = parse_config(cfg)
        run.run_dir = run_dir  # the directory Hydra made (a sweep job's, or run_dir itself)
        if multirun and run.train.threads in (None, AUTO):  # jobs side by side share the cores
            run.train.threads = launcher_threads(hc.launcher) or run.train.threads
        summary = train(run, run_dir)
    except RunDirBusy as err:  # another run owns the directory: write nothing into it
        log.error("%s", err)
        _FAILURES[_job_key(run_dir)] = str(err)
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


def _config_source() -> str | None:
    """Hydra's primary config source: ``CURVLAB_CONFIGS`` when set, else the package's; None when that has no config.yaml."""
    if not (Path(CONFIG_DIR) / "config.yaml").is_file():
        return None
    return CONFIG_DIR if os.environ.get(CONFIG_ENV) else PACKAGE_CONFIGS


def _train(argv: list[str]) -> int:
    global _LAUNCHER_PID, _CONFIG_ERROR
    import hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from curvlab.config import compose_error_message  # also registers the resolvers the configs use
    from curvlab import runfiles as rf
    from curvlab.preflight import preflight, print_callbacks
    from curvlab.rundirs import RunDirError, os_error_line
    from curvlab.safety import LAUNCHER_ENV, check_overrides, launcher_id

    try:
        check_overrides(argv)
    except ValueError as err:
        print(f"curvlab train: config error: {err}", file=sys.stderr)
        return 2
    _LAUNCHER_PID = os.getpid()
    _FAILURES.clear()
    _CONFIG_ERROR = False
    source = _config_source()
    if source is None:
        where = os.environ.get(CONFIG_ENV)
        fix = (f"{CONFIG_ENV}={where}: no config.yaml there; point it at a copy of curvlab's configs folder or unset it"
               if where else f"no config.yaml in {CONFIG_DIR}: the install lacks its configs; reinstall curvlab")
        print(f"curvlab train: config error: {fix}", file=sys.stderr)
        return 2
    try:  # the resolved run directory and group choices, checked before Hydra writes or runs anything
        plan = preflight(argv, source)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        why = str(err) if type(err).__module__.startswith("curvlab") or type(err) is ValueError else None
        print(f"curvlab train: config error: {why or compose_error_message(err, argv)}", file=sys.stderr)
        return 2
    print_callbacks(plan)
    run_dir = plan.run_dir if plan else None  # locked before Hydra writes .hydra/ (train() re-enters the lock)
    lock = rf.lock_run_dir(run_dir) if run_dir else contextlib.nullcontext()
    os.environ[LAUNCHER_ENV] = launcher_id(_LAUNCHER_PID)  # sweep jobs in other processes stop when it dies
    entry = hydra.main(version_base="1.3", config_path=source, config_name="config")(_task)
    saved, full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [saved[0] if saved else "curvlab", *argv, *_pinned_run_dir(run_dir, argv)]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's own errors reach us, instead of Hydra exiting 1
    try:
        with lock:
            entry()
    except rf.RunDirBusy as err:
        print(f"curvlab train: {err}", file=sys.stderr)
        return 1
    except RunDirError as err:  # a planted link, or a .lock that is no file
        print(f"curvlab train: config error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # Hydra's own writes (.hydra/, train.log): disk full, read-only
        print(f"curvlab train: {os_error_line(err, run_dir or (plan and plan.sweep_dir) or 'of this run')}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # the run has recorded `interrupted` (train.RunInterrupted) where it could
        print(f"curvlab train: {err or 'interrupted before training started'}", file=sys.stderr)
        return 130
    except (HydraException, OmegaConfBaseException, ValueError) as err:  # composing the config failed
        print(f"curvlab train: config error: {compose_error_message(err, argv)}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
        os.environ.pop(LAUNCHER_ENV, None)
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
        GlobalHydra.instance().clear()  # a failed composition leaves it set; the next call starts clean
    if _CONFIG_ERROR:
        return 2
    return 1 if _FAILURES else 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``curvlab train`` (Hydra), ``curvlab report`` (``curvlab.report.main``) and ``curvlab data``."""
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
    if command == "data":
        from curvlab.prepare import main as data_main

        return data_main(rest)
    print(f"curvlab: unknown command {command!r}; allowed: train, report, data\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":  # `python -m curvlab.cli`
    # Run the imported module's main, not this __main__ copy: the sweep callback (curvlab.cli.SweepStatus)
    # records failures in curvlab.cli's globals, which a __main__ copy would not see (exit 0 on failures).
    from curvlab.cli import main as _main

    sys.exit(_main())
