"""Tables from tidy frames, written as Markdown, CSV and LaTeX (no extra dependencies).

The builders (``*_table``) turn frames from :mod:`curvlab.report.load` into small frames;
:func:`write_table` renders any such frame into the three formats.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from curvlab.report.escape import csv_cell, csv_safe, md_text, tex_text
from curvlab.report.files import new_file, safe_name
from curvlab.hessian_log import variant_label
from curvlab.registry import KINDS as KIND_FAMILY
from curvlab.report.paper import EACG_TABLES, KINDS
from curvlab.report.styles import natural_key

__all__ = [
    "hessian_error_table", "relative_error_table", "error_totals", "kind_column", "select_steps", "side_by_side",
    "paper_match_table", "match_score", "paper_frame",
    "per_run_stats", "final_metrics_table", "runs_table", "cr_rate_table", "time_unit",
    "mean_pm", "to_markdown", "to_latex", "write_table", "KIND_NAMES",
]

KIND_NAMES = {name: KIND_FAMILY.label(name) for name in KIND_FAMILY}  # column labels: Fisher, GN, PCH-1, …
_TIME_UNITS = ((3600.0 * 5, 3600.0, "h"), (600.0, 60.0, "min"), (0.0, 1.0, "s"))


def time_unit(seconds: float) -> tuple[float, str]:
    """(divisor, unit) that shows durations up to ``seconds`` readably: s, min above 10 min, h above 5 h."""
    for above, div, unit in _TIME_UNITS:
        if seconds > above:
            return div, unit
    return 1.0, "s"


def kind_column(errors: pd.DataFrame) -> pd.Series:
    """The column each error row goes to: its kind, or for the Fisher ``fisher (MC m)`` /
    ``fisher (empirical)`` / ``fisher (exact)`` when rows of several Monte-Carlo sample counts
    (``mc_samples``) or several definitions (``fisher``; older files lack it: a row with a sample
    count is an MC Fisher) were logged. The names are :func:`curvlab.hessian_log.variant_label`'s, as in
    the runner's summary line."""
    kind = errors["kind"].astype(str)
    fisher = kind == "fisher"
    mc = pd.to_numeric(errors["mc_samples"], errors="coerce") if "mc_samples" in errors else None
    ftype = errors["fisher"] if "fisher" in errors else pd.Series(None, index=errors.index, dtype=object)
    if mc is not None:
        ftype = ftype.where(ftype.notna() | mc.isna(), "mc")
    ftype = ftype.fillna("").astype(str)
    several_mc = mc is not None and mc[fisher].dropna().nunique() > 1
    several_types = ftype[fisher].nunique() > 1
    if not (several_mc or several_types):
        return kind
    keys = pd.DataFrame({"kind": kind, "fisher": ftype, "mc": -1.0 if mc is None else mc.fillna(-1.0)})  # -1: none
    names = {k: variant_label(k[0], k[1] or None, None if k[2] < 0 else k[2], mc_count=several_mc)
             for k in keys.drop_duplicates().itertuples(index=False, name=None)}
    return pd.Series([names[k] for k in keys.itertuples(index=False, name=None)], index=errors.index)


def _base_kind(column: str) -> str:
    return column.split(" (", 1)[0]


def _kind_order(columns: list[str]) -> list[str]:
    """Paper order (Fisher, GN, PCH-1, PCH-2), MC variants by sample count, then any other kind."""
    def key(c: str) -> tuple[int, str, bool, float, str]:
        base = _base_kind(c)
        mc = float(c.rsplit("MC ", 1)[1].rstrip(")")) if "(MC " in c else 0.0
        return (KINDS.index(base) if base in KINDS else len(KINDS), base, "(MC" not in c, mc, c)
    return sorted(columns, key=key)


def select_steps(errors: pd.DataFrame, steps: int | None = None,
                 window: tuple[int, int] | None = None) -> pd.DataFrame:
    """Rows of each run's first ``steps`` logged updates and/or of updates ``window[0] ≤ step ≤ window[1]``."""
    df = errors
    if window is not None:
        df = df[(df["step"] >= window[0]) & (df["step"] <= window[1])]
    if steps is not None and len(df):
        first = df.groupby("run_dir")["step"].rank(method="dense")
        df = df[first <= steps]
    if df.empty:
        raise ValueError(f"no hessian_errors.csv rows in the step window {window}; logged steps: "
                         f"{sorted(errors['step'].unique())[:10]}...")
    return df


