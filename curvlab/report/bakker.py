"""Two claims of Bakker et al. (2018) read off recorded files: CR's cost against depth, and CR's step rebounds.

- ``cr_depth`` study (``scripts/study_cr_depth.py``), Section 4: "the number of matrix
  multiplications ... scales quadratically with the number of layers". :func:`depth_table` gives
  the median time per update of each method at each depth, its ratio to the gradient step, and
  the exponent k of time ∝ depth^k fitted on log-log axes (:func:`render_cr_depth` adds the figure).
- CR runs (``metrics.csv``: ``step_size`` = α and ``lr`` per update), Section 4 on Fig. 5 (Adadelta):
  "the learning rate calculated by CR dropped steadily as the algorithm exited the plateau, but it
  jumped again around iteration 1200". :func:`cr_rebound_table` finds, per run, the exit from the
  plateau, the lowest period-100 moving average of α/lr after it, and the highest one after that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from curvlab.report import figures as F
from curvlab.report.load import Study
from curvlab.report.tables import write_table

__all__ = ["depth_table", "time_column", "render_cr_depth", "cr_rebound_table"]


def time_column(data: pd.DataFrame) -> str:
    """``cpu_seconds`` (the process's CPU time, which a shared machine does not inflate) when recorded,
    else ``seconds``."""
    return "cpu_seconds" if "cpu_seconds" in data and data["cpu_seconds"].notna().any() else "seconds"


def depth_table(data: pd.DataFrame) -> pd.DataFrame:
    """Median seconds per update per depth (rows) and method (columns), the ratio to ``gradient step``,
    and two last rows: the exponent k of time ∝ depth^k (least-squares slope of log median time against
    log depth) over all depths and over the deeper half. Times are :func:`time_column`'s."""
    med = data.groupby(["value", "method"])[time_column(data)].median().unstack("method")  # (depths, methods)
    med.index = [f"depth {int(v)}" for v in med.index]
    depths = data.groupby("value").size().index.to_numpy(float)
    out = med.copy()
    if "gradient step" in med:
        for m in med.columns.drop("gradient step"):
            out[f"{m} / gradient step"] = med[m] / med["gradient step"]
    out.loc["exponent k (time ∝ depth^k)"] = [F.fit_loglog_slope(depths, out[c].to_numpy(float)) for c in out.columns]
    deep = depths >= depths[len(depths) // 2]  # the deeper half: where the per-layer work outweighs fixed costs
    out.loc[f"exponent k, depth ≥ {int(depths[deep][0])}"] = [
        F.fit_loglog_slope(depths[deep], out[c].iloc[:len(depths)].to_numpy(float)[deep]) for c in out.columns]
    out.columns.name = None
    return out


def render_cr_depth(st: Study, out: Path, want: set[str]) -> list[Path]:
    """The ``cr_depth`` study: its depth table and the time-against-depth figure with slope-1 and slope-2 guides."""
    name = str(st.meta.get("name", "cr_depth"))
    col = time_column(st.data)
    about = (f"width {st.meta.get('width', '?')}, batch {st.meta.get('batch', '?')}, {st.meta.get('repeats', '?')} "
             f"repeats, {'CPU' if col == 'cpu_seconds' else 'wall-clock'} time, {st.meta.get('machine', '')}")
    w: list[Path] = []
    if "tables" in want:
        w += write_table(depth_table(st.data), out, name, "Bakker et al. Section 4: seconds per update (median) "
                         f"against the number of hidden ReLU layers ({about}); exponent = log-log slope",
                         floatfmt=".3g")
    if "figures" in want:
        w += F.save(F.scaling_figure(st.data, f"CR step against depth ({about})", col, "seconds per update",
                                     anchor="gradient step"), out, name)
    return w


def cr_rebound_table(metrics: pd.DataFrame, runs: pd.DataFrame, threshold: float = 2.2,
                     period: int = 100, span: int = 1000) -> pd.DataFrame:
    """Per CR run: when α rebounds after the plateau (Bakker et al. Fig. 5's jump "around iteration 1200").

    ``exit`` = the first evaluation with full-set training loss below ``threshold``; after it, the
    lowest period-``period`` moving average of α/lr (full windows; ``trough`` and its update) and
    the highest one in the ``span`` updates after the trough (``rebound``, its update, and the
    rebound ÷ trough ratio),
    with the training loss at the evaluation nearest the rebound. Rows are indexed by run.
    """
    rows = []
    for run_dir, g in metrics[metrics["run_dir"].isin(runs.loc[runs["solver"] == "cr", "run_dir"])].groupby("run_dir"):
        a = g.dropna(subset=["step_size"]).sort_values("step")
        ratio = (pd.to_numeric(a["step_size"]) / pd.to_numeric(a["lr"])).to_numpy(float)
        ma = pd.Series(ratio).rolling(period).mean().to_numpy()
        steps = a["step"].to_numpy(int)
        ev = g.dropna(subset=["train_loss"]).sort_values("step")
        below = ev[pd.to_numeric(ev["train_loss"]) < threshold]
        row: dict[str, object] = {"run": runs.set_index("run_dir").loc[run_dir, "run"],
                                  "exit": int(below["step"].iloc[0]) if len(below) else np.nan}
        after = np.isfinite(ma) & (steps >= row["exit"]) if len(below) else np.zeros(len(ma), bool)
        if after.any():
            i = int(np.flatnonzero(after)[np.nanargmin(ma[after])])
            later = np.isfinite(ma) & (steps > steps[i]) & (steps <= steps[i] + span)
            j = int(np.flatnonzero(later)[np.nanargmax(ma[later])]) if later.any() else i
            near = ev.iloc[(ev["step"] - steps[j]).abs().argmin()]
            row.update({"trough": ma[i], "trough at": int(steps[i]), "rebound": ma[j], "rebound at": int(steps[j]),
                        "rebound / trough": ma[j] / ma[i], "train loss at rebound": float(near["train_loss"])})
        rows.append(row)
    return pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame()
