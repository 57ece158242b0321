"""Figures from tidy frames: PNG + PDF with matplotlib (Agg), mean and spread over seeds shaded.

Builders return a matplotlib ``Figure``; :func:`save` writes it. The training curves
follow EA-CG Figures 1–12 (loss and test accuracy against wall-clock time and epochs)
and HBP Figure 5; :func:`cr_figure` follows Figures 1–5 of Bakker et al.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, BinaryIO

import matplotlib

matplotlib.use("Agg")  # headless: the report runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from curvlab.report.files import new_file, safe_name  # noqa: E402
from curvlab.report.styles import CurveTraits, natural_sorted, panels  # noqa: E402
from curvlab.report.tables import KIND_NAMES, error_totals, time_unit  # noqa: E402

__all__ = ["mean_std", "curve_stats", "plot_curves", "legend_outside", "legend_right", "colors_for",
           "training_figure", "hessian_error_figure", "cr_figure", "loglog_slope_figure", "appendix_figure",
           "scaling_figure", "save", "fit_loglog_slope", "figure_texts", "caption", "suptitle", "band_note",
           "WALL_NOTE", "TAIL_NOTE"]

_AXIS_NAMES = {
    "wall_time": "solver wall-clock time", "quiet_time": "quiet-machine time", "epoch": "epoch", "step": "iteration",
    "train_loss": "training loss", "test_acc": "test accuracy (%)", "batch_loss": "mini-batch loss",
    "step_size": "learning rate", "test_loss": "test loss",
}
# The footnote of every wall-clock figure (issue 10: the campaign runs two jobs on a 2-core machine).
WALL_NOTE = ("Wall-clock: solver time of each update (evaluation and Hessian-error logging excluded); "
             "runs shared the machine with other jobs, so times include contention. "
             "Per-update costs on a quiet machine: the Table 1 study.")
TAIL_NOTE = ("Thin faint end of a line: updates that only some of the curve's seeds reached (a longer run), "
             "the mean over those seeds.")
_CAPTION = "caption"  # gid of the footer text that save() writes into the files' metadata


def _aligned(metrics: pd.DataFrame, x: str, y: str, group: str) -> pd.DataFrame:
    """Rows ``group, run_dir, step, _x, y`` with a value of ``y`` (runs aligned on ``step``)."""
    df = metrics[list(dict.fromkeys([group, "run_dir", "step", x, y]))].copy()
    df[y] = pd.to_numeric(df[y], errors="coerce")
    df["_x"] = pd.to_numeric(df[x], errors="coerce")
    return df.dropna(subset=[y])


def mean_std(metrics: pd.DataFrame, x: str, y: str, group: str = "label") -> pd.DataFrame:
    """Mean and std over runs (seeds) of ``y`` and ``x`` at each logged step, per group.

    Runs are aligned on ``step`` (every seed logs the same steps); ``x`` is averaged too,
    which matters for wall-clock time. Steps where ``y`` is empty are dropped.

    Returns:
        Columns ``group, step, x, y, y_std, n`` (``y_std`` is 0 for a single run).
    """
    st = curve_stats(metrics, x, y, group)
    return st.assign(y_std=st["hi"] - st["y"])[["group", "step", "x", "y", "y_std", "n"]]


def curve_stats(metrics: pd.DataFrame, x: str, y: str, group: str = "label", log: bool = False) -> pd.DataFrame:
    """Centre and spread over runs at each step, per group: ``group, step, x, y, lo, hi, n``.

    Linear: mean and mean ± std. ``log=True`` (for a log axis): geometric mean and
    exp(mean ± std) of log y, so that the band stays positive and symmetric on the axis.
    ``x`` is the mean over runs (wall-clock time differs between seeds).
    """
    df = _aligned(metrics, x, y, group)
    if log:
        df = df[df[y] > 0].assign(**{y: np.log(df.loc[df[y] > 0, y])})
    g = df.groupby([group, "step"])
    mid, sd = g[y].mean(), g[y].std(ddof=1).fillna(0.0)
    out = pd.DataFrame({"x": g["_x"].mean(), "y": mid, "lo": mid - sd, "hi": mid + sd, "n": g[y].size()})
    if log:
        out[["y", "lo", "hi"]] = np.exp(out[["y", "lo", "hi"]])
    return out.reset_index().rename(columns={group: "group"})


def _wants_log(values: pd.Series) -> bool:
    """Log scale when every value is positive and they span more than a decade."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    return bool(len(v)) and bool((v > 0).all()) and float(v.max()) > 10 * float(v.min())


