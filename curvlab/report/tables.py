"""Tables from tidy frames, written as Markdown, CSV and LaTeX (no extra dependencies).

The builders (``*_table``) turn frames from :mod:`curvlab.report.load` into small frames;
:func:`write_table` renders any such frame into the three formats.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from curvlab.report.paper import EACG_TABLES, KINDS

__all__ = [
    "hessian_error_table", "side_by_side", "final_metrics_table", "cr_rate_table",
    "to_markdown", "to_latex", "write_table",
]

_KIND_NAMES = {"fisher": "Fisher", "gn": "GN", "pch1": "PCH-1", "pch2": "PCH-2", "pch": "PCH-1", "exact": "exact"}


def hessian_error_table(errors: pd.DataFrame, steps: int | None = None) -> pd.DataFrame:
    """Layer-wise errors per curvature kind, as in Tables 2–5 of Chen et al.

    Each run's error is averaged over its first ``steps`` logged updates (θ⁰ … θ^{s−1};
    all of them when ``None``), then over runs (seeds). The ``Total`` row is √Σ_t err_t²
    over layers, as in the paper (0.1535 = √Σ of the Fisher column of Table 2).

    Args:
        errors: rows ``run_dir, step, layer, kind, error`` (``Runs.errors``).
        steps: s, the number of first updates to average over.

    Returns:
        Index ``Layer-1 … Layer-k, Total``; one column per kind (``fisher, gn, pch1, pch2``
        first, in that order); NaN where a kind was not computed (GN for a non-convex loss).
    """
    if errors.empty:
        raise ValueError("hessian_error_table: no hessian_errors.csv rows; run an experiment with curvature errors")
    df = errors.copy()
    if steps is not None:
        first = df.groupby("run_dir")["step"].transform(lambda s: s.rank(method="dense"))
        df = df[first <= steps]
    per_run = df.groupby(["run_dir", "kind", "layer"])["error"].mean()  # mean over the first s steps
    mean = per_run.groupby(["kind", "layer"]).mean().unstack("kind")  # mean over seeds; (layers, kinds)
    order = [k for k in KINDS if k in mean.columns] + sorted(c for c in mean.columns if c not in KINDS)
    mean = mean[order]
    mean.index = [f"Layer-{int(i)}" for i in mean.index]
    total = np.sqrt((mean**2).sum(axis=0, min_count=1))
    out = pd.concat([mean, total.to_frame("Total").T])
    out.columns.name = None
    return out


def side_by_side(ours: pd.DataFrame, table: str) -> pd.DataFrame:
    """Our layer-wise errors next to the paper's Table ``table`` (e.g. ``"table2"``).

    Columns alternate ``<Kind> ours`` / ``<Kind> paper``. Layers present in only one side
    (a net of another depth) show NaN on the other side.
    """
    if table not in EACG_TABLES:
        raise ValueError(f"side_by_side: unknown table {table!r}; allowed: {', '.join(EACG_TABLES)}")
    values = EACG_TABLES[table]["values"]  # type: ignore[index]
    n = len(next(iter(values.values()))) - 1  # type: ignore[union-attr]
    paper = pd.DataFrame(values, index=[f"Layer-{i}" for i in range(1, n + 1)] + ["Total"], dtype=float)
    index = list(dict.fromkeys([*[i for i in ours.index if i != "Total"], *paper.index[:-1], "Total"]))
    cols: dict[str, pd.Series] = {}
    for kind in KINDS:
        name = _KIND_NAMES[kind]
        cols[f"{name} ours"] = ours[kind].reindex(index) if kind in ours else pd.Series(np.nan, index=index)
        cols[f"{name} paper"] = paper[kind].reindex(index)
    return pd.DataFrame(cols, index=index)


def final_metrics_table(runs: pd.DataFrame, by: str = "label") -> pd.DataFrame:
    """Final ``train_loss``, ``test_acc`` and ``wall_time`` per group: mean ± std over seeds."""
    if runs.empty:
        raise ValueError("final_metrics_table: no runs")
    rows = []
    for key, g in runs.groupby(by, sort=True):
        row: dict[str, object] = {by: key, "seeds": len(g), "completed": int((g["status"] == "completed").sum())}
        for col in ("train_loss", "test_acc", "wall_time", "steps"):
            vals = pd.to_numeric(g.get(col), errors="coerce").dropna() if col in g else pd.Series(dtype=float)
            row[col] = _pm(vals)
        rows.append(row)
    return pd.DataFrame(rows).set_index(by)


def cr_rate_table(metrics: pd.DataFrame, cr_labels: list[str], window: int = 200, period: int = 100) -> pd.DataFrame:
    """How much CR raises the step over the scheduled learning rate (Bakker et al. Section 3.2).

    Per CR group: the median ratio α/lr over the first and the last ``window`` updates,
    the largest period-``period`` moving average of α/lr, and the update where it peaks
    (medians over seeds). ``lr`` is the base method's scheduled rate that CR replaces.
    """
    rows = []
    for label in cr_labels:
        per_run = []
        for _, g in metrics[metrics["label"] == label].groupby("run_dir"):
            g = g.dropna(subset=["step_size"]).sort_values("step")
            ratio = pd.to_numeric(g["step_size"]) / pd.to_numeric(g["lr"])
            ma = ratio.rolling(period, min_periods=1).mean()
            per_run.append({"alpha/lr, first updates": ratio.iloc[:window].median(),
                            "alpha/lr, last updates": ratio.iloc[-window:].median(),
                            "max moving-average alpha/lr": ma.max(),
                            "at update": float(g["step"].iloc[int(np.argmax(ma.to_numpy()))]),
                            "updates": float(len(g))})
        if per_run:
            rows.append({"label": label, "seeds": len(per_run), **pd.DataFrame(per_run).median().to_dict()})
    if not rows:
        return pd.DataFrame()
    tab = pd.DataFrame(rows).set_index("label")
    return tab.astype({"at update": int, "updates": int})


def _pm(vals: pd.Series) -> str:
    if vals.empty:
        return "-"
    if len(vals) == 1:
        return f"{vals.iloc[0]:.4g}"
    return f"{vals.mean():.4g} ± {vals.std(ddof=1):.2g}"


def _fmt(v: object, floatfmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (float, np.floating)):
        return format(float(v), floatfmt)
    return str(v)


def to_markdown(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub Markdown table; the index is the first column, NaN shows as ``-``."""
    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731  (a bare pipe would split the cell)
    head = [esc(df.index.name or ""), *map(esc, df.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(df.columns)) + "|"]
    for idx, row in df.astype(object).iterrows():  # object rows keep ints as ints
        lines.append("| " + " | ".join([esc(idx), *(esc(_fmt(v, floatfmt)) for v in row)]) + " |")
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("|", r"$|$")):
        s = s.replace(a, b)
    return s