def hessian_error_table(errors: pd.DataFrame, steps: int | None = None,
                        window: tuple[int, int] | None = None) -> pd.DataFrame:
    """Layer-wise errors per curvature kind, as in Tables 2–5 of Chen et al.

    Each run's error is averaged over its first ``steps`` logged updates (θ⁰ … θ^{s−1};
    all of them when ``None``) within ``window`` (inclusive step range), then over runs
    (seeds). The ``Total`` row is √Σ_t err_t² over layers, as in the paper (0.1535 = √Σ of
    the Fisher column of Table 2). Rows of one logging batch size only (the caller splits).

    Args:
        errors: rows ``run_dir, step, layer, kind, error`` (``Runs.errors``), optionally ``mc_samples``.
        steps: s, the number of first updates to average over.
        window: (first, last) update to average over.

    Returns:
        Index ``Layer-1 … Layer-k, Total``; one column per kind (``fisher, gn, pch1, pch2``
        first, in that order; ``fisher (MC m)`` per sample count when several); NaN where a
        kind was not computed (GN for a non-convex loss).
    """
    if errors.empty:
        raise ValueError("hessian_error_table: no hessian_errors.csv rows; run an experiment with curvature errors")
    df = select_steps(errors, steps, window)
    df = df.assign(column=kind_column(df))
    per_run = df.groupby(["run_dir", "column", "layer"])["error"].mean()  # mean over the first s steps
    mean = per_run.groupby(["column", "layer"]).mean().unstack("column")  # mean over seeds; (layers, kinds)
    mean = mean[_kind_order(list(mean.columns))]
    mean.index = [f"Layer-{int(i)}" for i in mean.index]
    total = np.sqrt((mean**2).sum(axis=0, min_count=1))
    out = pd.concat([mean, total.to_frame("Total").T])
    out.columns.name = None
    return out


def error_totals(errors: pd.DataFrame) -> pd.DataFrame:
    """Per run, logged update and kind column: ``total`` = √Σ_t err_t² and ``relative`` = total / √Σ_t ‖B_t‖_F².

    ``relative`` is ‖B̃ − |B|‖_F / ‖B‖_F of the whole block-diagonal matrix (‖|B|‖_F = ‖B‖_F);
    NaN when the run did not log ``reference``. Grouped by ``batch`` too when it was logged.
    """
    df = errors.assign(column=kind_column(errors), err2=errors["error"] ** 2)
    has_ref = "reference" in df and df["reference"].notna().any()
    df["ref2"] = pd.to_numeric(df["reference"], errors="coerce") ** 2 if has_ref else np.nan
    keys = ["run_dir", *(["batch"] if _logged(df, "batch") else []), "column", "step"]
    out = df.groupby(keys, as_index=False)[["err2", "ref2"]].sum(min_count=1)
    out["total"] = np.sqrt(out["err2"])
    out["relative"] = out["total"] / np.sqrt(out["ref2"])
    return out.drop(columns=["err2", "ref2"])


def _logged(df: pd.DataFrame, col: str) -> bool:
    return col in df and pd.to_numeric(df[col], errors="coerce").notna().any()


def relative_error_table(errors: pd.DataFrame, steps: int | None = None,
                         window: tuple[int, int] | None = None) -> pd.DataFrame:
    """Relative layer-wise errors ‖B̃_t − |B_t|‖_F / ‖B_t‖_F in %, same layout as :func:`hessian_error_table`.

    Per run, the ratio at each logged update is averaged over the updates, then over runs;
    ``Total`` is the relative error of the whole block-diagonal matrix (:func:`error_totals`).
    Near θ⁰ the lower-layer GN/Fisher errors equal ‖B_t‖ (100 %), which absolute errors hide.
    Requires the ``reference`` column (runs logged before it existed have none).
    """
    if not _logged(errors, "reference"):
        raise ValueError("relative_error_table: the runs logged no `reference` column (‖B_t‖_F); rerun them")
    df = select_steps(errors, steps, window)
    df = df.assign(column=kind_column(df), rel=100 * df["error"] / pd.to_numeric(df["reference"], errors="coerce"))
    layers = df.groupby(["run_dir", "column", "layer"])["rel"].mean().groupby(["column", "layer"]).mean()
    tab = layers.unstack("column")
    tab.index = [f"Layer-{int(i)}" for i in tab.index]
    totals = error_totals(df).groupby(["run_dir", "column"])["relative"].mean().groupby("column").mean()
    out = pd.concat([tab, (100 * totals).to_frame("Total").T])
    out = out[_kind_order(list(out.columns))]
    out.columns.name = None
    return out