def plot_curves(ax: plt.Axes, stats: pd.DataFrame, colors: dict[str, str], x_scale: float = 1.0,
                y_scale: float = 1.0, smooth: int = 1, lower: float | None = None,
                upper: float | None = None, styles: dict[str, Any] | None = None) -> None:
    """Draw :func:`curve_stats` output: one line per group, its spread shaded.

    Where fewer of a group's runs reach a step than at its start (a seed trained longer),
    the line goes on thin and faint (:data:`TAIL_NOTE`). ``smooth`` > 1 applies a moving average
    (the first ``smooth`` − 1 points average the steps so far); the band is clipped to
    [``lower``, ``upper``] (accuracy stays within 0–100 %). ``styles`` gives each group's line style.
    """
    for name, s in stats.groupby("group", sort=True):
        s = s.sort_values("step")
        x = s["x"] / x_scale
        y, lo, hi = (s[c].rolling(smooth, min_periods=1).mean() * y_scale for c in ("y", "lo", "hi"))
        lo, hi = lo.clip(lower, upper), hi.clip(lower, upper)
        full = (s["n"] == s["n"].max()).to_numpy()
        last = int(np.flatnonzero(full)[-1]) + 1  # the steps every run of the group reached
        color, ls = colors[str(name)], (styles or {}).get(str(name), "-")
        ax.plot(x[:last], y[:last], color=color, ls=ls, lw=1.4, label=str(name))
        if last < len(s):
            ax.plot(x[last - 1:], y[last - 1:], color=color, ls=ls, lw=0.8, alpha=0.5)
        if s["n"].max() > 1:
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)


def band_note(log: bool) -> str:
    """What the lines and shading of :func:`plot_curves` mean (the caption of every curve figure)."""
    geo = " (log axis: geometric mean)" if log else ""
    spread = " (log axis: ×/÷ the geometric standard deviation)" if log else ""
    return (f"Lines: mean over each curve's seeds{geo}. Shaded: ± 1 standard deviation over the seeds{spread}; "
            f"no shading: one seed. {TAIL_NOTE}")


def _axis(ax: plt.Axes, x: str, y: str, x_unit: str = "", log: bool = False, x_name: str | None = None) -> None:
    ax.set_xlabel((x_name or _AXIS_NAMES.get(x, x)) + (f" ({x_unit})" if x_unit else ""))
    ax.set_ylabel(_AXIS_NAMES.get(y, y))
    if log:
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", useOffset=False)  # plain values, not "1e-5 + 2.3025"
    ax.grid(alpha=0.3)


def legend_outside(fig: Figure, labels: list[str] | None = None) -> None:
    """One legend for the whole figure, right of the axes (never over data); entries of all axes, once each,
    in the order of ``labels`` (default: natural order, ``split 2`` before ``split 16``)."""
    handles: dict[str, object] = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    names = [n for n in (labels or natural_sorted(handles)) if n in handles]
    if names:
        fig.legend([handles[n] for n in names], names, loc="outside right center", fontsize=8, frameon=False)


def legend_right(ax: plt.Axes) -> None:
    """The axes' own legend, outside on its right (for panels whose entries differ, e.g. fitted slopes)."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def colors_for(names: list[str]) -> dict[str, str]:
    """A fixed colour per curve label (natural order), the same in every panel of a figure (20 distinct beyond 10)."""
    return CurveTraits.each_own(names).colors()


def caption(fig: Figure, text: str, width_in: float | None = None) -> None:
    """The figure's footer: ``text`` wrapped to the figure's width (never clipped); :func:`save` also writes it
    into the PNG's ``Description`` and the PDF's ``Subject`` (and :mod:`curvlab.report.index` lists it)."""
    chars = int(11.5 * (width_in or fig.get_figwidth()))  # ~11 characters of 7-pt text per inch
    fig.supxlabel("\n".join(textwrap.wrap(text, max(chars, 40), break_on_hyphens=False)), fontsize=7, gid=_CAPTION)


def suptitle(fig: Figure, text: str, fontsize: float = 11) -> None:
    """The figure's title, wrapped to its width (a long setting label never runs off the page)."""
    chars = int(7.2 * fig.get_figwidth() * 11 / fontsize)
    fig.suptitle("\n".join(textwrap.wrap(text, max(chars, 30), break_on_hyphens=False)), fontsize=fontsize)


