"""Quiet-machine time: the wall-clock axis rebuilt from per-update costs measured on a quiet machine.

The campaign ran two jobs at a time, niced, on a shared 2-core machine, and some runs used
older, slower code. So the solver time the runs measured (``metrics.csv`` ``wall_time``)
includes contention. The Table 1 study (``scripts/study_table1.py``, study
``table1_measured``) measures every method's update alone on the machine, on the figures'
CIFAR-10 net and batch size. Its ``data.csv`` gives each method a cost c0 per update
(``step_seconds_base``) and, for EA-CG, c1 per CG iteration (``seconds_per_cg_iter``). The
batched CG runs until its slowest system stops, so an EA-CG update costs
c0 + c1 · ``cg_iters``, the largest iteration count of any system, which ``metrics.csv``
logs for each update. A run's quiet-machine time after update k is

    T_k = Σ_{j ≤ k} (c0 + c1 · cg_iters_j)

(c1 = 0 for methods without CG). If ``metrics.csv`` skips updates, a logged row counts for
every update since the previous row; a row without ``cg_iters`` takes the next logged count
(a run that logged none pays c0 per update). Costs apply only to runs with the study's net widths and
batch size. The loss (cross-entropy or Eq. 14) and the dataset (CIFAR-10 or Imagenette 32 px,
both 3072 inputs) barely change an update's cost, so they are not matched. Runs of a method
the study did not measure keep their measured solver time, and the footnote names them.

Where the study comes from (:func:`find_step_costs`): the folder given to ``curvlab report
--step-costs``; else a ``table1_measured`` study among the folders being rendered; else
``studies/table1_measured`` next to a rendered experiment folder (the ``results/runs``
layout: ``results/runs/eacg_fig1_3`` finds ``results/runs/studies/table1_measured``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from curvlab.report.files import BadFile, load_json
from curvlab.report.load import Runs, Study, find_studies, load_study, say_skipped

__all__ = ["StepCosts", "TimeAxis", "method_key", "run_method_key", "find_step_costs", "load_step_costs",
           "with_quiet_time", "time_axis", "STUDY"]

STUDY = "table1_measured"


def method_key(solver: str, kind: str | None = None, *, split: int = 1, rank_one_first_layer: bool = False,
               jacobian_average: str = "per_sample", weight_factor: str = "rank_one", update_every: int = 1,
               fisher: str = "mc", mc_samples: int = 1) -> str:
    """The study's name for a method: what sets an update's cost, and nothing else.

    ``sgd`` (any momentum: one extra vector update), ``<kind>/<solver>`` for the curvature
    solvers, plus ``+`` options that change the cost: ``+rank1`` (KFI with Eq. 13 on layer 1),
    ``+meanJ`` (HBP Eq. 7a mean Jacobians), ``+fullE`` (E[hhᵀ] weight factor), ``+split<k>``,
    ``+every<n>`` (KFI factor refresh), ``+mc<m>``/``+<fisher type>`` (Fisher sampling).

    >>> method_key("eacg", "pch1"), method_key("kfi", "gn", rank_one_first_layer=True)
    ('pch1/eacg', 'gn/kfi+rank1')
    >>> method_key("eacg", "pch", jacobian_average="mean", split=4)
    'pch1/eacg+meanJ+split4'
    """
    if kind is None:
        return solver
    kind = "pch1" if kind == "pch" else kind
    opts = ["rank1"] if rank_one_first_layer else []
    opts += ["meanJ"] if jacobian_average == "mean" else []
    opts += ["fullE"] if weight_factor == "full" else []
    opts += [f"split{split}"] if split > 1 else []
    opts += [f"every{update_every}"] if update_every > 1 else []
    if kind == "fisher":
        opts += ([fisher] if fisher != "mc" else []) + ([f"mc{mc_samples}"] if mc_samples > 1 else [])
    return f"{kind}/{solver}" + "".join(f"+{o}" for o in opts)


def _cfg(row: pd.Series, key: str, default: Any) -> Any:
    v = row.get(f"cfg.{key}")
    return default if v is None or (isinstance(v, float) and np.isnan(v)) else v


def run_method_key(row: pd.Series) -> str | None:
    """:func:`method_key` of a run (a row of ``Runs.runs``); None for CR and the exact inverse (not modelled)."""
    solver = str(_cfg(row, "solver.name", row.get("solver")))
    if solver in ("cr", "exact_inverse"):
        return None
    if solver not in ("eacg", "kfi"):
        return solver
    truth = str(_cfg(row, "solver.rank_one_first_layer", False)) == "True"
    return method_key(solver, str(_cfg(row, "curvature.kind", row.get("curvature"))),
                      split=int(float(_cfg(row, "solver.split", 1))), rank_one_first_layer=truth,
                      jacobian_average=str(_cfg(row, "curvature.jacobian_average", "per_sample")),
                      weight_factor=str(_cfg(row, "curvature.weight_factor", "rank_one")),
                      update_every=int(float(_cfg(row, "solver.update_every", 1))),
                      fisher=str(_cfg(row, "curvature.fisher", "mc")),
                      mc_samples=int(float(_cfg(row, "curvature.mc_samples", 1))))


@dataclass
class StepCosts:
    """Per-update costs of the quiet study: ``costs[method] = (c0, c1)`` in seconds, for one net and batch."""

    costs: dict[str, tuple[float, float]]
    widths: list[int]
    batch: int
    machine: str
    path: Path

    def for_run(self, row: pd.Series) -> tuple[float, float] | None:
        """(c0, c1) of a run's method, or None when the study has none for its method, net or batch."""
        widths = str(row.get("cfg.net.widths"))
        batch = pd.to_numeric(pd.Series([row.get("cfg.train.batch_size")]), errors="coerce").iloc[0]
        if widths != str(self.widths) or batch != self.batch or str(_cfg(row, "dtype", "float32")) != "float32":
            return None
        return self.costs.get(run_method_key(row) or "")


