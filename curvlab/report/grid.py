"""Grid searches of any size: the best point per method, a heat map per method, the grid as a table.

A Hydra multirun (``-m solver.lr=0.05,0.1 solver.alpha=0.01,0.02``) or a grid preset
(``eacg_grid_reduced``; ``eacg_grid_search``: 576 points, Chen et al. "Experimental Evaluation")
gives one curve per point, labelled ``EA-CG · PCH-1 · alpha=0.01 lr=0.05``. Where a method's runs
differ in numeric config fields (the swept fields), this module finds its :class:`Search`:

- the best point (lowest final training loss, mean over its seeds; ties: higher test accuracy) —
  one row per method in the best-point table, and the only curve of the method that the training
  figure draws once a search has more points than a figure can tell apart;
- with two or more swept fields, the grid over the two with the most values (ties: by name): a
  table ``rows × columns`` and a heat map of final train loss and test accuracy. With more than
  two fields, each cell is the best point over the other fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from curvlab.report.figures import caption, suptitle
from curvlab.report.groups import SETTING, computing_columns, method_label
from curvlab.report.styles import MAX_CURVES, natural_key
from curvlab.report.tables import per_run_stats

__all__ = ["Search", "grid_axes", "searches", "grid_tables", "best_table", "best_labels", "heatmap_figure",
           "ANNOTATE_MAX"]

ANNOTATE_MAX = 100  # heat maps write each cell's value up to this many cells


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


def short(field: str) -> str:
    """``cfg.solver.lr`` → ``lr``."""
    return field.rsplit(".", 1)[-1]


@dataclass
class Search:
    """One method's search: its swept ``axes`` (most values first) and one row per point.

    ``points``: index = curve label; columns = the axes' values, ``train_loss``, ``test_acc`` (%),
    each the mean over the point's ``seeds``.
    """

    method: str
    axes: list[str]
    points: pd.DataFrame

    def best(self) -> str:
        """The label of the best point: lowest mean final train loss, then highest test accuracy."""
        p = self.points.assign(_acc=-self.points["test_acc"].fillna(-np.inf))
        p = p[p["train_loss"].notna()] if p["train_loss"].notna().any() else p
        return str(p.sort_values(["train_loss", "_acc"], kind="stable").index[0])

    def values_of(self, label: str) -> str:
        """``alpha=0.01 lr=0.1``: a point's swept values."""
        return " ".join(f"{short(a)}={self.points.loc[label, a]:g}" for a in sorted(self.axes, key=short))

    def grid(self) -> tuple[str, str, pd.DataFrame] | None:
        """(row field, column field, best point label per cell) over the first two axes; None below two."""
        if len(self.axes) < 2:
            return None
        rows, cols = self.axes[:2]
        p = self.points.assign(_acc=-self.points["test_acc"].fillna(-np.inf), _label=self.points.index)
        p = p.sort_values(["train_loss", "_acc"], kind="stable", na_position="last")
        cell = p.groupby([rows, cols])["_label"].first().unstack(cols)  # the best over the other fields
        return rows, cols, cell.sort_index().sort_index(axis=1)