def training_figure(metrics: pd.DataFrame, title: str, group: str = "label", wall_note: str | None = WALL_NOTE,
                    legend_labels: dict[str, str] | None = None, time: str = "wall_time",
                    time_name: str | None = None, traits: CurveTraits | None = None) -> Figure:
    """Training loss and test accuracy (%) against time and epochs.

    EA-CG Figures 1–12 and HBP Figure 5 show the time and epoch panels of the same runs,
    mean and spread over seeds (linear: ± 1 std; the log loss axis: geometric mean ×/÷ the
    geometric std). ``time`` is the column of the time rows (seconds; measured solver time, or
    the quiet-machine time of :mod:`curvlab.report.timing`), ``time_name`` its axis label
    and ``wall_note`` its footnote. ``legend_labels`` renames curves in the legend (e.g. to add seed counts).

    ``traits`` (:func:`curvlab.report.styles.curve_traits`) colours curves by method and dashes them by
    curvature kind; default: each curve its own colour. Up to :data:`~curvlab.report.styles.MAX_CURVES`
    curves: a 2 × 2 figure (rows time, epoch; columns loss, accuracy). More: small multiples, one column
    per panel of :func:`curvlab.report.styles.panels` (rows: loss and accuracy by time, then by epoch),
    axes shared along each row.
    """
    present = set(metrics[group].dropna().astype(str).unique())
    traits = traits if traits is not None else CurveTraits.each_own(present)
    traits = CurveTraits({k: traits.method.get(k, k) for k in present},  # a curve unknown to traits: its own method
                         {k: traits.kind.get(k, "") for k in present})
    colors, styles = traits.colors(), traits.linestyles()
    layout = panels(traits)
    log = _wants_log(metrics.get("train_loss", pd.Series(dtype=float)))
    div, unit = time_unit(float(pd.to_numeric(metrics[time], errors="coerce").max() or 0.0))
    dagger = "†" if wall_note else ""
    cells = [(x, y) for x in (time, "epoch") for y in ("train_loss", "test_acc")]
    if len(layout) == 1:
        fig, grid = plt.subplots(2, 2, figsize=(11, 8), layout="constrained")
        axes = {cell: [grid[i // 2, i % 2]] for i, cell in enumerate(cells)}
    else:
        fig, grid = plt.subplots(4, len(layout), figsize=(3.2 * len(layout) + 2.8, 12), layout="constrained",
                                 sharex="row", sharey="row", squeeze=False)
        axes = {cell: list(grid[i]) for i, cell in enumerate(cells)}
    for (x, y), row in axes.items():
        st = curve_stats(metrics, x, y, group, log=log and y == "train_loss")
        pct = 100.0 if y == "test_acc" and st["y"].max() <= 1.0 else 1.0  # fractions → %
        scale, x_unit = (div, unit) if x == time else (1.0, "")
        for ax, (name, labels) in zip(row, layout):
            part = st[st["group"].astype(str).isin(labels)]
            if y == "train_loss":
                plot_curves(ax, part, colors, x_scale=scale, lower=None if log else 0.0, styles=styles)
            else:
                plot_curves(ax, part, colors, x_scale=scale, y_scale=pct, lower=0.0, upper=100.0, styles=styles)
            _axis(ax, x, y, x_unit, log=log and y == "train_loss", x_name=time_name if x == time else None)
            if len(layout) > 1:
                ax.set_xlabel(ax.get_xlabel() + (dagger if x == time else ""))
                ax.tick_params(labelsize=7, labelleft=ax is row[0])
                ax.xaxis.label.set_fontsize(8)
                ax.yaxis.label.set_visible(ax is row[0])
                if (x, y) == cells[0]:
                    ax.set_title(name, fontsize=10)
    if len(layout) == 1:
        axes[cells[0]][0].set_title(f"by {time_name or 'wall-clock time'}{dagger}", fontsize=9, loc="left")
        axes[cells[2]][0].set_title("by epoch", fontsize=9, loc="left")
    legend_outside(fig, traits.labels())
    if legend_labels and fig.legends:
        for text in fig.legends[0].get_texts():
            text.set_text(legend_labels.get(text.get_text(), text.get_text()))
    several_kinds = len({k for k in traits.kind.values() if k}) > 1  # then panels() splits by kind
    what = "Colour: method; line style: curvature kind. " if several_kinds else ""
    if len(layout) > 1:
        what += ("One panel per " + ("curvature kind (kind-less methods, e.g. SGD, in each)" if several_kinds
                                     else "group of methods") + "; axes shared along each row. ")
    caption(fig, what + band_note(log) + (f" † {wall_note}" if wall_note else ""))
    suptitle(fig, title)
    return fig


def hessian_error_figure(errors: pd.DataFrame, title: str) -> Figure:
    """Each kind's Total error √Σ_t ‖B̃_t − |B_t|‖_F² (left) and its relative error (right) along training.

    One row per logging batch size (``batch``, when logged); one line per kind (Fisher per
    MC sample count, when several); geometric mean ×/÷ geometric std over the runs (seeds) on
    log axes. The relative panel needs the ``reference`` column (‖B_t‖_F) and is left out for
    runs written before it existed. Issue 10 §3: near θ⁰ the relative error shows what the
    absolute numbers hide.
    """
    tot = error_totals(errors)
    batches = sorted(tot["batch"].dropna().unique()) if "batch" in tot else [None]
    has_rel = tot["relative"].notna().any()
    colors = colors_for(list(tot["column"].unique()))
    ncols = 2 if has_rel else 1
    fig, axes = plt.subplots(len(batches), ncols, figsize=(5.5 * ncols, 3.4 * len(batches) + 1.2),
                             layout="constrained", squeeze=False)
    for row, batch in enumerate(batches):
        part = tot if batch is None else tot[tot["batch"] == batch]
        for col, (y, scale, name) in enumerate([("total", 1.0, r"Total $\Vert\tilde{B} - |B|\Vert_F$"),
                                                ("relative", 100.0, r"relative $\Vert\tilde{B} - |B|\Vert_F"
                                                 r" / \Vert B\Vert_F$ (%)")][:ncols]):
            ax = axes[row, col]
            v = part[y].dropna()
            log = bool(len(v)) and bool((v > 0).all())  # errors span decades along training
            stats = curve_stats(part.rename(columns={"column": "kind"}), "step", y, "kind", log=log)
            plot_curves(ax, stats.assign(group=stats["group"].map(_kind_name)),
                        {_kind_name(k): c for k, c in colors.items()}, y_scale=scale)
            _axis(ax, "step", y, log=log)
            ax.set_ylabel(name)
            ax.set_xlabel(r"update $t$ (errors at $\theta^t$)")
            if batch is not None:
                ax.set_title(f"logging batch {int(batch)}", fontsize=9, loc="left")
    legend_outside(fig)
    caption(fig, "Total: the whole block-diagonal matrix's error; relative: over ||B||_F. " + band_note(True)
            .replace("each curve's seeds", "the runs (seeds)"))
    suptitle(fig, title)
    return fig


def _kind_name(column: str) -> str:
    """``fisher (MC 4)`` → ``Fisher (MC 4)``, ``pch1`` → ``PCH-1``."""
    base, _, rest = column.partition(" ")
    return f"{KIND_NAMES.get(base, base)} {rest}".strip()


def cr_figure(metrics: pd.DataFrame, title: str, group: str = "label", cr_groups: list[str] | None = None,
              period: int = 100) -> Figure:
    """Bakker et al. Figures 1–5: (a) the loss with and without CR, (b) the CR learning rate.

    Panel (a) shows the mini-batch loss as a period-``period`` moving average (geometric mean
    ×/÷ geometric std over seeds on the log axis); panel (b) the step size CR chose at every
    iteration and its period-``period`` moving average, for the groups in ``cr_groups``
    (default: all groups whose name contains ``CR``).
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
    names = natural_sorted(metrics[group].dropna().unique())
    log = _wants_log(metrics["batch_loss"])
    plot_curves(a, curve_stats(metrics, "step", "batch_loss", group, log=log), colors_for(names), smooth=period)
    _axis(a, "step", "batch_loss", log=log)
    a.set_ylabel(f"mini-batch loss (moving average, period {period})")
    cr = cr_groups if cr_groups is not None else [n for n in names if "CR" in str(n)]
    for i, name in enumerate(cr):
        s = mean_std(metrics[metrics[group] == name], "step", "step_size", group).sort_values("step")
        b.plot(s["x"], s["y"], color=f"C{(2 * i + 3) % 10}", lw=0.6, alpha=0.6, label=f"{name}: CR rate")
        b.plot(s["x"], s["y"].rolling(period).mean(), color=f"C{(2 * i + 2) % 10}", lw=1.8,  # full windows
               label=f"{name}: moving average ({period})")
    for name in (n for n in names if n not in cr):  # the schedule CR replaces
        s = mean_std(metrics[metrics[group] == name], "step", "step_size", group).sort_values("step")
        b.plot(s["x"], s["y"], "--", color="0.3", lw=1.2, label=f"{name}: learning rate (schedule)")
    b.set_yscale("log")
    b.set_xlabel("iteration")
    b.set_ylabel("learning rate")
    b.grid(alpha=0.3)
    legend_outside(fig)
    caption(fig, f"(a) Loss: moving average over {period} iterations (the first {period - 1} average the iterations "
            f"so far). (b) CR rate: mean over seeds at each iteration (thin) and its moving average over full windows "
            f"of {period} (from iteration {period - 1}); dashed grey: the schedule CR replaces. " + band_note(log))
    suptitle(fig, title)
    return fig


def loglog_slope_figure(data: pd.DataFrame, x: str, y: str, group: str, title: str,
                        slopes: dict[object, float] | None = None) -> Figure:
    """``y`` against ``x`` on log-log axes, one line per ``group``, slope in the legend."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    for i, (name, s) in enumerate(data.groupby(group, sort=True)):
        s = s.sort_values(x)
        lab = f"{group} {name}" + (f" (slope {slopes[name]:.2f})" if slopes and name in slopes else "")
        ax.loglog(s[x], s[y], "o-", color=f"C{i % 10}", ms=3, lw=1.2, label=lab)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3, which="both")
    legend_right(ax)
    ax.set_title(title, fontsize=10)
    return fig


def appendix_figure(data: pd.DataFrame, slopes: pd.DataFrame, fit_max: float) -> Figure:
    """‖H_t − GN_t‖_F/‖H_t‖_F (solid) and ‖H_t − GN_t‖_F (dashed) against c, per layer.

    One panel per block type (bias, weight); ``slopes`` (index ``"<block> layer <t>"``)
    gives the fitted slopes shown in the legend; the grey band marks the fit range.
    """
    blocks = sorted(data["block"].unique())
    fig, axes = plt.subplots(1, len(blocks), figsize=(6 * len(blocks), 4.5), layout="constrained", squeeze=False)
    for ax, block in zip(axes[0], blocks):
        for i, (layer, s) in enumerate(data[data["block"] == block].groupby("layer")):
            s = s.sort_values("c")
            row = slopes.loc[f"{block} layer {layer}"]
            ax.loglog(s["c"], s["rel_error"], "o-", ms=3, color=f"C{i}",
                      label=f"layer {layer}: relative (slope {row['slope rel_error']:.2f})")
            ax.loglog(s["c"], s["abs_error"], "--", color=f"C{i}", alpha=0.6,
                      label=f"layer {layer}: absolute (slope {row['slope abs_error']:.2f})")
        ax.axvspan(data["c"].min(), fit_max, color="0.9", zorder=0)
        ax.set_xlabel("input scale c")
        ax.set_ylabel("||H - GN||_F / ||H||_F  (dashed: ||H - GN||_F)")
        ax.set_title(f"{block} blocks", fontsize=10)
        ax.grid(alpha=0.3)
        legend_right(ax)
    fig.suptitle("Appendix: second-order module term against input scale (tanh, zero biases)", fontsize=11)
    return fig


def scaling_figure(data: pd.DataFrame, title: str, column: str = "seconds", ylabel: str = "seconds per call",
                   anchor: str | None = None, guides: tuple[float, ...] = (1.0, 2.0)) -> Figure:
    """Rahimi scaling: ``column`` against depth (left) and width (right), one line per method (mean, min–max bars).

    Slope guides: grey reference lines ``y = y₀ (x / x₀)^k`` for each ``k`` in ``guides`` through the
    first point (x₀, y₀) of ``anchor`` (default: the first method in natural order), each labelled, so
    a method linear in depth (Rahimi's claim for the exact inverse) runs parallel to slope 1.

    ``data`` columns: ``sweep`` (``depth``/``width``), ``value``, ``method``, ``column``.
    """
    sweeps = [s for s in ("depth", "width") if s in set(data["sweep"])]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.5 * len(sweeps) + 1.5, 4.4), layout="constrained",
                             squeeze=False)
    methods = natural_sorted(data["method"].dropna().unique())
    anchor = anchor if anchor in methods else (methods[0] if methods else None)
    for ax, sweep in zip(axes[0], sweeps):
        d = data[data["sweep"] == sweep]
        for i, method in enumerate(methods):
            s = d[d["method"] == method].dropna(subset=[column])
            s = s.groupby("value")[column].agg(["mean", "min", "max"]).reset_index()
            if s.empty:
                continue
            span = [s["mean"] - s["min"], s["max"] - s["mean"]]  # min–max over repeats: stays positive on the log axis
            ax.errorbar(s["value"], s["mean"], yerr=span, fmt="o-", ms=3, color=f"C{i % 10}", label=method)
            if method == anchor:
                _slope_guides(ax, s["value"].to_numpy(float), float(s["mean"].iloc[0]), guides, sweep)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = sorted(d["value"].unique())
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])  # the swept sizes, not 2×10⁰
        ax.minorticks_off()
        ax.set_xlabel(sweep)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    legend_outside(fig, [*methods, *(_guide_label(k) for k in guides)])
    if anchor is not None and guides:
        caption(fig, f"Grey lines: slopes {', '.join(f'{k:g}' for k in guides)} on the log-log axes (y ∝ x^k) through "
                f"the first point of {anchor}; a method linear in depth runs parallel to slope 1. Markers: mean over "
                "repeats; bars: min–max.")
    suptitle(fig, title)
    return fig