def paper_frame(table: str) -> pd.DataFrame:
    """Chen et al. Table ``table`` as a frame: index ``Layer-1 … Layer-8, Total``, one column per kind."""
    if table not in EACG_TABLES:
        raise ValueError(f"unknown paper table {table!r}; allowed: {', '.join(EACG_TABLES)}")
    values = EACG_TABLES[table]["values"]  # type: ignore[index]
    n = len(next(iter(values.values()))) - 1  # type: ignore[union-attr]
    return pd.DataFrame(values, index=[f"Layer-{i}" for i in range(1, n + 1)] + ["Total"], dtype=float)


def paper_match_table(errors: pd.DataFrame, table: str) -> pd.DataFrame:
    """How close our layer-wise errors at each logged θ^t are to the paper's Table ``table``: to pick the θ to report.

    Per logging batch (when logged) and update: the errors averaged over runs, compared with the
    paper layer by layer. ``score`` is the mean of |log10(ours / paper)| over the (layer, kind)
    pairs where both are positive (0: equal; 1: a factor of 10 apart), ``pairs`` their number;
    then ours ÷ paper of each kind's Total. Fisher columns per MC count compare with the paper's Fisher.
    """
    paper = paper_frame(table)
    df = errors.assign(column=kind_column(errors))
    keys = [*(["batch"] if _logged(df, "batch") else []), "step"]
    rows = []
    for key, g in df.groupby(keys, sort=True):
        ours = g.groupby(["column", "layer"])["error"].mean().unstack("column")  # (layers, kinds), mean over runs
        ours.index = [f"Layer-{int(i)}" for i in ours.index]
        row: dict[str, object] = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        rows.append({**row, **match_score(ours, paper)})
    return pd.DataFrame(rows).set_index(keys)


def match_score(ours: pd.DataFrame, paper: pd.DataFrame) -> dict[str, float]:
    """``score``, ``pairs`` and each kind's Total ours ÷ paper of :func:`paper_match_table` for one
    layer-wise table ``ours`` (index ``Layer-1 …``, one column per kind column) against ``paper``."""
    total = np.sqrt((ours**2).sum(axis=0, min_count=1))
    logs: list[float] = []
    ratios: dict[str, float] = {}
    for c in _kind_order(list(ours.columns)):
        base = _base_kind(c)
        if base not in paper or paper[base].isna().all():
            continue
        r = (ours[c] / paper[base].reindex(ours.index)).to_numpy(float)
        logs += list(np.abs(np.log10(r[np.isfinite(r) & (r > 0)])))
        ratios[f"{KIND_NAMES[base]}{c[len(base):]} Total ours/paper"] = float(total[c] / paper.loc["Total", base])
    return {"score": float(np.mean(logs)) if logs else np.nan, "pairs": len(logs), **ratios}


def side_by_side(ours: pd.DataFrame, table: str) -> pd.DataFrame:
    """Our layer-wise errors next to the paper's Table ``table`` (e.g. ``"table2"``), with their ratio.

    Per kind: ``<Kind> ours``, ``<Kind> paper`` and ``<Kind> ours/paper`` (ours ÷ paper; NaN where
    the paper has 0 or nothing). Fisher logged with several MC sample counts gives one ``ours``
    and one ratio column per count. Layers present in only one side (a net of another depth)
    show NaN on the other side.
    """
    paper = paper_frame(table)
    index = list(dict.fromkeys([*[i for i in ours.index if i != "Total"], *paper.index[:-1], "Total"]))
    cols: dict[str, pd.Series] = {}
    for kind in KINDS:
        name = KIND_NAMES[kind]
        p = paper[kind].reindex(index)
        mine = [c for c in ours.columns if _base_kind(c) == kind] or [kind]
        for c in mine:
            suffix = c[len(kind):]  # "" or " (MC m)"
            cols[f"{name}{suffix} ours"] = ours[c].reindex(index) if c in ours else pd.Series(np.nan, index=index)
        cols[f"{name} paper"] = p
        for c in mine:
            suffix = c[len(kind):]
            cols[f"{name}{suffix} ours/paper"] = cols[f"{name}{suffix} ours"] / p.where(p > 0)
    return pd.DataFrame(cols, index=index)


def _numeric(df: pd.DataFrame | pd.Series, col: str) -> pd.Series:
    return pd.to_numeric(df[col], errors="coerce") if col in df else pd.Series(np.nan, index=df.index)