def load_step_costs(study: Study) -> StepCosts:
    """The costs of a ``table1_measured`` study; methods without a fitted CG cost (older studies) are left out."""
    d = study.data
    base = d["step_seconds_base"] if "step_seconds_base" in d else d["step_seconds"].where(d["cg_iters"].isna())
    per_iter = d["seconds_per_cg_iter"] if "seconds_per_cg_iter" in d else pd.Series(0.0, index=d.index)
    costs = {str(m): (float(c0), float(c1) if pd.notna(c1) else 0.0)
             for m, c0, c1 in zip(d["method"], base, per_iter) if pd.notna(c0)}
    meta = study.meta
    threads = f", {meta['threads']} thread(s)" if meta.get("threads") else ""
    return StepCosts(costs, [int(w) for w in meta["widths"]], int(meta["batch"]),
                     f"{meta.get('machine', '?')}, {meta.get('device', 'cpu')}{threads}", study.path)


def find_step_costs(roots: Iterable[str | Path], explicit: str | Path | None = None) -> StepCosts | None:
    """The quiet study's costs: ``explicit``, else a ``table1_measured`` study under ``roots``, else one in
    ``studies/table1_measured`` next to a root (see the module docstring); None when there is none."""
    if explicit is not None:
        try:
            if _study_of(Path(explicit)) != STUDY:
                raise ValueError(f"not a {STUDY} study folder (no study.json of it there)")
            return _costs_of(Path(explicit))
        except (BadFile, ValueError) as e:
            raise ValueError(f"--step-costs {explicit}: {e}; pass the folder scripts/study_table1.py writes, "
                             f"e.g. results/runs/studies/{STUDY}") from None
    roots = [Path(r) for r in roots]
    candidates = [*find_studies(roots), *(r.resolve().parent / "studies" / STUDY for r in roots)]
    for path in candidates:
        try:
            if _study_of(path) == STUDY:
                return _costs_of(path)
        except BadFile as e:  # a broken quiet study: the runs keep their measured time
            say_skipped(e)
    return None


