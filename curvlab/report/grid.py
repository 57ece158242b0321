"""A grid search drawn as a grid: one method's final metrics over two swept hyperparameters.

A Hydra multirun (``-m solver.lr=0.05,0.1 solver.alpha=0.01,0.02``) or a grid preset
(``eacg_grid_reduced``, Chen et al. "Experimental Evaluation") gives one curve per point,
labelled ``EA-CG · PCH-1 · alpha=0.01 lr=0.05``; the curve tables list them one per row. Where
the runs of one method differ in exactly two numeric config fields, this module lays their
final training loss and test accuracy out as a table of one field (rows: the one with more
values) against the other (columns), so the best point and the trend along each axis read at
a glance.
"""

from __future__ import annotations

import pandas as pd

from curvlab.report.groups import SETTING, computing_columns, method_label
from curvlab.report.tables import per_run_stats

__all__ = ["grid_axes", "grid_tables"]


def _numeric_varying(runs: pd.DataFrame, cols: list[str]) -> list[str]:
    """The columns of ``cols`` that are numeric in every run and take ≥ 2 values."""
    out = []
    for c in cols:
        v = pd.to_numeric(runs[c], errors="coerce")
        if v.notna().all() and v.nunique() > 1:
            out.append(c)
    return out


def grid_axes(runs: pd.DataFrame) -> list[str]:
    """The swept fields of one method's runs: numeric config fields (not the setting's) that differ.

    Args:
        runs: runs of one method and setting, with ``cfg.*`` columns (``Runs.runs``).
    """
    cols = [c for c in computing_columns(runs) if not c.startswith(SETTING)]
    return _numeric_varying(runs, cols)


def grid_tables(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Per method swept over exactly two fields, the grid ``rows × columns`` of final metrics.

    The rows are the field with more values (ties: the first by name). A cell is
    ``train loss / test acc (%)``, each the mean over the point's seeds, and ``-`` where the
    point has no run. Methods swept over one field, or more than two, give no grid: their
    curve table already lists them, and a 3-D grid has no flat layout that reads better.

    Args:
        runs: the kept runs of one setting (``Grouping.runs``: with ``label``, ``seed``, ``cfg.*``).
        metrics: their ``metrics.csv`` rows (for :func:`curvlab.report.tables.per_run_stats`).

    Returns:
        ``{method label: table}``; the table's index and columns are named ``key=value``
        with the fields' last dotted component (``lr=0.1``, ``alpha=0.02``).
    """
    stats = per_run_stats(runs, metrics)
    out: dict[str, pd.DataFrame] = {}
    methods = runs.apply(method_label, axis=1) if len(runs) else pd.Series(dtype=str)
    for method, part in runs.groupby(methods.to_numpy(), sort=True):
        axes = grid_axes(part)
        if len(axes) != 2:
            continue
        values = {a: pd.to_numeric(part[a]) for a in axes}
        rows, cols = sorted(axes, key=lambda a: (-values[a].nunique(), a))
        s = stats.loc[part["run_dir"]].assign(r=values[rows].to_numpy(), c=values[cols].to_numpy())
        mean = s.groupby(["r", "c"])[["train_loss", "test_acc"]].mean()
        short = lambda a: a.rsplit(".", 1)[-1]  # noqa: E731
        tab = pd.DataFrame("-", index=sorted(s["r"].unique()), columns=sorted(s["c"].unique()), dtype=object)
        for (r, c), m in mean.iterrows():
            tab.loc[r, c] = f"{m['train_loss']:.4g} / {m['test_acc']:.1f}"
        tab.index = [f"{short(rows)}={v:g}" for v in tab.index]
        tab.columns = [f"{short(cols)}={v:g}" for v in tab.columns]
        tab.index.name = f"{short(rows)} \\ {short(cols)}"
        out[str(method)] = tab
    return out