def per_run_stats(runs: pd.DataFrame, metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run (index ``run_dir``): final metrics, times in seconds and mean CG iterations.

    Columns ``steps, train_loss, test_acc`` (in %), ``wall_time`` (measured solver time),
    ``quiet_time`` (the quiet-machine time of :mod:`curvlab.report.timing`; NaN without a cost), ``elapsed`` and
    ``log_time`` (Hessian-error logging; NaN for runs written before they existed),
    ``cg_iters`` / ``cg_iters_mean`` (mean over updates of the most / mean CG iterations of a
    system; NaN where the solver logs none).
    """
    out = pd.DataFrame(index=runs["run_dir"])
    for col in ("steps", "train_loss", "test_acc", "wall_time", "quiet_time", "elapsed", "log_time"):
        out[col] = _numeric(runs, col).to_numpy()
    out["test_acc"] *= 100
    for col in ("cg_iters", "cg_iters_mean"):
        if metrics is not None and col in metrics:
            out[col] = metrics.assign(v=_numeric(metrics, col)).groupby("run_dir")["v"].mean()
        else:
            out[col] = np.nan
    return out


_STAT_NAMES = {"steps": "steps", "train_loss": "train loss", "test_acc": "test acc (%)",
               "wall_time": "solver time", "quiet_time": "quiet-machine time", "elapsed": "elapsed",
               "log_time": "Hessian-log time",
               "cg_iters": "CG iters (max)", "cg_iters_mean": "CG iters (mean)"}
_TIMES = ("wall_time", "quiet_time", "elapsed", "log_time")


def _present(stats: pd.DataFrame) -> tuple[list[str], float, str]:
    """The stats columns with a nonzero value (an all-zero column says nothing), and the time unit of the
    longest time among them."""
    cols = [c for c in _STAT_NAMES if stats[c].notna().any() and stats[c].fillna(0).ne(0).any()]
    longest = float(np.nanmax(stats[[c for c in _TIMES if c in cols]].to_numpy(float), initial=0.0))
    return cols, *time_unit(longest)


def _stat_name(col: str, unit: str) -> str:
    return f"{_STAT_NAMES[col]} ({unit})" if col in _TIMES else _STAT_NAMES[col]


def final_metrics_table(runs: pd.DataFrame, metrics: pd.DataFrame | None = None, by: str = "label") -> pd.DataFrame:
    """Per group: seeds, completed runs, then the final metrics, times and CG iterations, mean ± std over seeds."""
    if runs.empty:
        raise ValueError("final_metrics_table: no runs")
    stats = per_run_stats(runs, metrics)
    cols, div, unit = _present(stats)
    rows = []
    for key, g in sorted(runs.groupby(by), key=lambda kv: natural_key(kv[0])):
        row: dict[str, object] = {by: key, "seeds": len(g), "completed": int((g["status"] == "completed").sum())}
        s = stats.loc[g["run_dir"]]
        for col in cols:
            row[_stat_name(col, unit)] = mean_pm(s[col].dropna() / (div if col in _TIMES else 1))
        rows.append(row)
    return pd.DataFrame(rows).set_index(by)


def runs_table(runs: pd.DataFrame, metrics: pd.DataFrame | None = None,
               dropped: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run (index ``run``): group label, seed, status, final metrics, times, CG iterations,
    and ``used``: whether it is averaged, or which longer run of the same seed replaced it."""
    both = pd.concat([runs.assign(used="yes"), *([] if dropped is None or dropped.empty else [
        dropped.assign(used="no: the longer run " + dropped["kept"].map(dict(zip(runs["run_dir"], runs["run"])))
                       + " of this seed is used")])])
    stats = per_run_stats(both, metrics)
    cols, div, unit = _present(stats)
    out = pd.DataFrame({"label": both["label"].to_numpy(), "seed": both["seed"].to_numpy(),
                        "status": both["status"].to_numpy()}, index=pd.Index(both["run"], name="run"))
    for col in cols:
        out[_stat_name(col, unit)] = (stats[col] / (div if col in _TIMES else 1)).to_numpy()
    out["used"] = both["used"].to_numpy()
    return out.sort_values(["label", "seed"], kind="stable", key=lambda c: c.map(natural_key) if c.name == "label"
                           else c)


def cr_rate_table(metrics: pd.DataFrame, cr_labels: list[str], window: int = 200, period: int = 100) -> pd.DataFrame:
    """How much CR raises the step over the scheduled learning rate (Bakker et al. Section 3.2).

    Per CR group: the median ratio α/lr over the first and the last ``window`` updates,
    the largest period-``period`` moving average of α/lr over full windows (the first average is at
    update ``period`` − 1, so a few early updates cannot make the peak), and the update where it
    peaks (medians over seeds). ``lr`` is the base method's scheduled rate that CR replaces.
    """
    rows = []
    for label in cr_labels:
        per_run = []
        for _, g in metrics[metrics["label"] == label].groupby("run_dir"):
            g = g.dropna(subset=["step_size"]).sort_values("step")
            ratio = pd.to_numeric(g["step_size"]) / pd.to_numeric(g["lr"])
            ma = ratio.rolling(period).mean().to_numpy()  # full windows only: no early partial average peaks
            peak = int(np.nanargmax(ma)) if np.isfinite(ma).any() else None
            per_run.append({"alpha/lr, first updates": ratio.iloc[:window].median(),
                            "alpha/lr, last updates": ratio.iloc[-window:].median(),
                            "max moving-average alpha/lr": np.nan if peak is None else ma[peak],
                            "at update": np.nan if peak is None else float(g["step"].iloc[peak]),
                            "updates": float(len(g))})
        if per_run:
            rows.append({"label": label, "seeds": len(per_run), **pd.DataFrame(per_run).median().to_dict()})
    if not rows:
        return pd.DataFrame()
    tab = pd.DataFrame(rows).set_index("label")
    tab["at update"] = tab["at update"].round().astype("Int64")  # <NA>: no run as long as one window
    return tab.astype({"updates": int})


def mean_pm(vals: pd.Series) -> str:
    """``mean ± std``; the value alone where the seeds agree (a run length: ``2000``, not ``2000 ± 0``)."""
    if vals.empty:
        return "-"
    if vals.nunique() == 1:
        return f"{vals.iloc[0]:.4g}"
    return f"{vals.mean():.4g} ± {vals.std(ddof=1):.2g}"


def _fmt(v: object, floatfmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (float, np.floating)):
        return format(float(v), floatfmt)
    return str(v)


def to_markdown(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub Markdown table; the index is the first column, NaN shows as ``-``; cells as :func:`md_text`."""
    esc = lambda v: md_text(v).replace("|", "\\|")  # noqa: E731  (a bare pipe would split the cell)
    head = [esc(df.index.name or ""), *map(esc, df.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(df.columns)) + "|"]
    for idx, row in df.astype(object).iterrows():  # object rows keep ints as ints
        lines.append("| " + " | ".join([esc(idx), *(esc(_fmt(v, floatfmt)) for v in row)]) + " |")
    return "\n".join(lines) + "\n"


def to_latex(df: pd.DataFrame, caption: str = "", floatfmt: str = ".4f") -> str:
    """A ``booktabs`` LaTeX table; NaN shows as ``-``."""
    cols = "l" + "r" * len(df.columns)
    head = " & ".join(tex_text(str(c)) for c in [df.index.name or "", *df.columns])
    body = [" & ".join(tex_text(x) for x in [str(i), *(_fmt(v, floatfmt) for v in row)]) + r" \\"
            for i, row in df.astype(object).iterrows()]
    return "\n".join([
        r"\begin{table}[ht]", r"\centering",
        *([rf"\caption{{{tex_text(caption)}}}"] if caption else []),
        rf"\begin{{tabular}}{{{cols}}}", r"\toprule", head + r" \\", r"\midrule", *body,
        r"\bottomrule", r"\end{tabular}", r"\end{table}", "",
    ])


def write_table(df: pd.DataFrame, out_dir: str | Path, name: str, caption: str = "",
                floatfmt: str = ".4f") -> list[Path]:
    """Write ``name.md`` (caption as a heading line), ``name.csv`` and ``name.tex`` into ``out_dir``.

    A multi-level index (e.g. batch, step) becomes one ``batch 10, step 2`` column in Markdown
    and LaTeX, and one column per level in the CSV.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = safe_name(name)
    csv = df
    if df.index.nlevels > 1:
        csv = df.reset_index()
        df = df.set_axis([", ".join(f"{n} {_fmt(v, 'g')}" for n, v in zip(df.index.names, i)) for i in df.index])
    md = (f"**{md_text(caption)}**\n\n" if caption else "") + to_markdown(df, floatfmt)
    csv_text = (csv_safe(csv).to_csv(index_label=csv_cell(df.index.name or "")) if csv is df
                else csv_safe(csv).to_csv(index=False))
    paths = []
    for suffix, text in ((".md", md), (".csv", csv_text), (".tex", to_latex(df, caption, floatfmt))):
        with new_file(out, name + suffix) as f:
            f.write(text.encode())
        paths.append(out / (name + suffix))
    return paths
