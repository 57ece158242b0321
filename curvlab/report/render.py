"""Decide what each experiment and study renders, and write it (tables and figures).

Rules follow from what the runs wrote, not from a list of names, so a new preset
renders without code changes:

- runs with ``hessian_errors.csv`` rows → the layer-wise error table (Tables 2–5 of
  Chen et al.); experiments named ``…table2…`` – ``…table5…`` also get the paper's
  numbers side by side;
- runs with evaluated ``test_acc`` → the training-curve figure and a final-metrics table;
- experiments with CR runs (``solver: cr``) → the Bakker et al. figure (loss with and
  without CR, the CR learning rate and its moving average);
- studies (``study.json``) → the renderer registered under the study's name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pandas as pd

from curvlab.report import figures as F
from curvlab.report.load import FIRST_ORDER, Runs, Study
from curvlab.report.tables import cr_rate_table, final_metrics_table, hessian_error_table, side_by_side, write_table

__all__ = ["variant_labels", "render_experiment", "render_study", "STUDY_RENDERERS"]

# Config keys that differ between runs without making them different methods.
_IGNORE = re.compile(r"(seed|run_dir|^cfg\.hydra|path|root|resume|experiment|device|name$|eval|^cfg\.log\.|"
                     r"progress|checkpoint|stop_after|max_steps|epochs)")


def variant_labels(runs: pd.DataFrame) -> pd.Series:
    """``label`` plus ``key=value`` for every config value that varies across runs (not seeds).

    Makes curves of one experiment distinguishable when they share curvature and solver
    (CR on/off, block splitting, grid-search points).
    """
    cfg_cols = [c for c in runs.columns if c.startswith("cfg.") and not _IGNORE.search(c)]
    as_str = lambda c: runs[c].map(str)  # noqa: E731  (astype(str) keeps NaN in pandas 3)
    # Per label, the columns that vary among its runs: only those distinguish its curves.
    varying = {lab: [c for c in cfg_cols if as_str(c)[idx].nunique() > 1
                     and not (c.startswith("cfg.curvature.") and lab in FIRST_ORDER)]  # they ignore it
               for lab, idx in runs.groupby("label").groups.items()}

    def short(v: object) -> str:  # 4.0 → 4: columns with gaps are float in pandas
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)

    def lab(row: pd.Series) -> str:
        extra = " ".join(f"{c.rsplit('.', 1)[-1]}={short(row[c])}" for c in varying[row["label"]] if not pd.isna(row[c]))
        return f"{row['label']} {extra}".strip()

    return runs.apply(lab, axis=1) if len(runs) else pd.Series(dtype=str)


def _relabel(r: Runs) -> Runs:
    """Variant labels; runs that repeat a (label, seed) pair are dropped.

    A Hydra sweep over ``curvature × solver`` trains first-order solvers once per curvature
    kind although they ignore it; those repeats are the same run, not extra seeds.
    """
    runs = r.runs.assign(label=variant_labels(r.runs)).drop_duplicates(["label", "seed"])
    labels = dict(zip(runs["run_dir"], runs["label"]))
    fix = lambda df: df[df["run_dir"].isin(labels)].assign(label=df["run_dir"].map(labels)) if len(df) else df  # noqa: E731
    return Runs(runs.reset_index(drop=True), fix(r.metrics), fix(r.errors))


def _title(r: Runs, exp: str) -> str:
    first = r.runs.iloc[0]
    return f"{exp}: {first.get('dataset')}, loss {first.get('loss')} ({len(r.runs)} runs)"


def render_experiment(r: Runs, exp: str, out: Path, steps: int | None = None,
                      want: set[str] = frozenset({"tables", "figures"})) -> list[Path]:
    """Render one experiment's runs into ``out``; returns the files written."""
    r = _relabel(r)
    written: list[Path] = []
    if "tables" in want and not r.errors.empty:
        tab = hessian_error_table(r.errors, steps)
        logged = sorted(r.errors["step"].unique())[: steps or None]
        cap = (f"{exp}: layer-wise errors ||B~ - |H|||_F, mean over {len(logged)} logged updates "
               f"(theta^{logged[0]} ... theta^{logged[-1]}) and {len(r.runs)} run(s)")
        written += write_table(tab, out, exp, cap, floatfmt=".3g")
        m = re.search(r"table([2-5])", exp)
        if m:
            written += write_table(side_by_side(tab, f"table{m.group(1)}"), out, f"{exp}_vs_paper",
                                   f"{exp}: ours beside Chen et al. Table {m.group(1)}", floatfmt=".3g")
    has_acc = not r.metrics.empty and pd.to_numeric(r.metrics.get("test_acc"), errors="coerce").notna().any()
    if has_acc:
        written += write_table(final_metrics_table(r.runs), out, f"{exp}_final",
                               f"{exp}: final metrics, mean ± std over seeds", floatfmt=".4g")
    if "figures" in want and has_acc:
        written += F.save(F.training_figure(r.metrics, _title(r, exp)), out, exp)
    cr_runs = set(r.runs.loc[r.runs["solver"] == "cr", "run_dir"])
    if "figures" in want and cr_runs and "step_size" in r.metrics:
        # Only CR picks the step size at every step; its curves go next to those without CR.
        cr_labels = sorted(r.metrics.loc[r.metrics["run_dir"].isin(cr_runs), "label"].unique())
        written += F.save(F.cr_figure(r.metrics, _title(r, exp), cr_groups=cr_labels), out, f"{exp}_cr")
    if cr_runs and "lr" in r.metrics:
        tab = cr_rate_table(r.metrics, sorted(r.metrics.loc[r.metrics["run_dir"].isin(cr_runs), "label"].unique()))
        if not tab.empty:
            written += write_table(tab, out, f"{exp}_cr_rate", f"{exp}: CR step alpha over the scheduled learning "
                                   "rate lr (median over seeds)", floatfmt=".3g")
    return written


