"""Figures from tidy frames: PNG + PDF with matplotlib (Agg), mean ± 1 std shaded over seeds.

Builders return a matplotlib ``Figure``; :func:`save` writes it. The training curves
follow EA-CG Figures 1–12 (loss and test accuracy against wall-clock time and epochs)
and HBP Figure 5; :func:`cr_figure` follows Figures 1–5 of Bakker et al.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the report runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["mean_std", "plot_mean_std", "training_figure", "cr_figure", "loglog_slope_figure",
           "appendix_figure", "scaling_figure", "save", "fit_loglog_slope"]

_AXIS_NAMES = {
    "wall_time": "wall-clock time (s)", "epoch": "epoch", "step": "iteration",
    "train_loss": "training loss", "test_acc": "test accuracy", "batch_loss": "mini-batch loss",
    "step_size": "learning rate", "test_loss": "test loss",
}


def mean_std(metrics: pd.DataFrame, x: str, y: str, group: str = "label") -> pd.DataFrame:
    """Mean and std over runs (seeds) of ``y`` and ``x`` at each logged step, per group.

    Runs are aligned on ``step`` (every seed logs the same steps); ``x`` is averaged too,
    which matters for wall-clock time. Steps where ``y`` is empty are dropped.

    Returns:
        Columns ``group, step, x, y, y_std, n`` (``y_std`` is 0 for a single run).
    """
    df = metrics[[group, "run_dir", "step", x, y]].copy() if x != "step" else metrics[[group, "run_dir", "step", y]].copy()
    df[y] = pd.to_numeric(df[y], errors="coerce")
    df = df.dropna(subset=[y])
    if x == "step":
        df = df.assign(_x=df["step"])
    else:
        df = df.assign(_x=pd.to_numeric(df[x], errors="coerce"))
    g = df.groupby([group, "step"])
    out = pd.DataFrame({"x": g["_x"].mean(), "y": g[y].mean(), "y_std": g[y].std(ddof=1).fillna(0.0), "n": g[y].size()})
    return out.reset_index().rename(columns={group: "group"})


def plot_mean_std(ax: plt.Axes, metrics: pd.DataFrame, x: str, y: str, group: str = "label",
                  smooth: int = 1, logy: bool = False) -> None:
    """One line per group with a shaded ±1 std band; ``smooth`` > 1 applies a moving average."""
    stats = mean_std(metrics, x, y, group)
    for i, (name, s) in enumerate(stats.groupby("group", sort=True)):
        s = s.sort_values("step")
        m, sd = s["y"], s["y_std"]
        if smooth > 1:
            m = m.rolling(smooth, min_periods=1).mean()
            sd = sd.rolling(smooth, min_periods=1).mean()
        color = f"C{i % 10}"
        n = int(s["n"].max())
        ax.plot(s["x"], m, color=color, lw=1.4, label=f"{name} (n={n})")
        if n > 1:
            ax.fill_between(s["x"], m - sd, m + sd, color=color, alpha=0.2, lw=0)
    ax.set_xlabel(_AXIS_NAMES.get(x, x))
    ax.set_ylabel(_AXIS_NAMES.get(y, y))
    if logy and len(stats) and (stats["y"] > 0).all() and stats["y"].max() > 10 * stats["y"].min():
        ax.set_yscale("log")  # only when the curves span more than a decade
    else:
        ax.ticklabel_format(axis="y", useOffset=False)  # plain values, not "1e-5 + 2.3025"
    ax.grid(alpha=0.3)


def training_figure(metrics: pd.DataFrame, title: str, group: str = "label") -> Figure:
    """Training loss and test accuracy against wall-clock time (top) and epochs (bottom).

    EA-CG Figures 1–8 show the time panels and the epoch panels of the same runs.
    """
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    for row, x in enumerate(("wall_time", "epoch")):
        plot_mean_std(axes[row, 0], metrics, x, "train_loss", group, logy=True)
        plot_mean_std(axes[row, 1], metrics, x, "test_acc", group)
    axes[0, 1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=11)
    return fig


def cr_figure(metrics: pd.DataFrame, title: str, group: str = "label", cr_groups: list[str] | None = None,
              period: int = 100) -> Figure:
    """Bakker et al. Figures 1–5: (a) the loss with and without CR, (b) the CR learning rate.

    Panel (a) shows the mini-batch loss as a period-``period`` moving average (mean ± std
    over seeds); panel (b) the step size CR chose at every iteration and its period-
    ``period`` moving average, for the groups in ``cr_groups`` (default: all groups whose
    name contains ``cr``).
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    plot_mean_std(a, metrics, "step", "batch_loss", group, smooth=period, logy=True)
    a.set_ylabel(f"mini-batch loss (moving average, period {period})")
    a.legend(fontsize=8)
    names = sorted(metrics[group].dropna().unique())
    cr = cr_groups if cr_groups is not None else [n for n in names if "cr" in str(n)]
    for i, name in enumerate(cr):
        s = mean_std(metrics[metrics[group] == name], "step", "step_size", group).sort_values("step")
        b.plot(s["x"], s["y"], color=f"C{(2 * i + 3) % 10}", lw=0.6, alpha=0.6, label=f"{name}: CR rate")
        b.plot(s["x"], s["y"].rolling(period, min_periods=1).mean(), color=f"C{(2 * i + 2) % 10}", lw=1.8,
               label=f"{name}: moving average ({period})")
    for i, name in enumerate(n for n in names if n not in cr):  # the schedule CR replaces
        s = mean_std(metrics[metrics[group] == name], "step", "step_size", group).sort_values("step")
        b.plot(s["x"], s["y"], "--", color="0.3", lw=1.2, label=f"{name}: learning rate (schedule)")
    b.set_yscale("log")
    b.set_xlabel("iteration")
    b.set_ylabel("learning rate")
    b.grid(alpha=0.3)
    if cr:
        b.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def loglog_slope_figure(data: pd.DataFrame, x: str, y: str, group: str, title: str,
                        slopes: dict[object, float] | None = None) -> Figure:
    """``y`` against ``x`` on log-log axes, one line per ``group``, slope in the legend."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    for i, (name, s) in enumerate(data.groupby(group, sort=True)):
        s = s.sort_values(x)
        lab = f"{group} {name}" + (f" (slope {slopes[name]:.2f})" if slopes and name in slopes else "")
        ax.loglog(s[x], s[y], "o-", color=f"C{i % 10}", ms=3, lw=1.2, label=lab)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=10)
    return fig


def appendix_figure(data: pd.DataFrame, slopes: pd.DataFrame, fit_max: float) -> Figure:
    """‖H_t − GN_t‖_F/‖H_t‖_F (solid) and ‖H_t − GN_t‖_F (dashed) against c, per layer.

    One panel per block type (bias, weight); ``slopes`` (index ``"<block> layer <t>"``)
    gives the fitted slopes shown in the legend; the grey band marks the fit range.
    """
    blocks = sorted(data["block"].unique())
    fig, axes = plt.subplots(1, len(blocks), figsize=(6 * len(blocks), 4.5), constrained_layout=True, squeeze=False)
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
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("Appendix: second-order module term against input scale (tanh, zero biases)", fontsize=11)
    return fig


def scaling_figure(data: pd.DataFrame, title: str) -> Figure:
    """Rahimi scaling: seconds against depth (left) and width (right), one line per method.

    ``data`` columns: ``sweep`` (``depth``/``width``), ``value``, ``method``, ``seconds``.
    """
    sweeps = [s for s in ("depth", "width") if s in set(data["sweep"])]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.5 * len(sweeps), 4), constrained_layout=True, squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        d = data[data["sweep"] == sweep]
        for i, (method, s) in enumerate(d.groupby("method", sort=True)):
            s = s.groupby("value")["seconds"].agg(["mean", "std"]).reset_index()
            ax.errorbar(s["value"], s["mean"], yerr=s["std"].fillna(0), fmt="o-", ms=3, color=f"C{i}", label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = sorted(d["value"].unique())
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])  # the swept sizes, not 2×10⁰
        ax.minorticks_off()
        ax.set_xlabel(sweep)
        ax.set_ylabel("seconds per call")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def save(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``name.png`` (150 dpi) and ``name.pdf`` into ``out_dir`` and close the figure."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        # No creation date in the PDF: re-rendering unchanged data gives identical files.
        fig.savefig(p, dpi=150, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    plt.close(fig)
    return paths


def fit_loglog_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y against log x (points with y ≤ 0 dropped)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = (x > 0) & (y > 0) & np.isfinite(y)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])