def searches(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> list[Search]:
    """The methods of ``runs`` (kept runs of one setting, with ``label``) swept over ≥ 1 numeric field."""
    if not len(runs):
        return []
    stats = per_run_stats(runs, metrics)
    methods = runs.apply(method_label, axis=1).to_numpy()
    out = []
    for method in sorted(set(methods), key=natural_key):
        part = runs[methods == method]
        axes = grid_axes(part)
        if not axes:
            continue
        values = {a: pd.to_numeric(part[a]) for a in axes}
        axes = sorted(axes, key=lambda a: (-values[a].nunique(), a))
        s = stats.loc[part["run_dir"]].assign(label=part["label"].to_numpy(),
                                              **{a: values[a].to_numpy() for a in axes})
        points = s.groupby("label").agg(**{a: (a, "first") for a in axes}, train_loss=("train_loss", "mean"),
                                        test_acc=("test_acc", "mean"), seeds=("train_loss", "size"))
        out.append(Search(str(method), axes, points.loc[sorted(points.index, key=natural_key)]))
    return out


def grid_tables(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Per method swept over two or more fields, the grid ``rows × columns`` of final metrics.

    The rows are the field with more values (ties: the first by name). A cell is
    ``train loss / test acc (%)``, each the mean over the point's seeds (with more than two swept
    fields: of the best point over the other fields), and ``-`` where the point has no run.
    Methods swept over one field give no grid: their curve table already lists them.

    Args:
        runs: the kept runs of one setting (``Grouping.runs``: with ``label``, ``seed``, ``cfg.*``).
        metrics: their ``metrics.csv`` rows (for :func:`curvlab.report.tables.per_run_stats`).

    Returns:
        ``{method label: table}``; the table's index and columns are named ``key=value``
        with the fields' last dotted component (``lr=0.1``, ``alpha=0.02``).
    """
    out: dict[str, pd.DataFrame] = {}
    for s in searches(runs, metrics):
        g = s.grid()
        if g is None:
            continue
        rows, cols, cell = g
        tab = pd.DataFrame("-", index=cell.index, columns=cell.columns, dtype=object)
        for r in cell.index:
            for c in cell.columns:
                lab = cell.loc[r, c]
                if isinstance(lab, str):
                    tab.loc[r, c] = f"{s.points.loc[lab, 'train_loss']:.4g} / {s.points.loc[lab, 'test_acc']:.1f}"
        tab.index = [f"{short(rows)}={v:g}" for v in tab.index]
        tab.columns = [f"{short(cols)}={v:g}" for v in tab.columns]
        tab.index.name = f"{short(rows)} \\ {short(cols)}"
        out[s.method] = tab
    return out


def best_table(found: list[Search]) -> pd.DataFrame:
    """One row per searched method: its best point's swept values, final train loss, test accuracy, seeds."""
    rows = []
    for s in found:
        b = s.best()
        rows.append({"method": s.method, "best point": s.values_of(b), "train loss": s.points.loc[b, "train_loss"],
                     "test acc (%)": s.points.loc[b, "test_acc"], "seeds": int(s.points.loc[b, "seeds"]),
                     "points searched": len(s.points), "swept": ", ".join(short(a) for a in s.axes)})
    return pd.DataFrame(rows).set_index("method")


def best_labels(found: list[Search], max_curves: int = MAX_CURVES) -> dict[str, str]:
    """Curves the training figure leaves out → why: every point but the best of a search with more than
    ``max_curves`` points (a figure cannot tell them apart; the heat map shows them all)."""
    drop: dict[str, str] = {}
    for s in found:
        if len(s.points) > max_curves:
            best = s.best()
            drop.update({lab: best for lab in s.points.index if lab != best})
    return drop


def heatmap_figure(s: Search, title: str) -> Figure:
    """Final train loss (left) and test accuracy (right) over the search's two first swept fields.

    ``imshow`` cells in the fields' value order, value written in each cell up to
    :data:`ANNOTATE_MAX` cells, the best point outlined, a colour bar per panel.
    """
    g = s.grid()
    if g is None:
        raise ValueError(f"heatmap_figure: {s.method} is swept over {len(s.axes)} field(s); a heat map needs two")
    rows, cols, cell = g
    n_r, n_c = cell.shape
    side = min(0.42 * max(n_r, n_c), 8.0) + 1.5
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 2.5, side + 1.6), layout="constrained")
    best = s.best()
    small = cell.size <= ANNOTATE_MAX
    for ax, (col, name, cmap) in zip(axes, [("train_loss", "final train loss", "viridis_r"),
                                            ("test_acc", "test accuracy (%)", "viridis")]):
        vals = np.array([[s.points.loc[lab, col] if isinstance(lab, str) else np.nan for lab in row]
                         for row in cell.to_numpy(object)], dtype=float)
        im = ax.imshow(vals, cmap=cmap, aspect="auto", origin="lower")
        fig.colorbar(im, ax=ax, label=name, shrink=0.9)
        ax.set_xticks(range(n_c), [f"{v:g}" for v in cell.columns], rotation=90 if n_c > 8 else 0,
                      fontsize=8 if small else 6)
        ax.set_yticks(range(n_r), [f"{v:g}" for v in cell.index], fontsize=8 if small else 6)
        ax.set_xlabel(short(cols))
        ax.set_ylabel(short(rows))
        ax.set_title(name, fontsize=10)
        if small:
            mid = np.nanmean(vals) if np.isfinite(vals).any() else 0.0
            for i in range(n_r):
                for j in range(n_c):
                    if np.isfinite(vals[i, j]):
                        ax.text(j, i, f"{vals[i, j]:.3g}", ha="center", va="center", fontsize=7,
                                color="white" if (vals[i, j] > mid) == (cmap == "viridis_r") else "black")
        where = np.argwhere(cell.to_numpy(object) == best)
        for i, j in where:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    others = [short(a) for a in s.axes[2:]]
    caption(fig, f"{s.method}: {len(s.points)} points swept over {', '.join(short(a) for a in s.axes)}; "
            f"each cell the mean over a point's seeds" + (f", the best point (lowest train loss) over "
                                                           f"{', '.join(others)}" if others else "")
            + f". Outlined in red: the best point ({s.values_of(best)}). Empty: no run.")
    suptitle(fig, title)
    return fig
