"""Figures drawn from another experiment's runs.

Chen et al. draw PCH-1 only in Figures 1–8 ("PCH-1 and PCH-2 produced the similar results") and
compare PCH-1 with PCH-2 in Figures 9–12, on the same settings. The presets of Figures 1–8 sweep
PCH-2 as well, so Figures 9–12 need no runs of their own: each is the PCH-1/PCH-2 × {EA-CG, KFI}
selection of its companion figure's runs, rendered under its own name. A figure-9 preset run of
its own (``experiment=eacg_fig9``) still renders as itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from curvlab.report.load import Runs

__all__ = ["View", "VIEWS", "select_view"]


@dataclass(frozen=True)
class View:
    source: str  # the experiment whose runs are drawn
    curvatures: tuple[str, ...]
    solvers: tuple[str, ...]


_PCH = View("", ("pch1", "pch2"), ("eacg", "kfi"))
VIEWS: dict[str, View] = {
    "eacg_fig9": View("eacg_fig1_3", _PCH.curvatures, _PCH.solvers),  # CIFAR-10, cross-entropy
    "eacg_fig10": View("eacg_fig2_4", _PCH.curvatures, _PCH.solvers),  # ImageNet-10, cross-entropy
    "eacg_fig11": View("eacg_fig5_7", _PCH.curvatures, _PCH.solvers),  # CIFAR-10, Eq. (14)
    "eacg_fig12": View("eacg_fig6_8", _PCH.curvatures, _PCH.solvers),  # ImageNet-10, Eq. (14)
}


def select_view(runs: Runs, view: View) -> Runs:
    """The runs of ``view.source`` with one of the view's curvatures and solvers (KFI without Eq. (13))."""
    src = runs.select(view.source)
    r = src.runs
    if not len(r):
        return src
    rank_one = r.get("cfg.solver.rank_one_first_layer")
    plain = ~rank_one.fillna(False).astype(bool) if rank_one is not None else True
    kind, solver = (r.get(c, pd.Series(None, index=r.index)) for c in ("cfg.curvature.kind", "cfg.solver.name"))
    keep = set(r.loc[kind.isin(view.curvatures) & solver.isin(view.solvers) & plain, "run_dir"])  # no config: none
    pick = lambda df: df[df["run_dir"].isin(keep)].reset_index(drop=True)  # noqa: E731
    return Runs(pick(src.runs), pick(src.metrics), pick(src.errors))