_GUIDE_STYLES = (":", "--", "-.")


def _guide_label(k: float) -> str:
    return f"slope {k:g} (y ∝ x^{k:g})" if k != 1 else "slope 1 (y ∝ x)"


def _slope_guides(ax: plt.Axes, x: np.ndarray, y0: float, slopes: tuple[float, ...], sweep: str) -> None:
    """Reference lines of the given log-log slopes through (x[0], y0), each labelled at its right end."""
    xs = np.array([x.min(), x.max()])
    for j, k in enumerate(slopes):
        ys = y0 * (xs / x.min()) ** k
        ax.plot(xs, ys, _GUIDE_STYLES[j % len(_GUIDE_STYLES)], color="0.45", lw=1.0, label=_guide_label(k), zorder=1)
        ax.annotate(f"slope {k:g}", (xs[-1], ys[-1]), xytext=(-3, 2), textcoords="offset points", ha="right",
                    va="bottom", fontsize=7, color="0.35")


def save(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``name.png`` (150 dpi) and ``name.pdf`` into ``out_dir`` and close the figure.

    The name is sanitised and the files are written without following links
    (:func:`curvlab.report.files.new_file`). Labels from run files that are not valid mathtext
    (a ``$`` in a solver name) make the whole figure's text plain instead of failing. The title and the
    footer (:func:`caption`) go into the files' metadata too (PNG ``Title``/``Description``, PDF
    ``Title``/``Subject``), where :mod:`curvlab.report.index` reads what each figure shows.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = safe_name(name)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    try:
        for p in paths:
            with new_file(out, p.name) as f:
                try:
                    _savefig(fig, f, p.suffix[1:])
                except ValueError:  # mathtext that does not parse: show every text as typed
                    for t in fig.findobj(matplotlib.text.Text):
                        t.set_parse_math(False)
                    f.seek(0)
                    f.truncate()
                    _savefig(fig, f, p.suffix[1:])
    finally:
        plt.close(fig)
    return paths


def figure_texts(fig: Figure) -> tuple[str, str]:
    """(title, caption) of a figure built here, each on one line (``""`` where it has none)."""
    sup = fig._suptitle.get_text() if fig._suptitle is not None else ""  # noqa: SLF001  (no public getter)
    foot = [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_gid() == _CAPTION]
    return " ".join(sup.split()), " ".join(" ".join(foot).split())


def _savefig(fig: Figure, f: BinaryIO, fmt: str) -> None:
    # No creation date in the PDF: re-rendering unchanged data gives identical files. "tight": nothing clipped.
    head, foot = figure_texts(fig)
    meta = ({"Title": head, "Subject": foot, "CreationDate": None} if fmt == "pdf"
            else {"Title": head, "Description": foot})
    fig.savefig(f, format=fmt, dpi=150, metadata=meta, bbox_inches="tight", pad_inches=0.05)


def fit_loglog_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y against log x (points with y ≤ 0 dropped)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = (x > 0) & (y > 0) & np.isfinite(y)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])
