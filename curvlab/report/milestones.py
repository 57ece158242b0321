"""Each curve at fixed points of its run, and when it leaves the initial plateau: the record's verdict tables.

- ``{name}_milestones``: per curve and milestone update (the evaluated updates nearest to 10 %, 25 %, 50 %
  and 100 % of the longest run), the full-set training loss, test loss and test accuracy, mean ± std over
  the seeds evaluated there;
- ``{name}_plateau``: per curve, the update at which each seed leaves the initial plateau (its first
  evaluation with a training loss below :data:`PLATEAU`), its best test accuracy and its lowest test loss,
  with the updates where each seed reached them (how early a method overfits).

The thresholds (:func:`plateau_threshold`) are the record's: 2.25 for cross-entropy with 10 classes (ln 10 =
2.30 at the start; the same fraction of ln C for C classes) and 0.60 for Chen et al.'s non-convex Eq. (14), whose
plateau lies at 0.615.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from curvlab.report.styles import natural_key
from curvlab.report.tables import mean_pm

__all__ = ["FRACTIONS", "milestone_steps", "milestone_table", "plateau_exit", "plateau_table", "plateau_threshold"]

FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def _evaluated(metrics: pd.DataFrame) -> pd.DataFrame:
    """The evaluation rows (numeric ``train_loss``), one per run and update (the last where an update was
    evaluated twice), with ``test_acc`` in %."""
    m = metrics.assign(**{c: pd.to_numeric(metrics[c], errors="coerce")
                          for c in ("train_loss", "test_loss", "test_acc") if c in metrics})
    m = m[m["train_loss"].notna()]
    m = m.groupby(["run_dir", "step"], as_index=False, sort=True).last()
    return m.assign(test_acc=m["test_acc"] * 100) if "test_acc" in m else m


def milestone_steps(steps: Iterable[int], fractions: tuple[float, ...] = FRACTIONS) -> list[int]:
    """The evaluated updates nearest to each fraction of the last one (ascending, without repeats)."""
    s = np.unique(np.asarray(list(steps), dtype=np.int64))
    if s.size == 0:
        return []
    return sorted({int(s[np.abs(s - f * s[-1]).argmin()]) for f in fractions})


def plateau_threshold(loss: str, classes: int = 10) -> float | None:
    """The full-set training loss below which a run has left the initial plateau; None: no threshold for ``loss``."""
    if loss == "cross_entropy":
        return 2.25 * (math.log(classes) / math.log(10))  # exactly 2.25 at 10 classes
    return 0.60 if loss == "nonconvex" else None


def plateau_exit(run: pd.DataFrame, threshold: float) -> int | None:
    """The first evaluated update of one run whose training loss is below ``threshold``; None: never."""
    below = run.loc[pd.to_numeric(run["train_loss"], errors="coerce") < threshold, "step"]
    return int(below.min()) if len(below) else None


def milestone_table(metrics: pd.DataFrame, group: str = "label") -> pd.DataFrame:
    """Rows: each curve at each milestone update (:func:`milestone_steps` of every evaluated update); columns
    ``update, epoch, seeds, train loss, test loss, test acc (%)`` (mean ± std over the seeds evaluated there)."""
    ev = _evaluated(metrics)
    steps = milestone_steps(ev["step"])
    rows = []
    for label, g in sorted(ev.groupby(group), key=lambda kv: natural_key(kv[0])):
        for step in steps:
            at = g[g["step"] == step]
            if at.empty:
                continue
            rows.append({group: label, "update": step,
                         "epoch": float(at["epoch"].mean()) if "epoch" in at else np.nan,
                         "seeds": int(at["run_dir"].nunique()), "train loss": mean_pm(at["train_loss"]),
                         "test loss": mean_pm(at["test_loss"].dropna()) if "test_loss" in at else "-",
                         "test acc (%)": mean_pm(at["test_acc"].dropna()) if "test_acc" in at else "-"})
    return pd.DataFrame(rows).set_index(group) if rows else pd.DataFrame()


def _per_seed(values: list[int | None]) -> str:
    return ", ".join("never" if v is None else f"{v:,}" for v in values)


def plateau_table(metrics: pd.DataFrame, classes: Mapping[str, int] | None = None,
                  group: str = "label") -> pd.DataFrame:
    """Per curve: seeds, the update at which each seed leaves the plateau (:func:`plateau_threshold`; ``never``
    where it does not, ``-`` for a loss without a threshold), the best test accuracy and the lowest test loss (mean
    ± std over seeds) with the update where each seed reached it. Seeds in ascending order.

    Args:
        classes: the number of classes of each run (by ``run_dir``); 10 where not given.
    """
    ev = _evaluated(metrics)
    rows = []
    for label, g in sorted(ev.groupby(group), key=lambda kv: natural_key(kv[0])):
        runs = [r for _, r in g.groupby("run_dir")]
        runs.sort(key=lambda r: (pd.to_numeric(r["seed"], errors="coerce").iloc[0] if "seed" in r else 0,
                                 str(r["run_dir"].iloc[0])))
        thresholds = [plateau_threshold(str(r["loss"].iloc[0]) if "loss" in r else "",
                                        (classes or {}).get(r["run_dir"].iloc[0], 10)) for r in runs]
        exits = [None if t is None else plateau_exit(r, t) for r, t in zip(runs, thresholds)]
        row: dict[str, object] = {group: label, "seeds": len(runs), "leaves the plateau at":
                                  "-" if None in thresholds else _per_seed(exits)}
        for col, name, pick in (("test_acc", "best test acc (%)", "idxmax"), ("test_loss", "lowest test loss",
                                                                                "idxmin")):
            best = [r.loc[getattr(r[col], pick)()] for r in runs if col in r and r[col].notna().any()]
            row[name] = mean_pm(pd.Series([b[col] for b in best], dtype=float))
            row[f"{name.split(' (')[0]} at"] = _per_seed([int(b["step"]) for b in best])
        rows.append(row)
    return pd.DataFrame(rows).set_index(group) if rows else pd.DataFrame()