# --- studies ---------------------------------------------------------------------------

def _appendix(st: Study, out: Path, want: set[str]) -> list[Path]:
    """Per block and layer: log-log slopes of ‖H − GN‖ (absolute, relative) and ‖H‖ against c."""
    d = st.data.groupby(["block", "layer", "c"], as_index=False)[["abs_error", "rel_error", "h_norm"]].mean()
    fit_max = float(st.meta.get("fit_max", 0.05))  # the small-c range where the asymptotics hold
    rows = []
    for (block, layer), g in d.groupby(["block", "layer"]):
        small = g[g["c"] <= fit_max]
        rows.append({"block": block, "layer": int(layer),
                     "slope rel_error": F.fit_loglog_slope(small["c"], small["rel_error"]),
                     "slope abs_error": F.fit_loglog_slope(small["c"], small["abs_error"]),
                     "slope ‖H‖": F.fit_loglog_slope(small["c"], small["h_norm"]),
                     "rel_error at min c": float(g.loc[g["c"].idxmin(), "rel_error"]),
                     "rel_error at max c": float(g.loc[g["c"].idxmax(), "rel_error"])})
    tab = pd.DataFrame(rows).set_index(["block", "layer"])
    tab.index = [f"{b} layer {l}" for b, l in tab.index]
    name = st.meta.get("name", "appendix_chain_rule")
    w: list[Path] = []
    if "tables" in want:
        w += write_table(tab, out, name, f"Appendix sweep: log-log slopes against the input scale c (fit on c <= {fit_max:g}), "
                         f"mean over {st.meta.get('seeds', '?')} seed(s)", floatfmt=".3g")
    if "figures" in want:
        w += F.save(F.appendix_figure(d, tab, fit_max), out, name)
    return w


def _table1(st: Study, out: Path, want: set[str]) -> list[Path]:
    d = st.data.copy()
    base = d.loc[d["method"] == "sgd", "step_seconds"]
    if len(base):
        d["time vs sgd"] = d["step_seconds"] / float(base.mean())
    name = st.meta.get("name", "table1_measured")
    return write_table(d.set_index("method"), out, name,
                       "Table 1 measured: seconds and peak memory per training step beside the paper's complexity",
                       floatfmt=".4g") if "tables" in want else []


def _rahimi(st: Study, out: Path, want: set[str]) -> list[Path]:
    d = st.data
    name = st.meta.get("name", "rahimi_scaling")
    w: list[Path] = []
    if "tables" in want:
        piv = d.groupby(["sweep", "value", "method"])["seconds"].mean().unstack("method")
        piv.index = [f"{a}={b}" for a, b in piv.index]
        w += write_table(piv, out, name, "Rahimi scaling: seconds per call (mean over repeats)", floatfmt=".3g")
        mean = d.groupby(["sweep", "method", "value"], as_index=False)["seconds"].mean()
        slopes = mean.groupby(["sweep", "method"]).apply(
            lambda g: F.fit_loglog_slope(g["value"], g["seconds"]), include_groups=False).unstack("method")
        slopes.index = [f"slope vs {i}" for i in slopes.index]
        w += write_table(slopes, out, f"{name}_slopes", "Rahimi scaling: log-log slope of seconds against depth "
                         "and width (1 = linear)", floatfmt=".2f")
    if "figures" in want:
        w += F.save(F.scaling_figure(d, "Exact Hessian-inverse-vector product vs one HVP"), out, name)
    return w


STUDY_RENDERERS: dict[str, Callable[[Study, Path, set[str]], list[Path]]] = {
    "appendix_chain_rule": _appendix,
    "table1_measured": _table1,
    "rahimi_scaling": _rahimi,
}


def render_study(st: Study, out: Path, want: set[str] = frozenset({"tables", "figures"})) -> list[Path]:
    """Render one study with the renderer registered under its ``study`` name."""
    if st.name not in STUDY_RENDERERS:
        raise ValueError(f"study {st.name!r} in {st.path}: no renderer; known: {', '.join(STUDY_RENDERERS)}")
    return STUDY_RENDERERS[st.name](st, out, set(want))
