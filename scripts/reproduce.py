#!/usr/bin/env python
"""Run the paper experiments of one kind and render them: ``reproduce.py tables|figures``.

Called by ``make reproduce-tables`` / ``make reproduce-figures`` (``SCALE=ci|full``, ``FORCE=1``).
Each experiment is a preset in ``configs/experiment/``; its ``hydra.sweeper.params`` are
expanded here exactly as Hydra's basic sweeper would (``curvlab train -m experiment=NAME``
runs the same jobs), jobs that only differ in a setting their solver ignores are run once,
and a job whose run directory already holds a completed ``summary.json`` is skipped unless
``--force``. The remaining jobs of every experiment go to ONE Hydra multirun, ``curvlab train -m
hydra/sweeper=list`` (:mod:`hydra_plugins.curvlab_sweeper.list_sweeper`: the job list is the
sweep) on the launcher of ``--launcher`` (default Hydra's basic one: the jobs one after another
in this process), each into ``<runs-dir>/<experiment>/<job>/``; an interrupted one resumes from
its checkpoint. Studies that are not training runs
(``scripts/study_*.py``) run as subprocesses. Finally ``curvlab report`` renders everything
into ``results/tables/`` and ``results/figures/`` (at ci scale into the untracked
``runs/reproduce/ci/``, so that a quick run never touches the committed record);
``--render-only`` just renders what ``results/runs`` holds.

Scales:
- ``ci`` trains a few steps on data subsets (minutes on 2 CPU cores); its runs and renders go to
  the untracked ``runs/reproduce/ci/`` and never touch ``results/``.
- ``cpu`` is the campaign that builds the committed record on a CPU over several sessions:
  every curve of the figures at ≥ 2,000 updates and ≥ 3 seeds (HBP Fig. 5: 5 seeds; the reduced
  grid search ``eacg_grid_reduced``: 1 seed per point), the tables' error logging along ≥ 4,000
  updates (:data:`CPU_SIZES`). Runs go to ``results/runs/<experiment>/
  <job>/`` (config.yaml, summary.json, metrics.csv, hessian_errors.csv are committed; checkpoints
  are not), finished ones are skipped, interrupted ones resume from their run directory, and the
  tables and figures are rendered from ``results/runs`` alone.
- ``full`` keeps the presets (the papers' 200 epochs and seeds; meant for a GPU), also into
  ``results/runs``.

``--steps/--seeds/--train-subset`` override a scale's sizes; ``--set KEY=VALUE`` adds Hydra
overrides to every job (tests use ``--set net=tiny``); ``--where solver=eacg,sgd`` keeps only the
matching sweep points. ``--launcher joblib`` runs the jobs side by side (one per core, one torch
thread each: ``train.threads=auto``); ``--launcher-set n_jobs=2`` sets ``hydra.launcher.n_jobs``;
``submitit_slurm_cpu``/``submitit_slurm_gpu`` submit one SLURM array from a login node, ``ray``
runs them on a Ray cluster (configs/hydra/launcher/).

    python scripts/reproduce.py tables --scale ci --data-root ../shared/data
    nice -n 19 python scripts/reproduce.py figures --scale cpu --launcher joblib --launcher-set n_jobs=2 --no-render &
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ["joblib", "submitit_local", "submitit_slurm", "submitit_slurm_cpu", "submitit_slurm_gpu", "ray"]

# What each kind runs: training presets and studies (script, arguments per scale).
TABLES = ["eacg_table2", "eacg_table3", "eacg_table4", "eacg_table5"]
FIGURES = ["eacg_fig1_3", "eacg_fig2_4", "eacg_fig5_7", "eacg_fig6_8", "eacg_fig9", "eacg_fig10", "eacg_fig11",
           "eacg_fig12", "hbp_fig5", "lowrank_fig1", "lowrank_fig2", "lowrank_fig3", "lowrank_fig4", "lowrank_fig5",
           "lowrank_adam", "rahimi_newton", "eacg_grid_reduced", "eacg_fig1_3_e200", "eacg_fig2_4_e200",
           "eacg_fig6_8_e200", "eacg_fig5_7_grid", "hbp_fig5_e40", "hbp_eq6_eq7", "eacg_grid_cg",
           "conv_mnist_2c2d", "conv_cifar10_3c3d", "conv_mnist_2c2d_sigmoid",
           "conv_mnist_2c2d_sigmoid_pch1"]
STUDIES: dict[str, dict[str, tuple[str, dict[str, list[str]]]]] = {
    "tables": {"table1_measured": ("study_table1.py", {"ci": ["--quick"], "full": []})},
    "figures": {
        "appendix_chain_rule": ("study_appendix_chain_rule.py", {"ci": ["--seeds", "1", "--points", "7"], "full": []}),
        "rahimi_scaling": ("study_rahimi_scaling.py", {"ci": ["--quick"], "full": []}),
        "lowrank_structure": ("study_lowrank_structure.py", {"ci": ["--quick"], "full": []}),
        "cr_sigma": ("study_cr_sigma.py", {"ci": ["--quick"], "full": []}),
        "cr_depth": ("study_cr_depth.py", {"ci": ["--quick"], "full": []}),
    },
}
# Sizes at ci scale by experiment family: (max_steps, batch_size or None, seeds).
CI_SIZES = {"eacg_table": (2, 20, 1), "eacg_fig": (3, 100, 1), "eacg_grid_reduced": (3, 100, 1),
            "hbp_fig5": (3, 100, 2), "lowrank": (150, None, 1), "rahimi": (10, None, 1), "conv_": (3, 100, 1)}
# The CPU campaign by experiment family: (max_steps, seeds, extra overrides). Figures: 2,000
# updates = 20 epochs of CIFAR-10 at batch 500 (≈ 105 epochs of the 9,469 Imagenette images).
# Tables: the layer-wise errors along 4,000 updates, every 250 and at each of the first 10, on fresh
# logging batches of 100, 500 and 1,000 samples, the Fisher with 1 and 10 MC samples and the empirical one.
CPU_SIZES: dict[str, tuple[int, int, list[str]]] = {
    # The papers' 200 epochs (issue 22 §2), before the 2,000-update family it shares a prefix with.
    "eacg_fig1_3_e200": (20000, 1, []),
    "eacg_fig2_4_e200": (3800, 1, []),  # 200 epochs of the 9,469 Imagenette images
    "eacg_fig6_8_e200": (3800, 1, []),
    "eacg_fig5_7_grid": (20000, 1, []),  # --seeds 3 for the EA-CG curves
    "hbp_fig5_e40": (4000, 5, []),
    "hbp_eq6_eq7": (2000, 3, []),
    "eacg_grid_cg": (2000, 1, []),
    "eacg_table": (4000, 3, ["log.hessian_first=10", "log.hessian_every=250", "log.hessian_batches=[100,500,1000]",
                             "log.hessian_fisher_mc=[1,10]", "log.hessian_fisher_types=[mc,empirical]",
                             "train.eval_every=250"]),
    "eacg_fig": (2000, 3, []),
    "eacg_grid_reduced": (2000, 1, []),  # lr × α around the figures' settings, one seed (issue 10 §2)
    "hbp_fig5": (2000, 5, []),
    # DeepOBS's conv nets at batch 128 (issue 19): 2,000 updates = 4.3 epochs of MNIST, 5.1 of CIFAR-10. A momentum
    # SGD update costs 0.19 s (mnist_2c2d) / 0.33 s (cifar10_3c3d) of one core's CPU time, Adam the same, CR on SGD
    # 2.7× / 5× that: the first-order runs (3 methods × 3 seeds) are ≈ 1.6 + 3.9 core-hours.
    "conv_mnist_2c2d_sigmoid": (1000, 3, []),  # (and _pch1) the plateau question: SGD leaves ln 10 at ≈ 500 (pilot)
    "conv_": (2000, 3, []),
}


@dataclass
class Job:
    experiment: str
    overrides: list[str]  # the sweep point, e.g. ["solver=kfi", "curvature=gn", "seed=0"]
    cfg: Any = field(repr=False, default=None)  # its resolved config, a plain dict (curvlab.sweeps.PointComposer)
    head: list[str] = field(default_factory=list)  # the overrides before the point: experiment, data, sizes, --set
    problem: str | None = None  # why its config is invalid (curvlab.config.parse_config), if it is
    folder: str | None = None  # its run directory under the experiment's, chosen once when planned (dir_in)

    @property
    def point(self) -> dict[str, str]:
        """The sweep point as a mapping, e.g. ``{"solver": "kfi", "seed": "0"}``."""
        return dict(o.split("=", 1) for o in self.overrides)

    @property
    def name(self) -> str:
        return ",".join(o.replace("/", "_") for o in self.overrides) or "run"

    def dir_in(self, exp_dir: Path) -> str:
        """The folder of this job under ``exp_dir``: its :attr:`name`, or the 1-seed name of its seed-0 run.

        ``--seeds 3`` on a preset without a seed sweep adds ``seed=N`` to every name; a seed-0 run made
        before at one seed (named without it) is the same run when its config still continues to this
        job's (:func:`curvlab.train.config_changes`), and is kept rather than trained again.
        """
        if self.point.get("seed") != "0" or (exp_dir / self.name).exists():
            return self.name
        alone = ",".join(o.replace("/", "_") for o in self.overrides if o != "seed=0") or "run"
        saved = exp_dir / alone / "config.yaml"
        if self.cfg is None or self.problem or not saved.is_file():
            return self.name
        from omegaconf import OmegaConf

        from curvlab.config import parse_config, to_dict
        from curvlab.train import config_changes

        old = OmegaConf.to_container(OmegaConf.load(saved))
        return self.name if config_changes(old, to_dict(parse_config(self.cfg))) else alone


def data_overrides(dataset: str, data_root: Path | None) -> list[str]:
    """Point a dataset at its npz in ``data_root`` (``curvlab data prepare`` writes them); [] without a root."""
    if data_root is None or dataset == "digits":
        return []
    from curvlab.prepare import find_npz, npz_names

    path = find_npz(dataset, data_root, 32 if dataset == "imagenet10" else None)  # the presets use 32 px
    if path is not None:
        extra = ["dataset.image_size=32"] if dataset == "imagenet10" else []
        return ["dataset.source=npz", f"dataset.path={path}", *extra]
    if dataset == "mnist" and (data_root / "MNIST" / "raw").is_dir():
        return [f"dataset.root={data_root}"]  # torchvision's IDX layout
    raise SystemExit(f"reproduce: --data-root {data_root} has no {' or '.join(npz_names(dataset, 32))}"
                     f"{' nor MNIST/raw' if dataset == 'mnist' else ''}; write it with "
                     f"`curvlab data prepare {dataset} --root {data_root}` or point --data-root at a folder that has it")


def scale_overrides(exp: str, scale: str, a: argparse.Namespace) -> tuple[list[str], int]:
    """Overrides that size ``exp`` for ``scale``, and the number of seeds (0: the preset's own)."""
    sized, seeds = _scale_sizes(exp, scale, a)
    # The committed record keeps its tables compact (float32 CSV, gzip; scripts/compact_record.py).
    return (["log.compact=true", *sized] if scale in ("cpu", "full") else sized), seeds


def _scale_sizes(exp: str, scale: str, a: argparse.Namespace) -> tuple[list[str], int]:
    if scale == "cpu":
        family = next((k for k in CPU_SIZES if exp.startswith(k)), None)
        steps, seeds, extra = CPU_SIZES[family] if family else (None, 0, [])
        steps, seeds = a.steps or steps, a.seeds or seeds
        out = [*extra, "train.epochs=100000", f"train.max_steps={steps}"] if steps else []  # max_steps decides
        return [*out, *subset_overrides(a, None)], seeds
    family = next((k for k in CI_SIZES if exp.startswith(k)), None)
    steps, batch, seeds = CI_SIZES[family] if (scale == "ci" and family) else (None, None, 0)
    steps, seeds = a.steps or steps, a.seeds or seeds
    out = []
    if steps:
        out += [f"train.max_steps={steps}"]
        if exp.startswith("eacg_table") and a.hessian_every:  # θ^0, θ^N, θ^2N, … up to s − 1
            out += ["log.hessian_first=0", f"log.hessian_every={a.hessian_every}"]
        elif exp.startswith("eacg_table"):  # every one of θ^0 … θ^(s−1)
            out += [f"log.hessian_first={steps}"]
        elif exp.startswith(("lowrank", "rahimi")):
            out += [f"train.eval_every={max(1, steps // 10)}"]
        else:
            out += [f"train.eval_every={max(1, steps // 5)}"]
    if batch and not a.keep_batch:
        out += [f"train.batch_size={batch}"]
    return [*out, *subset_overrides(a, 2000 if scale == "ci" else None)], seeds


def subset_overrides(a: argparse.Namespace, default_train: int | None) -> list[str]:
    """``--train-subset``/``--test-subset`` (or the scale's default) as dataset overrides."""
    subset = a.train_subset or default_train
    if subset:
        return [f"dataset.train_subset={subset}", f"dataset.test_subset={a.test_subset or max(200, subset // 4)}"]
    return [f"dataset.test_subset={a.test_subset}"] if a.test_subset else []


def dataset_of(exp: str, extra: list[str]) -> str:
    """The dataset a preset trains on (before the data overrides are added)."""
    from hydra import compose, initialize_config_dir

    from curvlab.cli import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return str(compose("config", overrides=[f"experiment={exp}", *extra]).dataset.name)


def expand(exp: str, base: list[str], seeds: int, sweep: dict[str, str] | None = None) -> list[Job]:
    """The preset's sweep (Hydra basic-sweeper semantics), composed, with redundant jobs dropped.

    ``sweep`` replaces (or adds) sweep parameters, e.g. ``{"curvature": "pch1"}``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    import curvlab.config  # noqa: F401  (registers the ${prod:...} resolver the presets use)
    from curvlab.cli import CONFIG_DIR
    from curvlab.registry import curvature_fields
    from curvlab.sweeps import PointComposer

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        head = compose("config", overrides=[f"experiment={exp}", *base], return_hydra_config=True)
        params = {**dict(head.hydra.sweeper.params or {}), **(sweep or {})}
        if "seed" in params:  # a preset's own seed sweep shrinks with --seeds / the scale
            params["seed"] = f"range({seeds})" if seeds else params["seed"]
        elif seeds > 1:
            params["seed"] = f"range({seeds})"
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
                else [f"{o.get_key_element()}={o.get_value_element_as_str()}"] for o in parsed]
        # One Hydra composition per distinct group choice, not per point (576 points: 135 s -> 3 s).
        composer = PointComposer("config", [f"experiment={exp}", *base])
        jobs, seen = [], set()
        for point in itertools.product(*axes):
            cfg = composer.resolved(point)  # == to_container(compose("config", [experiment, *base, *point]), resolve=True)
            options = {k: v for k, v in cfg["solver"].items() if k != "name"}
            reads = curvature_fields(cfg["solver"]["name"], options)  # SGD: none; exact_inverse: the kind
            plain = {**cfg, "curvature": {k: v for k, v in cfg["curvature"].items() if k in reads}}
            key = json.dumps(plain, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                jobs.append(Job(exp, list(point), cfg, head=[f"experiment={exp}", *base]))
    return jobs


def seed_of(job: Job) -> int:
    """The seed of a sweep point (0 when the sweep does not set one)."""
    return int(job.point.get("seed", 0))


def matches(job: Job, where: dict[str, set[str]]) -> bool:
    """Whether the job's sweep point has, for every key of ``where``, one of its values."""
    return all(job.point.get(k) in vs for k, vs in where.items())


def read_summary(run_dir: Path) -> dict[str, Any] | str | None:
    """A run directory's ``summary.json`` (bounded, :mod:`curvlab.report.files`), the reason it is
    unreadable, or None when there is none."""
    from curvlab.report.files import BadFile, load_json

    path = run_dir / "summary.json"
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return load_json(path)
    except BadFile as e:
        return str(e)


def skip_reason(run_dir: Path, force: bool) -> str | None:
    """Why a job is not launched (its run directory holds a completed or unreadable run); None: launch it."""
    if force:
        return None
    summary = read_summary(run_dir)
    if isinstance(summary, str):
        return f"failed: {summary}; move the run directory away or rerun it with --force"
    if isinstance(summary, dict) and summary.get("status") == "completed":
        return "skipped (completed)"
    return None  # to do, or interrupted/failed: it runs (and resumes from its checkpoint)


def run_job(job: Job, run_dir: Path, force: bool) -> str:
    """Train one job in this process unless its run directory already holds a completed run.

    For the studies that time their own runs one by one (``scripts/study_cr_sigma.py``); the
    campaign's jobs go through :func:`launch`.
    """
    from curvlab.config import parse_config
    from curvlab.train import TrainingFailed, train

    skip = skip_reason(run_dir, force)
    if skip:
        return skip
    cfg = parse_config(job.cfg)
    cfg.log.progress = False
    if force:
        cfg.resume = False
    try:
        s = train(cfg, run_dir)
    except TrainingFailed as err:
        return f"failed: {err}"
    except (RuntimeError, ValueError) as err:  # a solver error: record it, go on with the other jobs
        return f"failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}"
    return f"{s['status']} in {s['wall_time']:.1f} s, {s['steps']} steps"


def outcome(run_dir: Path) -> str:
    """A launched job's result line, from the ``summary.json`` it left."""
    s = read_summary(run_dir)
    if not isinstance(s, dict):
        return f"failed: {s or 'no summary.json (the job did not start; see the launcher output above)'}"
    if s.get("status") == "completed":
        return f"completed in {s.get('elapsed') or 0:.1f} s, {s.get('steps')} steps"
    if s.get("status") in ("running", "interrupted"):  # killed, or stopped by its launcher: a rerun resumes it
        return f"failed: {s.get('status')} after {s.get('steps')} steps; rerun the same command to resume it"
    return f"failed: {s.get('failure') or s.get('status')}"


def pin_configs() -> Path | None:
    """Compose every job of this campaign from a copy of the configs as they are now; the copy's path (None: the
    configs were pinned already by ``CURVLAB_CONFIGS``).

    A campaign worker keeps its code in memory for hours while the checkout changes: a config field added on disk
    meanwhile would fail all its later jobs with "unknown field" (old code, new YAML). Jobs on the local launchers
    compose in this process; a cluster launcher composes here too and ships the composed config.
    """
    import curvlab.cli as cli

    if os.environ.get(cli.CONFIG_ENV):
        return None
    copy = Path(tempfile.mkdtemp(prefix="curvlab-configs-")) / "configs"
    shutil.copytree(cli.CONFIG_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    atexit.register(shutil.rmtree, copy.parent, True)
    os.environ[cli.CONFIG_ENV] = cli.CONFIG_DIR = str(copy)
    return copy


def launch(jobs: list[Job], runs_dir: Path, train_args: list[str]) -> int:
    """Run ``jobs`` as one Hydra multirun, each into ``runs_dir/<experiment>/<job>``; ``curvlab train``'s exit code.

    ``train_args`` are overrides for every job and Hydra's own (``hydra/launcher=joblib``, ...).
    """
    from hydra_plugins.curvlab_sweeper.list_sweeper import quote

    from curvlab.cli import main as curvlab

    with tempfile.TemporaryDirectory(prefix="curvlab-jobs-") as tmp:
        jobs_file = Path(tmp) / "jobs.json"
        jobs_file.write_text(json.dumps({"jobs": [{"dir": f"{j.experiment}/{j.folder or j.name}",
                                                   "overrides": [*j.head, *j.overrides]} for j in jobs]}))
        return curvlab(["train", "-m", "hydra/sweeper=list", f"hydra.sweeper.jobs_file={quote(str(jobs_file))}",
                        f"hydra.sweep.dir={quote(str(runs_dir))}", *train_args])


def job_state(run_dir: Path) -> str:
    """What ``--list`` prints for a job: completed, running/failed with its steps, or to do."""
    s = read_summary(run_dir)
    if s is None:
        return "to do"
    if isinstance(s, str):
        return f"unreadable: {s}"
    return f"{s.get('status')} ({s.get('steps')} steps)"


def run_study(name: str, script: str, args: list[str], out: Path, force: bool) -> str:
    if not force and (out / "study.json").is_file():
        return "skipped (exists)"
    cmd = [sys.executable, str(ROOT / "scripts" / script), "--out", str(out), *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return f"failed (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:] or ''}"
    return "done"


def _pairs(p: argparse.ArgumentParser, option: str, values: list[str], example: str) -> dict[str, str]:
    """``KEY=VALUE`` arguments of a repeatable option as a mapping; one clear error for any other form."""
    out = {}
    for kv in values:
        key, eq, value = kv.partition("=")
        if not eq or not key.strip():
            p.error(f"{option} {kv!r}: expected KEY=VALUE, e.g. {option} {example}")
        out[key.strip()] = value
    return out


def plan(experiments: list[str], a: argparse.Namespace, data_root: Path | None,
         sweep: dict[str, str], where: dict[str, set[str]]) -> list[tuple[str, list[Job]]]:
    """Every experiment's jobs, composed and validated before any runs: a bad ``--set``/``--sweep``
    value or ``--where`` key stops here with one line (exit 2), not after hours of other jobs.

    A config error shared by every job of an experiment comes from the command line and stops
    here too; one that only some sweep points hit (e.g. a split larger than a small net's layers)
    marks those jobs failed, and the others run.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from curvlab.config import parse_config
    from curvlab.report.views import VIEWS

    out, keys = [], set()
    for exp in experiments:
        if exp in VIEWS:
            out.append((exp, []))
            continue
        try:
            sized, seeds = scale_overrides(exp, a.scale, a)
            data = data_overrides(dataset_of(exp, a.set), data_root)
            jobs = expand(exp, [*data, *sized, *a.set], seeds, sweep)
            for job in jobs:
                try:
                    parse_config(job.cfg)
                except ValueError as e:
                    job.problem = " ".join(str(e).split())
            if jobs and all(j.problem for j in jobs):
                raise ValueError(jobs[0].problem)
        except (HydraException, OmegaConfBaseException, ValueError) as e:
            text = " ".join(str(e).split())
            if "Could not override" in text:  # the preset's default group lacks a key that a swept choice has
                text += ("; a key that only some swept choices have (e.g. solver.alpha of solver=kfi when the preset's "
                         "default solver is sgd): use ++KEY=VALUE (set where present, added elsewhere)")
            raise SystemExit(_fail(f"{exp}: {text} (from --set {' --set '.join(a.set) or '-'}"
                                   f"{''.join(f' --sweep {k}={v}' for k, v in sweep.items())})"))
        keys.update(k for j in jobs for k in j.point)
        # Seed-major: every curve's first seed before any curve's second, so a partial campaign is useful.
        out.append((exp, sorted((j for j in jobs if matches(j, where)), key=lambda j: seed_of(j))))
    unknown = sorted(set(where) - keys)
    if unknown and any(exp not in VIEWS for exp in experiments):
        raise SystemExit(_fail(f"--where {', '.join(unknown)}: not a sweep key of {', '.join(experiments)}; "
                               f"their keys: {', '.join(sorted(keys)) or 'none'}"))
    return out


def _fail(message: str) -> int:
    """Print one error line; the exit code of a bad command line."""
    print(f"reproduce: error: {message}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    from curvlab.report import positive_int as _positive  # sizes and counts: integers ≥ 1

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["tables", "figures"])
    p.add_argument("--scale", choices=["ci", "cpu", "full"], default="ci")
    p.add_argument("--force", action="store_true", help="rerun jobs and studies that already have results")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"),
                   help="folder with cifar10.npz (or cifar10_jpeg.npz), imagenette_32.npz, MNIST/raw or mnist.npz, "
                        "as `curvlab data prepare NAME --root DIR` writes them (default ../shared/data); "
                        "'none' keeps the presets' dataset settings")
    p.add_argument("--runs-dir", default=None,
                   help="where runs go (default results/runs; at ci scale the untracked runs/reproduce/ci)")
    p.add_argument("--out", default=None,
                   help="render tables and figures into this folder (default results/tables and results/figures; "
                        "at ci scale runs/reproduce/ci/{tables,figures})")
    p.add_argument("--only", action="append", default=None, help="only this experiment or study (repeatable)")
    p.add_argument("--steps", type=_positive, default=None, help="train.max_steps of every job (overrides the scale)")
    p.add_argument("--seeds", type=_positive, default=None, help="seeds per configuration (overrides the scale)")
    p.add_argument("--train-subset", type=_positive, default=None, help="first N training samples")
    p.add_argument("--test-subset", type=_positive, default=None, help="first N test samples")
    p.add_argument("--hessian-every", type=_positive, default=None,
                   help="tables: log the errors every N updates of the s (default: at each of them)")
    p.add_argument("--keep-batch", action="store_true", help="keep the presets' batch sizes at ci scale")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra Hydra override")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="replace one of the preset's sweep parameters, e.g. --sweep curvature=pch1")
    p.add_argument("--where", action="append", default=[], metavar="KEY=V1,V2",
                   help="run only the sweep points whose KEY is one of the values, e.g. --where solver=eacg,sgd")
    p.add_argument("--launcher", choices=LAUNCHERS, default=None,
                   help="the Hydra launcher of the jobs (configs/hydra/launcher/; default: Hydra's basic one, "
                        "one job after another in this process)")
    p.add_argument("--launcher-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the launcher, e.g. --launcher-set n_jobs=2 (hydra.launcher.n_jobs=2)")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch threads of each job (train.threads; default auto: all cores, or the launcher's share)")
    p.add_argument("--list", action="store_true", help="print the jobs and their state, run nothing")
    p.add_argument("--no-render", action="store_true", help="run only")
    p.add_argument("--render-only", action="store_true", help="render what results/runs holds; run nothing")
    a = p.parse_args(argv)

    data_root = None if a.data_root == "none" else Path(a.data_root).resolve()
    # ci scale never writes into results/: its runs and renders stay in the untracked runs/.
    ci_dir = ROOT / "runs" / "reproduce" / "ci"
    runs_dir = Path(a.runs_dir or (ci_dir if a.scale == "ci" else ROOT / "results" / "runs")).resolve()
    # Tables into <base>/tables, figures into <base>/figures; --out takes both.
    base = ci_dir if a.scale == "ci" else ROOT / "results"
    outs = {k: Path(a.out) for k in ("tables", "figures")} if a.out else {k: base / k for k in ("tables", "figures")}
    experiments = TABLES if a.kind == "tables" else FIGURES
    studies = STUDIES[a.kind]
    if a.only:
        unknown = set(a.only) - set(experiments) - set(studies)
        if unknown:
            raise SystemExit(f"reproduce {a.kind}: unknown --only {sorted(unknown)}; "
                             f"allowed: {', '.join([*experiments, *studies])}")
        experiments = [e for e in a.only if e in experiments]  # in the order given: most valuable first
        studies = {k: v for k, v in studies.items() if k in a.only}
    _pairs(p, "--set", a.set, "solver.lr=0.05")
    sweep = _pairs(p, "--sweep", a.sweep, "curvature=pch1")
    where = {k: set(v.split(",")) for k, v in _pairs(p, "--where", a.where, "solver=eacg,sgd").items()}
    launcher_set = _pairs(p, "--launcher-set", a.launcher_set, "n_jobs=2")
    train_args = ["log.progress=false", *(["resume=false"] if a.force else []),
                  *([f"train.threads={a.threads}"] if a.threads else []),
                  *([f"hydra/launcher={a.launcher}"] if a.launcher else []),
                  *(f"hydra.launcher.{k}={v}" for k, v in launcher_set.items())]

    from curvlab.report.views import VIEWS

    pin_configs()
    t0, failed, todo = time.perf_counter(), 0, []
    for exp, jobs in [] if a.render_only else plan(experiments, a, data_root, sweep, where):
        if exp in VIEWS:  # Figures 9–12 draw their companion figure's runs (its sweep has PCH-2)
            print(f"== {exp}: no jobs of its own, drawn from the runs of {VIEWS[exp].source}", flush=True)
            continue
        print(f"== {exp}: {len(jobs)} job(s)", flush=True)
        for job in jobs:
            job.folder = job.dir_in(runs_dir / exp)
            run_dir = runs_dir / exp / job.folder
            status = (f"failed: invalid config: {job.problem}" if job.problem
                      else job_state(run_dir) if a.list else skip_reason(run_dir, a.force))
            if status is None:
                todo.append(job)
                status = "to run" if read_summary(run_dir) is None else f"to resume ({job_state(run_dir)})"
            failed += status.startswith("failed")
            print(f"   {run_dir.name}: {status}", flush=True)
    if todo and not a.list:
        print(f"== launching {len(todo)} job(s) on {a.launcher or 'basic'}", flush=True)
        code = launch(todo, runs_dir, train_args)
        if code == 2:  # a config error of the launcher settings: nothing ran
            return _fail(f"curvlab train refused the launch (see its error above); --launcher {a.launcher or '-'} "
                         f"--launcher-set {' '.join(a.launcher_set) or '-'}")
        for job in todo:
            status = outcome(runs_dir / job.experiment / job.folder)  # type: ignore[operator]
            failed += status.startswith("failed")
            print(f"   {job.experiment}/{job.folder}: {status}", flush=True)
    if a.list:
        return 0
    for name, (script, args) in {} if a.render_only else studies.items():
        status = run_study(name, script, args.get(a.scale, args["full"]), runs_dir / "studies" / name, a.force)
        failed += status.startswith("failed")
        print(f"== study {name}: {status}", flush=True)
    print(f"ran in {time.perf_counter() - t0:.0f} s; {failed} failure(s)", flush=True)

    if not a.no_render:
        from curvlab.report import report

        sources = {VIEWS[e].source if e in VIEWS else e for e in experiments}
        roots = [runs_dir / e for e in sorted(sources) if (runs_dir / e).is_dir()]
        roots += [runs_dir / "studies" / n for n in studies if (runs_dir / "studies" / n).is_dir()]
        for kind, out in outs.items():
            try:
                files = report(roots, out, want={kind}) if roots else []
            except (ValueError, OSError) as e:  # --out a file, a link under an output's name, a full disk
                return _fail(f"rendering {kind} into {out}: {e}")
            print(f"rendered {len(files)} {kind} file(s) into {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
