"""A Hydra sweeper that launches an explicit list of jobs: ``hydra/sweeper=list`` (issue 21, item 1).

``scripts/reproduce.py`` builds a campaign's job list itself (:func:`expand`: the presets' sweeps,
jobs that differ only in fields their solver ignores dropped, finished runs skipped) and hands
it to ``curvlab train -m hydra/sweeper=list hydra.sweeper.jobs_file=JOBS.json
hydra/launcher=...``, so every launcher (basic, joblib, submitit, Ray) runs exactly those jobs.

``JOBS.json`` is ``{"jobs": [{"dir": "eacg_fig1_3/solver=kfi,curvature=gn", "overrides":
["experiment=eacg_fig1_3", "solver=kfi", "curvature=gn"]}, ...]}``: each job is the command line's
overrides plus its own, and runs in ``hydra.sweep.dir``/``dir``. Unlike Hydra's basic sweeper it
does not compose every job before launching (the launcher composes each one where it runs; a
576-point grid took 194–266 s to validate) and writes no ``multirun.yaml`` into the sweep
directory (the committed record keeps each run's own files only).
"""

# No `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules, where
# @dataclass cannot resolve string annotations.
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@dataclass
class ListSweeperConf:
    _target_: str = "hydra_plugins.curvlab_sweeper.list_sweeper.ListSweeper"
    jobs_file: Optional[str] = None  # the JSON job list (module docstring)
    max_batch_size: Optional[int] = None  # jobs per launch (null: all in one, e.g. one SLURM array)
    params: Optional[Dict[str, str]] = None  # a preset's own sweep: ignored, the list is the sweep


ConfigStore.instance().store(group="hydra/sweeper", name="list", node=ListSweeperConf, provider="curvlab")


def quote(text: str) -> str:
    """``text`` as a quoted Hydra override value, read back verbatim (``${`` stays literal).

    Raises:
        ValueError: for a backslash, which Hydra's grammar would read differently.
    """
    if "\\" in text:
        raise ValueError(f"{text!r}: a backslash cannot be passed through a Hydra override")
    return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"


def read_jobs(path: str | Path) -> list[tuple[str, list[str]]]:
    """The ``(dir, overrides)`` of every job in a job list file; ValueError naming what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
        jobs = [(str(j["dir"]), [str(o) for o in j["overrides"]]) for j in data["jobs"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"hydra.sweeper.jobs_file={path}: not a job list ({type(err).__name__}: {err}); "
                         'expected {"jobs": [{"dir": ..., "overrides": [...]}, ...]}') from None
    for sub, _ in jobs:
        if not sub or sub.startswith("/") or ".." in Path(sub).parts:
            raise ValueError(f"hydra.sweeper.jobs_file={path}: job dir {sub!r} must be a relative path inside the sweep dir")
    return jobs


class ListSweeper(Sweeper):
    """Launch the jobs of ``jobs_file``, each with the command line's overrides before its own."""

    def __init__(self, jobs_file: Optional[str] = None, max_batch_size: Optional[int] = None,
                 params: Optional[Dict[str, str]] = None) -> None:
        super().__init__()
        self.jobs_file, self.max_batch_size = jobs_file, max_batch_size
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def batches(self, arguments: Sequence[str]) -> List[List[List[str]]]:
        """The launches: lists of per-job override lists, ``max_batch_size`` jobs each."""
        if not self.jobs_file:
            raise ValueError("hydra/sweeper=list needs hydra.sweeper.jobs_file=JOBS.json (scripts/reproduce.py writes it)")
        swept = [a for a in arguments if _is_sweep(a)]
        if swept:
            raise ValueError(f"hydra/sweeper=list: {swept[0]!r} is a sweep; the job list is the sweep, "
                             "put every job's values in hydra.sweeper.jobs_file")
        jobs = [[*arguments, *own, f"hydra.sweep.subdir={quote(sub)}"] for sub, own in read_jobs(self.jobs_file)]
        size = self.max_batch_size or len(jobs) or 1
        return [jobs[i:i + size] for i in range(0, len(jobs), size)]

    def sweep(self, arguments: List[str]) -> Any:
        assert self.launcher is not None
        returns, index = [], 0
        for batch in self.batches(arguments):
            log.info("curvlab list sweeper: launching jobs %d-%d", index, index + len(batch) - 1)
            results = self.launcher.launch(batch, initial_job_idx=index)
            for num, r in enumerate(results, index):  # the task records its own failures; this is a crash
                if r.status == JobStatus.FAILED:
                    log.error("job #%d (%s) crashed: %s", num, r.working_dir, r._return_value)
            returns.append(results)
            index += len(batch)
        return returns


def _is_sweep(argument: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (override,) = OverridesParser.create().parse_overrides([argument])
    return override.is_sweep_override()
