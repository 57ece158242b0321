"""Chen et al.'s own protocol for Tables 2–5: layer-wise errors averaged over θ⁰ … θ^{s−1}.

The text under Table 2 derives each value "from averaging the errors of the initial parameters
θ⁰ to the parameters θ^{s−1}" and never gives s, so the report averages for several s
(:data:`S_VALUES`). Runs log the errors at θ⁰ … θ^{first−1} and then every ``every`` updates
(``log.hessian_first``, ``log.hessian_every``): the mean over all s updates is taken of the
errors linearly interpolated between logged updates to every update (exact while every
update in the window was logged), and a run whose logged updates do not reach θ^{s−1} is left
out of that s. Per run, then mean ± std over runs (seeds).

The Fisher's sampling noise: a Monte-Carlo (or empirical) Fisher block on a logging batch of B
samples is its expectation plus a zero-mean average of B per-sample terms, so its squared error
is ``err² ≈ b² + a²/B`` (bias b, noise a/√B). :func:`fisher_batch_noise` fits that line in 1/B
across the logged batches and solves for the batch at which the paper's output-layer Fisher
error would come out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from curvlab.report.tables import (
    KIND_NAMES, _base_kind, _kind_order, _logged, kind_column, match_score, paper_frame, paper_match_table,
    write_table,
)

__all__ = ["S_VALUES", "protocol_errors", "bias_rows", "covered", "protocol_table", "protocol_vs_paper",
           "fisher_batch_noise", "render_protocol"]

S_VALUES = (10, 100, 1000, 4000)


def protocol_errors(errors: pd.DataFrame, s: int) -> pd.DataFrame:
    """Per run, logging batch (when logged), kind column and layer: the error averaged over θ⁰ … θ^{s−1}.

    Args:
        errors: ``hessian_errors.csv`` rows (``run_dir, step, layer, kind, error`` …).
        s: the number of first updates to average over.

    Returns:
        Columns ``run_dir, [batch,] column, layer, error, error2, logged``: ``error`` the mean of the
        interpolated errors over updates 0 … s−1, ``error2`` the mean of their squares, ``logged``
        the number of logged updates in that window. Runs not logged from θ⁰ up to θ^{s−1} are left out.
    """
    if s < 1:
        raise ValueError(f"s must be >= 1 (the number of first updates to average over), got {s}")
    errors = bias_rows(errors)
    df = errors.assign(column=kind_column(errors), error=pd.to_numeric(errors["error"], errors="coerce"))
    keys = ["run_dir", *(["batch"] if _logged(df, "batch") else []), "column", "layer"]
    grid = np.arange(s, dtype=float)
    rows = []
    for key, g in df.groupby(keys, sort=True):
        per_step = g.groupby("step")["error"].mean()  # one value per logged update
        steps = per_step.index.to_numpy(float)
        if steps[0] > 0 or steps[-1] < s - 1:
            continue
        curve = np.interp(grid, steps, per_step.to_numpy(float))  # (s,): the error at θ⁰ … θ^{s−1}
        rows.append({**dict(zip(keys, key)), "error": float(curve.mean()), "error2": float((curve**2).mean()),
                     "logged": int((steps < s).sum())})
    return pd.DataFrame(rows, columns=[*keys, "error", "error2", "logged"])


def bias_rows(errors: pd.DataFrame) -> pd.DataFrame:
    """The rows of the blocks B_t that Tables 2–5 compare (a conv layer's ``block`` = ``weight`` rows left out)."""
    return errors[errors["block"].astype(str) != "weight"] if "block" in errors else errors


def covered(errors: pd.DataFrame, s_values: tuple[int, ...] = S_VALUES) -> list[int]:
    """The s of ``s_values`` that some run's logged updates reach (θ^{s−1} logged or passed)."""
    last = pd.to_numeric(errors["step"], errors="coerce").max() if len(errors) else -1
    return [s for s in s_values if s - 1 <= last]


def _layer_frames(per_run: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Mean and std over runs of one batch's protocol errors: index ``Layer-1 … Total``, one column per kind.

    Each run's Total is √Σ_t err_t² of its own averaged errors; the mean and std are taken over runs.
    """
    lay = per_run.pivot_table(index=["run_dir", "layer"], columns="column", values="error")  # (runs·layers, kinds)
    total = np.sqrt((lay**2).groupby(level="run_dir").sum(min_count=1))  # (runs, kinds)
    mean, std = lay.groupby(level="layer").mean(), lay.groupby(level="layer").std(ddof=1)
    mean.index = std.index = [f"Layer-{int(i)}" for i in mean.index]
    mean.loc["Total"], std.loc["Total"] = total.mean(), total.std(ddof=1)
    order = _kind_order(list(mean.columns))
    return mean[order], std[order], per_run["run_dir"].nunique()


def protocol_table(errors: pd.DataFrame, s_values: tuple[int, ...] = S_VALUES) -> pd.DataFrame:
    """Tables 2–5 by the paper's protocol, one logging batch (the caller splits by ``batch``).

    Index ``(s, row)`` with rows ``Layer-1 … Layer-k, Total``; one column per kind (per Fisher
    variant when several were logged); cells ``mean ± std`` over runs (the value alone for one run).
    ``s`` that no run reaches are left out; raises ValueError when none is reached.
    """
    parts = []
    for s in covered(errors, s_values):
        per_run = protocol_errors(errors, s)
        if per_run.empty:
            continue
        mean, std, n = _layer_frames(per_run)
        cells = pd.DataFrame({c: [_cell(m, d, n) for m, d in zip(mean[c], std[c])] for c in mean.columns},
                             index=mean.index)
        parts.append(cells.set_axis(pd.MultiIndex.from_product([[s], cells.index], names=["s", "row"])))
    if not parts:
        raise ValueError(f"protocol_table: no run was logged from θ^0 through θ^(s-1) for any s in {list(s_values)}")
    out = pd.concat(parts)
    out.columns.name = None
    return out


def _cell(mean: float, std: float, runs: int) -> str:
    """``mean ± std`` over runs; the mean alone for one run; ``-`` where the kind was not logged."""
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.3g}" if runs == 1 or not np.isfinite(std) else f"{mean:.3g} ± {std:.2g}"


def _fisher_columns(columns: list[str]) -> list[str]:
    return [c for c in _kind_order(columns) if _base_kind(c) == "fisher"]


def protocol_vs_paper(errors: pd.DataFrame, table: str, s_values: tuple[int, ...] = S_VALUES) -> pd.DataFrame:
    """Per logging batch and s: how close the protocol's errors come to Chen et al. Table ``table``,
    beside the best single (θ, batch) point of :func:`curvlab.report.tables.paper_match_table`.

    Columns: ``runs``, ``logged θ`` (logged updates in the window, of s), the ``score`` (mean
    |log10(ours/paper)| over layers and kinds, on the means over runs; 0 = equal, 1 = a factor 10),
    each kind's Total ours ÷ paper, and each Fisher variant's output-layer error (mean ± std over
    runs) beside the paper's.
    """
    paper = paper_frame(table)
    errors = bias_rows(errors)
    has_batch = _logged(errors, "batch")
    batches = sorted(errors["batch"].dropna().unique()) if has_batch else [None]
    rows: list[dict[str, object]] = []
    out_layer = None
    for batch in batches:
        part = errors if batch is None else errors[errors["batch"] == batch]
        for s in covered(part, s_values):
            per_run = protocol_errors(part, s)
            if per_run.empty:
                continue
            mean, std, n = _layer_frames(per_run)
            out_layer = mean.index[-2]  # the last layer before Total: the output layer
            where = ("" if batch is None else f"batch {int(batch)}, ") + f"θ^0…θ^{s - 1}"
            row: dict[str, object] = {"average over": where, "runs": n,
                                      "logged θ": f"{int(per_run['logged'].max())} of {s}",
                                      **match_score(mean.drop(index="Total"), paper)}
            for c in _fisher_columns(list(mean.columns)):
                row[f"{KIND_NAMES['fisher']}{c[len('fisher'):]} {out_layer}"] = _cell(
                    mean.loc[out_layer, c], std.loc[out_layer, c], n)
            rows.append(row)
    if not rows:
        raise ValueError("protocol_vs_paper: no run was logged from θ^0 through θ^(s-1) for any s in "
                         f"{list(s_values)}")
    match = paper_match_table(errors, table)
    if match["score"].notna().any():
        best = match["score"].idxmin()
        key = dict(zip(match.index.names, best if isinstance(best, tuple) else (best,)))
        point = errors[errors["step"] == key["step"]]
        if "batch" in key:
            point = point[point["batch"] == key["batch"]]
        ours = point.assign(column=kind_column(point)).pivot_table(index="layer", columns="column", values="error")
        ours.index = [f"Layer-{int(i)}" for i in ours.index]
        where = ("" if "batch" not in key else f"batch {int(key['batch'])}, ") + f"θ^{int(key['step'])} alone (best)"
        row = {"average over": where, "runs": point["run_dir"].nunique(), "logged θ": "1",
               **match.loc[best].to_dict()}
        for c in _fisher_columns(list(ours.columns)):
            row[f"{KIND_NAMES['fisher']}{c[len('fisher'):]} {ours.index[-1]}"] = f"{ours[c].iloc[-1]:.3g}"
        rows.append(row)
    tab = pd.DataFrame(rows).set_index("average over")
    if out_layer == paper.index[-2]:  # same depth as the paper's net: its output-layer Fisher under every variant
        fisher_cols = [c for c in tab.columns if c.startswith(KIND_NAMES["fisher"]) and c.endswith(out_layer)]
        tab.loc[f"paper (Table {table[-1]})", fisher_cols] = f"{paper.loc[out_layer, 'fisher']:.3g}"
    tab["pairs"] = tab["pairs"].astype("Int64")
    tab["runs"] = tab["runs"].astype("Int64")
    return tab


def fisher_batch_noise(errors: pd.DataFrame, table: str | None = None,
                       s_values: tuple[int, ...] = S_VALUES) -> pd.DataFrame:
    """The output-layer Fisher error against the logging batch B, and the B that gives the paper's value.

    Per Fisher variant and s: the root-mean-square error over θ⁰ … θ^{s−1} (mean over runs of
    the protocol's mean err²) at each logged B; ``slope`` = d log err / d log B (−0.5: pure
    sampling noise, 0: pure bias); the least-squares line err² = b² + a²/B over the batches, its
    ``noise a`` (the error at B = 1 without bias) and ``bias b`` (clipped at 0); and, with a
    paper ``table`` and a net as deep as the paper's, the paper's output-layer Fisher error P and
    ``B for paper`` = a²/(P² − b²) (NaN when P ≤ b, the bias alone is above the paper's value, or
    when it lies more than 10× below the smallest logged batch: the error there is nearly all bias and
    its tiny noise term does not say which batch would give the paper's value).
    Needs at least two logging batches; empty otherwise.
    """
    if not _logged(errors, "batch") or errors["batch"].dropna().nunique() < 2:
        return pd.DataFrame()
    fisher = bias_rows(errors)
    fisher = fisher[fisher["kind"].astype(str) == "fisher"]
    if fisher.empty:
        return pd.DataFrame()
    last = int(pd.to_numeric(fisher["layer"]).max())
    out_rows = fisher[pd.to_numeric(fisher["layer"]) == last]
    paper = paper_frame(table) if table else None
    same_net = paper is not None and paper.index[-2] == f"Layer-{last}"  # the paper's output layer is ours
    target = float(paper.loc[f"Layer-{last}", "fisher"]) if same_net else np.nan
    rows = []
    for s in covered(out_rows, s_values):
        per_run = protocol_errors(out_rows, s)
        if per_run.empty:
            continue
        ms = per_run.groupby(["column", "batch"])["error2"].mean()  # mean err² over runs
        for col in _fisher_columns(list(ms.index.get_level_values("column").unique())):
            e2 = ms.loc[col]  # (batches,)
            if len(e2) < 2:
                continue
            b_inv = 1.0 / e2.index.to_numpy(float)
            slope_a2, b2 = np.polyfit(b_inv, e2.to_numpy(float), 1)  # err² = b² + a²·(1/B)
            log_slope = np.polyfit(np.log(e2.index.to_numpy(float)), 0.5 * np.log(e2.to_numpy(float)), 1)[0]
            a2, bias2 = max(float(slope_a2), 0.0), max(float(b2), 0.0)
            row: dict[str, object] = {"variant": f"{KIND_NAMES['fisher']}{col[len('fisher'):]}", "s": s,
                                      "runs": per_run["run_dir"].nunique()}
            row.update({f"err at B={int(b)}": float(np.sqrt(v)) for b, v in e2.items()})
            row.update({"slope": float(log_slope), "noise a": np.sqrt(a2), "bias b": np.sqrt(bias2)})
            if same_net:
                need = a2 / (target**2 - bias2) if target**2 > bias2 and a2 > 0 else np.nan
                row.update({"paper": target, "B for paper": need if need >= e2.index.min() / 10 else np.nan})
            rows.append(row)
    return pd.DataFrame(rows).set_index(["variant", "s"]) if rows else pd.DataFrame()


def render_protocol(errors: pd.DataFrame, paper: str | None, out: Path, stem: str, head: str) -> list[Path]:
    """Write one curve's protocol tables: ``<stem>[_b<B>]_protocol`` per logging batch, and with a paper
    table ``<stem>_protocol_vs_paper`` and ``<stem>_fisher_batch_noise``; nothing when no s is reached."""
    s_values = tuple(covered(errors))
    if not s_values:
        return []
    written: list[Path] = []
    has_batch = _logged(errors, "batch")
    batches = sorted(errors["batch"].dropna().unique()) if has_batch else [None]
    how = ("errors linearly interpolated between logged updates, mean over θ^0…θ^(s-1) per run, then mean ± std "
           "over runs")
    for batch in batches:
        part = errors if batch is None else errors[errors["batch"] == batch]
        tag = "" if len(batches) == 1 else f"_b{int(batch)}"
        written += write_table(protocol_table(part, s_values), out, f"{stem}{tag}_protocol",
                               f"{head}: layer-wise errors by Chen et al.'s protocol for s = "
                               f"{', '.join(map(str, s_values))} ({how})"
                               + ("" if batch is None else f", logging batch {int(batch)}"))
    if paper:
        written += write_table(protocol_vs_paper(errors, paper, s_values), out, f"{stem}_protocol_vs_paper",
                               f"{head}: the protocol's averages against Chen et al. Table {paper[-1]} beside the "
                               "best single (theta, batch) point (score = mean |log10(ours/paper)| over layers and "
                               "kinds; logged theta = logged updates in the window)", floatfmt=".3g")
        noise = fisher_batch_noise(errors, paper, s_values)
        if not noise.empty:
            written += write_table(noise, out, f"{stem}_fisher_batch_noise",
                                   f"{head}: output-layer Fisher error against the logging batch B (rms over "
                                   "θ^0…θ^(s-1)); fit err² = b² + a²/B; B for paper = a²/(P² − b²)",
                                   floatfmt=".3g")
    return written