def to_latex(df: pd.DataFrame, caption: str = "", floatfmt: str = ".4f") -> str:
    """A ``booktabs`` LaTeX table; NaN shows as ``-``."""
    cols = "l" + "r" * len(df.columns)
    head = " & ".join(_tex(str(c)) for c in [df.index.name or "", *df.columns])
    body = [" & ".join(_tex(x) for x in [str(i), *(_fmt(v, floatfmt) for v in row)]) + r" \\"
            for i, row in df.astype(object).iterrows()]
    return "\n".join([
        r"\begin{table}[ht]", r"\centering",
        *([rf"\caption{{{_tex(caption)}}}"] if caption else []),
        rf"\begin{{tabular}}{{{cols}}}", r"\toprule", head + r" \\", r"\midrule", *body,
        r"\bottomrule", r"\end{tabular}", r"\end{table}", "",
    ])


def write_table(df: pd.DataFrame, out_dir: str | Path, name: str, caption: str = "",
                floatfmt: str = ".4f") -> list[Path]:
    """Write ``name.md`` (caption as a heading line), ``name.csv`` and ``name.tex`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = (f"**{caption}**\n\n" if caption else "") + to_markdown(df, floatfmt)
    paths = [out / f"{name}.md", out / f"{name}.csv", out / f"{name}.tex"]
    paths[0].write_text(md)
    df.to_csv(paths[1], index_label=df.index.name or "")
    paths[2].write_text(to_latex(df, caption, floatfmt))
    return paths
