"""Decide what each experiment and study renders, and write it (tables and figures).

Rules follow from what the runs wrote, not from a list of names, so a new preset
renders without code changes. Runs are first grouped by their config (one curve per
group, labelled by what differs; :mod:`curvlab.report.groups`), and each setting
(dataset × net × loss) renders on its own:

- every run → a per-run table (``_runs``: final metrics, times, CG iterations, and which
  runs a longer run of the same seed replaced) and, with evaluated ``test_acc``, the
  training-curve figure (by wall-clock and by epoch), a per-curve table (``_final``), each curve at
  10/25/50/100 % of its run (``_milestones``) and its plateau exit, best accuracy and lowest test loss
  (``_plateau``, :mod:`curvlab.report.milestones`);
  a method swept over two numeric fields (a grid search) also gets its grid (``_grid``,
  :mod:`curvlab.report.grid`);
- runs with ``hessian_errors.csv`` rows → per curve and logging batch, the layer-wise error
  table (Tables 2–5 of Chen et al.), its relative version (when ``reference`` was logged),
  the paper's numbers beside ours with their ratio (experiments named ``…table2…`` –
  ``…table5…``, or the paper's dataset and loss), and the figure of each kind's Total
  and relative error along training; and Chen et al.'s own protocol, the errors averaged over
  θ⁰ … θ^{s−1} for several s (:mod:`curvlab.report.protocol`);
- runs of CR (``solver: cr``) → the Bakker et al. figure (loss with and without CR, the CR
  learning rate and its moving average), the table of α/lr and that of α's rebound after the
  plateau (:mod:`curvlab.report.bakker`);
- studies (``study.json``) → the renderer registered under the study's name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from curvlab.report import figures as F
from curvlab.report.bakker import cr_rebound_table, render_cr_depth
from curvlab.report.escape import csv_safe
from curvlab.report.files import BadFile, UnsafeOutput, new_file, safe_name
from curvlab.report.grid import Search, best_labels, best_table, grid_tables, heatmap_figure, searches
from curvlab.report.groups import group_runs
from curvlab.report.load import Runs, Study
from curvlab.report.milestones import milestone_table, plateau_table
from curvlab.report.paper import EACG_TABLES
from curvlab.report.protocol import render_protocol
from curvlab.report.study_lowrank import render_cr_sigma, render_lowrank_structure
from curvlab.report.styles import curve_traits
from curvlab.report.tables import (
    cr_rate_table, final_metrics_table, hessian_error_table, paper_match_table, relative_error_table, runs_table,
    select_steps, side_by_side, write_table,
)
from curvlab.report.timing import StepCosts, time_axis

__all__ = ["render_experiment", "render_study", "seed_phrase", "STUDY_RENDERERS"]


def slug(text: str) -> str:
    """A file-name part: ``EA-CG · PCH-1`` → ``ea-cg_pch-1``."""
    return re.sub(r"[^a-z0-9.=+-]+", "_", text.lower()).strip("_")


def seed_phrase(counts: pd.Series) -> str:
    """``1 run``, ``3 seeds``, ``1 seed per curve``, ``3 seeds per curve`` or ``1–3 seeds per curve``.

    Args:
        counts: runs per curve (one entry per curve).
    """
    lo, hi = int(counts.min()), int(counts.max())
    seeds = lambda n: f"{n} seed" + ("s" if n != 1 else "")  # noqa: E731
    if len(counts) == 1:
        return "1 run" if hi == 1 else seeds(hi)
    return f"{seeds(hi)} per curve" if lo == hi else f"{lo}–{hi} seeds per curve"


def _paper_table(exp: str, runs: pd.DataFrame) -> str | None:
    """The Chen et al. table to compare with: named by the experiment, else by its dataset and loss."""
    m = re.search(r"table([2-5])", exp)
    if m:
        return f"table{m.group(1)}"
    datasets, losses = set(runs["dataset"].dropna()), set(runs["loss"].dropna())
    for name, meta in sorted(EACG_TABLES.items()):
        if datasets == {meta["dataset"]} and losses == {meta["loss"]}:
            return name
    return None


def _only(r: Runs, runs: pd.DataFrame) -> Runs:
    """The metrics and errors of ``runs`` (kept runs of one setting), relabelled with their group labels."""
    labels = dict(zip(runs["run_dir"], runs["label"]))
    fix = lambda df: df[df["run_dir"].isin(labels)].assign(label=lambda d: d["run_dir"].map(labels))  # noqa: E731
    return Runs(runs.reset_index(drop=True), fix(r.metrics), fix(r.errors))


def render_experiment(r: Runs, exp: str, out: Path, steps: int | None = None,
                      want: set[str] = frozenset({"tables", "figures"}), window: tuple[int, int] | None = None,
                      wall_note: str | None = F.WALL_NOTE, costs: StepCosts | None = None) -> list[Path]:
    """Render one experiment's runs into ``out``; returns the files written.

    Runs are grouped by config (:func:`curvlab.report.groups.group_runs`); each setting
    (dataset × net × loss) gets its own files, named ``<exp>`` when the experiment has one
    setting and ``<exp>__<setting>`` otherwise. With ``costs`` (and ``quiet_time`` filled in by
    :func:`curvlab.report.timing.with_quiet_time`) the time panels show quiet-machine time.
    """
    grouping = group_runs(r.runs)
    settings = sorted(grouping.runs["setting"].unique())
    written: list[Path] = []
    for setting in settings:
        runs = grouping.runs[grouping.runs["setting"] == setting]
        dropped = grouping.dropped[grouping.dropped["setting"] == setting]
        name = safe_name(exp) if len(settings) == 1 else f"{safe_name(exp)}__{slug(setting)}"
        written += _render_setting(_only(r, runs), dropped, exp, setting, name, Path(out), steps, set(want),
                                   window, wall_note, costs)
    return written


def _render_setting(r: Runs, dropped: pd.DataFrame, exp: str, setting: str, name: str, out: Path,
                    steps: int | None, want: set[str], window: tuple[int, int] | None,
                    wall_note: str | None, costs: StepCosts | None = None) -> list[Path]:
    counts = r.runs.groupby("label").size()
    title = f"{exp} · {setting} · {seed_phrase(counts)}"
    written = write_table(runs_table(r.runs, r.metrics, dropped), out, f"{name}_runs",
                          f"{title}: every run (used = averaged into its curve)", floatfmt=".4g")
    has_acc = "test_acc" in r.metrics and pd.to_numeric(r.metrics["test_acc"], errors="coerce").notna().any()
    if has_acc:
        written += write_table(final_metrics_table(r.runs, r.metrics), out, f"{name}_final",
                               f"{title}: final metrics, mean ± std over seeds (a value alone: every seed agrees, "
                               "or one seed; columns that are zero in every run left out)", floatfmt=".4g")
        written += _render_milestones(r, title, name, out)
        found = searches(r.runs, r.metrics)
        written += _render_searches(found, r, title, name, out, want)
    if "figures" in want and has_acc:
        left_out = best_labels(found)  # a search with more points than a figure tells apart: its best point only
        best_of = {s.best(): len(s.points) for s in found if set(s.points.index) & set(left_out)}
        shown = r.metrics[~r.metrics["label"].isin(left_out)]
        axis = time_axis(shown, costs, wall_note)
        legend = {k: k + (f" ({seed_phrase(counts[[k]])})" if counts.nunique() > 1 else "")
                  + (f" (best of {best_of[k]})" if k in best_of else "")
                  + (" *" if k in axis.measured else "") for k in counts.index}
        traits = curve_traits(r.runs[~r.runs["label"].isin(left_out)])
        written += F.save(F.training_figure(axis.metrics, title, wall_note=axis.note, legend_labels=legend,
                                            time=axis.column, time_name=axis.name, traits=traits), out, name)
    if not r.errors.empty:
        written += _render_errors(r, exp, setting, name, out, steps, want, window)
    cr_labels = sorted(r.runs.loc[r.runs["solver"] == "cr", "label"].unique())
    if "figures" in want and cr_labels and "step_size" in r.metrics:
        written += F.save(F.cr_figure(r.metrics, title, cr_groups=cr_labels), out, f"{name}_cr")
    if cr_labels and "lr" in r.metrics:
        tab = cr_rate_table(r.metrics, cr_labels)
        if not tab.empty:
            written += write_table(tab, out, f"{name}_cr_rate", f"{title}: CR step alpha over the scheduled "
                                   "learning rate lr (median over seeds)", floatfmt=".3g")
        rebound = cr_rebound_table(r.metrics, r.runs)
        if not rebound.empty and rebound["exit"].notna().any():
            written += write_table(rebound, out, f"{name}_cr_rebound", f"{title}: per CR run, the plateau exit (train "
                                   "loss < 2.2), then the lowest and the next 1,000 updates' highest period-100 moving "
                                   "average of alpha/lr (Bakker et al. Fig. 5's jump)", floatfmt=".3g")
    return written


def _render_milestones(r: Runs, title: str, name: str, out: Path) -> list[Path]:
    """Each curve at 10/25/50/100 % of its run, and its plateau exit, best accuracy and lowest test loss."""
    written: list[Path] = []
    steps = milestone_table(r.metrics)
    if not steps.empty:
        written += write_table(steps, out, f"{name}_milestones", f"{title}: full-set train loss, test loss and test "
                               "accuracy at the evaluated updates nearest to 10, 25, 50 and 100 % of the longest run, "
                               "mean ± std over the seeds evaluated there", floatfmt=".4g")
    key = "cfg.dataset.num_classes"
    n = pd.to_numeric(r.runs[key], errors="coerce") if key in r.runs else pd.Series(np.nan, index=r.runs.index)
    plateau = plateau_table(r.metrics, dict(zip(r.runs["run_dir"], n.fillna(10).astype(int))))
    if not plateau.empty:
        written += write_table(plateau, out, f"{name}_plateau", f"{title}: per curve, the first evaluation of each "
                               "seed with train loss below the plateau threshold (2.25 for cross-entropy with 10 "
                               "classes, 0.60 for Eq. 14), and the best test accuracy and lowest test loss (mean ± "
                               "std over seeds) with the update where each seed reached them", floatfmt=".4g")
    return written


def _render_searches(found: list[Search], r: Runs, title: str, name: str, out: Path, want: set[str]) -> list[Path]:
    """Methods swept over numeric fields: the best point of each (table), and per method with two or more
    swept fields its grid (table) and heat map (figure)."""
    written: list[Path] = []
    if not found:
        return written
    if "tables" in want:
        written += write_table(best_table(found), out, f"{name}_best",
                               f"{title}: best point of each searched method (lowest final train loss, mean over "
                               "the point's seeds; test accuracy in %)", floatfmt=".4g")
    grids = grid_tables(r.runs, r.metrics)
    for s in (s for s in found if s.method in grids):
        stem = "" if len(grids) == 1 else f"_{slug(s.method)}"
        more = len(s.axes) > 2
        if "tables" in want:
            written += write_table(grids[s.method], out, f"{name}_grid{stem}", f"{title}: {s.method}, grid of the "
                                   "swept fields — final train loss / test accuracy (%), mean over the seeds of each "
                                   "point" + (" (each cell: the best point over the other swept fields)" if more
                                              else ""), floatfmt=".4g")
        if "figures" in want:
            written += F.save(heatmap_figure(s, f"{title}: {s.method}, grid search"), out, f"{name}_heatmap{stem}")
    return written


def _render_errors(r: Runs, exp: str, setting: str, name: str, out: Path, steps: int | None, want: set[str],
                   window: tuple[int, int] | None) -> list[Path]:
    """Tables 2–5 (absolute, relative, beside the paper) per group and logging batch; the errors along training."""
    written: list[Path] = []
    labels = sorted(r.errors["label"].unique())
    paper = _paper_table(exp, r.runs)
    for label in labels:
        errs = r.errors[r.errors["label"] == label]
        n = errs["run_dir"].nunique()
        stem = name if len(labels) == 1 else f"{name}_{slug(label)}"
        head = f"{exp} · {setting} · {label} · {seed_phrase(pd.Series([n]))}"
        if "figures" in want and errs["step"].nunique() > 1:
            written += F.save(F.hessian_error_figure(errs, f"{head}: curvature errors along training"), out,
                              f"{stem}_hessian_errors")
        if "tables" not in want:
            continue
        if paper:
            written += _paper_match(errs, paper, out, stem, head)
        written += render_protocol(errs, paper, out, stem, head)  # the paper's θ⁰…θ^{s−1} averages
        has_batch = "batch" in errs and errs["batch"].notna().any()
        batches = sorted(errs["batch"].dropna().unique()) if has_batch else [None]
        for batch in batches:
            part = errs if batch is None else errs[errs["batch"] == batch]
            tag = "" if len(batches) == 1 else f"_b{int(batch)}"
            logged = sorted(select_steps(part, steps, window)["step"].unique())
            cap = (f"{head}: layer-wise errors ||B~_t - |B_t|||_F, mean over {len(logged)} logged updates "
                   f"(theta^{logged[0]} ... theta^{logged[-1]})"
                   + ("" if batch is None else f", logging batch {int(batch)}"))
            tab = hessian_error_table(part, steps, window)
            written += write_table(tab, out, f"{stem}{tag}", cap, floatfmt=".3g")
            if "reference" in part and part["reference"].notna().any():
                written += write_table(relative_error_table(part, steps, window), out, f"{stem}{tag}_relative",
                                       cap.replace("layer-wise errors", "relative layer-wise errors (%)")
                                       .replace("||B~_t - |B_t|||_F", "||B~_t - |B_t|||_F / ||B_t||_F"),
                                       floatfmt=".3g")
            if paper:
                written += write_table(side_by_side(tab, paper), out, f"{stem}{tag}_vs_paper",
                                       f"{cap}; beside Chen et al. Table {paper[-1]} (ours/paper = ratio)",
                                       floatfmt=".3g")
    return written


def _paper_match(errs: pd.DataFrame, paper: str, out: Path, stem: str, head: str) -> list[Path]:
    """The table that says at which logged θ^t (and logging batch) our errors come closest to the paper's."""
    match = paper_match_table(errs, paper)
    best = match["score"].idxmin() if match["score"].notna().any() else None
    where = ("" if best is None else " Closest: " + ", ".join(
        f"{k} {v}" for k, v in zip(match.index.names, best if isinstance(best, tuple) else (best,)))
        + f" (score {match['score'].min():.3g}).")
    cap = (f"{head}: distance of our layer-wise errors at each logged update from Chen et al. Table {paper[-1]} "
           f"(score = mean |log10(ours/paper)| over layers and kinds; 0 = equal, 1 = a factor 10).{where}")
    return write_table(match, out, f"{stem}_vs_paper_by_step", cap, floatfmt=".3g")


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
        w += write_table(tab, out, name, "Appendix sweep: log-log slopes against the input scale c "
                         f"(fit on c <= {fit_max:g}), "
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
    # Time, and (studies since the memory measurement) extra peak memory per call.
    measured = [("seconds", "", "seconds per call"), ("peak_mb", "_memory", "extra peak memory per call (MB)")]
    for column, suffix, what in (m for m in measured if m[0] in d.columns):
        if "tables" in want:
            piv = d.groupby(["sweep", "value", "method"])[column].mean().unstack("method")
            piv.index = [f"{a}={b}" for a, b in piv.index]
            w += write_table(piv, out, f"{name}{suffix}", f"Rahimi scaling: {what} (mean over repeats)", floatfmt=".3g")
            mean = d.groupby(["sweep", "method", "value"], as_index=False)[column].mean()
            slopes = mean.groupby(["sweep", "method"]).apply(
                lambda g, c=column: F.fit_loglog_slope(g["value"], g[c]), include_groups=False).unstack("method")
            slopes.index = [f"slope vs {i}" for i in slopes.index]
            w += write_table(slopes, out, f"{name}{suffix}_slopes", f"Rahimi scaling: log-log slope of {what} against "
                             "depth and width (1 = linear)", floatfmt=".2f")
        if "figures" in want:
            title = f"Exact Hessian-inverse-vector product vs one HVP: {what}"
            # guides through the exact inverse's first point: its "linear in depth" claim reads off slope 1
            w += F.save(F.scaling_figure(d, title, column, what, anchor="inverse H"), out, f"{name}{suffix}")
    return w


STUDY_RENDERERS: dict[str, Callable[[Study, Path, set[str]], list[Path]]] = {
    "appendix_chain_rule": _appendix,
    "table1_measured": _table1,
    "rahimi_scaling": _rahimi,
    "lowrank_structure": render_lowrank_structure,
    "cr_sigma": render_cr_sigma,
    "cr_depth": render_cr_depth,
}


_GENERIC_MAX_ROWS = 500  # a study without a renderer is shown as its own table up to this size


def _generic(st: Study, out: Path, want: set[str]) -> list[Path]:
    """A study without a renderer of its own: its tidy rows as one table (a new study renders at once).

    Above ``_GENERIC_MAX_ROWS`` rows only the CSV is written: register a renderer in
    ``STUDY_RENDERERS`` to summarise it.
    """
    if "tables" not in want:
        return []
    name = str(st.meta.get("name", st.name))
    if len(st.data) > _GENERIC_MAX_ROWS:
        out.mkdir(parents=True, exist_ok=True)
        with new_file(out, f"{name}.csv") as f:
            f.write(csv_safe(st.data).to_csv(index=False).encode())
        return [out / f"{name}.csv"]
    about = "; ".join(str(st.meta[k]) for k in ("paper", "note") if st.meta.get(k))
    return write_table(st.data.set_index(st.data.columns[0]), out, name,
                       f"Study {name} (rows as measured){': ' + about if about else ''}", floatfmt=".4g")


def render_study(st: Study, out: Path, want: set[str] = frozenset({"tables", "figures"})) -> list[Path]:
    """Render one study with the renderer registered under its ``study`` name (else as one table).

    Its output name is sanitised (:func:`curvlab.report.files.safe_name`); a study whose data lack
    what its renderer needs raises :class:`curvlab.report.files.BadFile` naming the study file.
    """
    st = Study(st.path, {**st.meta, "name": safe_name(st.meta.get("name", st.name))}, st.data)
    try:
        return STUDY_RENDERERS.get(st.name, _generic)(st, out, set(want))
    except UnsafeOutput:
        raise
    except (KeyError, TypeError, IndexError, ValueError) as e:  # what the renderer needs is missing or mistyped
        raise BadFile(st.path / "study.json", f"its data do not fit the {st.name!r} renderer "
                      f"({type(e).__name__}: {str(e)[:100]})") from None