def _study_of(folder: Path) -> str | None:
    """The ``study`` named by ``folder/study.json`` (None without one)."""
    meta = folder / "study.json"
    return load_json(meta).get("study") if meta.exists() else None


def _costs_of(folder: Path) -> StepCosts:
    """:func:`load_step_costs` of a study folder; BadFile naming its files when they lack what the costs need."""
    try:
        return load_step_costs(load_study(folder))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, BadFile):
            raise
        raise BadFile(folder / "study.json", f"its costs are incomplete or mistyped ({type(e).__name__}: "
                      f"{str(e)[:80]})") from None


def with_quiet_time(r: Runs, costs: StepCosts | None) -> Runs:
    """``r`` with ``quiet_time`` (seconds) in ``metrics`` (per row) and ``runs`` (final); NaN without a cost."""
    metrics = r.metrics.assign(quiet_time=np.nan)
    runs = r.runs.assign(quiet_time=np.nan)
    if costs is None or runs.empty:
        return Runs(runs, metrics, r.errors)
    for i, row in runs.iterrows():
        cost = costs.for_run(row)
        if cost is None:
            continue
        m = metrics[metrics["run_dir"] == row["run_dir"]].sort_values("step")
        if m.empty:
            continue
        step = pd.to_numeric(m["step"], errors="coerce")
        updates = step.diff().fillna(step).clip(lower=0)  # updates since the previous row (step 0: none)
        iters = pd.to_numeric(m["cg_iters"], errors="coerce") if "cg_iters" in m else pd.Series(np.nan, m.index)
        iters = iters.bfill().ffill().fillna(0.0)  # evaluation-only rows: the next update's count
        quiet = (updates * (cost[0] + cost[1] * iters)).cumsum()
        metrics.loc[m.index, "quiet_time"] = quiet
        runs.loc[i, "quiet_time"] = float(quiet.iloc[-1])
    return Runs(runs, metrics, r.errors)


@dataclass
class TimeAxis:
    """What the wall-clock panels draw: ``column`` of ``metrics``, its axis ``name`` and the footnote."""

    metrics: pd.DataFrame
    column: str
    name: str
    note: str | None
    measured: list[str]  # curves drawn against their measured time where others use the quiet model


def time_axis(metrics: pd.DataFrame, costs: StepCosts | None, wall_note: str | None,
              group: str = "label") -> TimeAxis:
    """The time axis of one figure: quiet-machine time where every curve has a cost, measured solver
    time where none has, and each curve its own where they mix (the footnote lists the measured ones)."""
    has = metrics.groupby(group)["quiet_time"].apply(lambda v: bool(v.notna().any())) \
        if "quiet_time" in metrics and len(metrics) else pd.Series(dtype=bool)
    if costs is None or not has.any():
        return TimeAxis(metrics, "wall_time", "solver wall-clock time", wall_note, [])
    measured = sorted(str(k) for k in has.index[~has])
    note = None if wall_note is None else (
        "Quiet-machine time: Σ over a run's updates of its method's per-update cost (EA-CG: c0 + c1·CG iterations "
        f"of the update) from the quiet Table 1 study on {costs.machine}, batch {costs.batch}; not the runs' own "
        "solver times, which include contention (runs shared the machine)."
        + (f" *Measured (contended) solver time, no quiet cost: {', '.join(measured)}." if measured else ""))
    if not measured:
        return TimeAxis(metrics, "quiet_time", "quiet-machine time", note, [])
    mixed = metrics.assign(time=metrics["quiet_time"].fillna(pd.to_numeric(metrics["wall_time"], errors="coerce")))
    return TimeAxis(mixed, "time", "quiet-machine time / *measured", note, measured)
