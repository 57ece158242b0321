"""Renderers of the Bakker et al. studies (``scripts/study_lowrank_structure.py``, ``scripts/study_cr_sigma.py``).

Each reads only the study's ``study.json`` + ``data.csv`` (:class:`~curvlab.report.load.Study`) and
writes tables (Markdown, CSV, LaTeX) and one figure (PNG + PDF):

- ``lowrank_structure``: Section 2, Eqs. 1–7 — per-sample gradients are outer products,
  per-sample Hessian blocks are tensor products, batch means are not low-rank, storage;
- ``cr_sigma``: Sections 4–5 — CR's sensitivity to σ against plain SGD's to its learning rate.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from curvlab.report import figures as F  # first: selects matplotlib's headless backend
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is set)
from matplotlib.figure import Figure  # noqa: E402

from curvlab.report.load import Study
from curvlab.report.tables import write_table

__all__ = ["render_lowrank_structure", "render_cr_sigma", "structure_summary", "cr_sigma_table"]

_METHOD_NAMES = {"cr": "CR on SGD", "sgd": "plain SGD"}


# --- low-rank structure (Section 2) ---------------------------------------------------------

def structure_summary(d: pd.DataFrame) -> pd.DataFrame:
    """One row per measured claim: the worst case over samples, layers and blocks, and what exact structure gives."""
    g, h = d[d["part"] == "grad_rank1"], d[d["part"] == "hess_block"]
    diag, off = h[h["block"] == "diag"], h[h["block"] == "offdiag"]
    rows = [
        ("(a) per-sample gradient: max sigma2/sigma1 (Eqs. 1-2)", g["s2_s1"].max(), "0 (rank 1)", len(g)),
        ("(a) per-sample gradient: max rel. error of dL/dz_t (x) h_t", g["formula_rel_err"].max(), "0", len(g)),
        ("(b) diagonal blocks: max rel. error of (J'HpJ) (x) hh' (Eqs. 3, 5)", diag["formula_rel_err"].max(), "0",
         len(diag)),
        ("(b) diagonal blocks: max rel. error of the best Kronecker product", diag["kron_rel_err"].max(), "0", len(diag)),
        ("(b) diagonal blocks: max sigma2/sigma1 of its second factor", diag["factor2_s2_s1"].max(), "0 (hh')",
         len(diag)),
        ("(b) off-diagonal blocks: max rel. error of Eq. 5 (r < k; Eqs. 4, 6-7)", off["formula_rel_err"].max(), "0",
         len(off)),
        ("(b) off-diagonal blocks: median ||df/dp term|| / ||block||", off["term2_share"].median(), "-", len(off)),
    ]
    return pd.DataFrame(rows, columns=["measure", "value", "exact structure", "cases"]).set_index("measure")


def rank_table(d: pd.DataFrame) -> pd.DataFrame:
    """Numerical rank (stable rank) of the batch means against the batch size, per quantity and layer."""
    b = d[d["part"] == "batch_rank"].copy()
    b["column"] = [f"{'grad' if q == 'gradient' else 'Hess sub-block'} L{int(layer)} ({int(r)}x{int(c)})"
                   for q, layer, r, c in zip(b["quantity"], b["layer"], b["rows"], b["cols"])]
    b["cell"] = [f"{int(n)}/{int(m)} ({s:.2f})" for n, m, s in zip(b["num_rank"], b["max_rank"], b["stable_rank"])]
    tab = b.pivot_table(index="batch", columns="column", values="cell", aggfunc="first", sort=False)
    tab.index = [f"B={int(v)}" for v in tab.index]
    tab.index.name = "batch"
    return tab


def storage_table(d: pd.DataFrame) -> pd.DataFrame:
    s = d[d["part"] == "storage"][["representation", "floats", "ratio_to_gradient"]]
    return s.set_index("representation").rename(columns={"ratio_to_gradient": "ratio to gradient"})


def structure_figure(d: pd.DataFrame, meta: dict) -> Figure:
    """(a) σ₂/σ₁ per layer, (b) formula and Kronecker errors per block, (c) ranks against batch size, (d) storage."""
    fig, ax = plt.subplots(2, 2, figsize=(12, 8.5), layout="constrained")
    g = d[d["part"] == "grad_rank1"]
    floor = 1e-17  # exact zeros drawn at the bottom of the log axis
    ax[0, 0].semilogy(g["layer"], g["s2_s1"].clip(lower=floor), "o", ms=3, alpha=0.5, label="per-sample gradient")
    ax[0, 0].semilogy(g["layer"], g["formula_rel_err"].clip(lower=floor), "x", ms=3, alpha=0.5,
                      label="rel. error of dL/dz (x) h")
    ax[0, 0].set(xlabel="layer (13 = output)", ylabel="sigma2 / sigma1  or  relative error",
                 title=f"(a) per-sample weight gradients: rank one ({g['sample'].nunique()} samples)")
    h = d[d["part"] == "hess_block"]
    for (block, col, mark), lab in zip((("diag", "formula_rel_err", "o"), ("diag", "kron_rel_err", "s"),
                                        ("offdiag", "formula_rel_err", "^")),
                                       ("diagonal: Eq. 5 formula", "diagonal: best Kronecker product",
                                        "off-diagonal: Eq. 5 formula")):
        s = h[h["block"] == block]
        ax[0, 1].semilogy(s["layer"], s[col].clip(lower=floor), mark, ms=3, alpha=0.5, label=lab)
    ax[0, 1].set(xlabel="layer of the block's rows", ylabel="||formula - torch.func|| / ||torch.func||",
                 title=f"(b) per-sample Hessian sub-blocks ({meta.get('sub', '?')} units per side)")
    b = d[d["part"] == "batch_rank"]
    for i, ((q, layer), s) in enumerate(b.groupby(["quantity", "layer"])):
        name = "gradient" if q == "gradient" else "Hessian sub-block"
        if q == "gradient" and layer not in (1, 7, b["layer"].max()):
            continue  # three layers keep the panel readable; the table has all
        s = s.sort_values("batch")
        style = "o-" if q == "gradient" else "s--"  # the Hessian lines of two layers may coincide
        ax[1, 0].loglog(s["batch"], s["num_rank"], style, ms=4 if q == "gradient" else 6, mfc="none" if q != "gradient"
                        else None, color=f"C{i % 10}", label=f"{name}, layer {int(layer)}")
        ax[1, 0].loglog(s["batch"], s["max_rank"], ":", color=f"C{i % 10}", lw=1)
    ax[1, 0].set(xlabel="batch size B", ylabel="numerical rank of the batch mean",
                 title=f"(c) batch means are not low-rank (dotted: upper bound; rtol {meta.get('rtol', '?')})")
    st = storage_table(d)
    ax[1, 1].barh(range(len(st)), st["ratio to gradient"], color="C0")
    ax[1, 1].set_yticks(range(len(st)), [_wrap(r) for r in st.index], fontsize=7)
    ax[1, 1].set_xscale("log")
    ax[1, 1].axvline(1.0, color="k", lw=0.8)
    ax[1, 1].set(xlabel="floats per sample / floats of the gradient", title="(d) storage")
    for a in (ax[0, 0], ax[0, 1], ax[1, 0]):
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=7)
    fig.suptitle(f"Bakker et al. Section 2: low-rank structure on {meta.get('dataset', '?')}, widths "
                 f"{_widths(meta)}, float64", fontsize=11)
    return fig


def _wrap(text: str, width: int = 38) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join([*lines, line])


def _widths(meta: dict) -> str:
    w = meta.get("widths") or []
    return "-".join(map(str, w)) if len(w) < 6 else f"{w[0]}-{w[1]}x{len(w) - 2}-{w[-1]}"


def render_lowrank_structure(st: Study, out: Path, want: set[str]) -> list[Path]:
    name, d = st.meta.get("name", "lowrank_structure"), st.data
    w: list[Path] = []
    if "tables" in want:
        head = f"Bakker et al. Section 2 ({st.meta.get('dataset', '?')}, float64)"
        w += write_table(structure_summary(d), out, name, f"{head}: worst cases of the per-sample structure "
                         "against torch.func", floatfmt=".3g")
        w += write_table(rank_table(d), out, f"{name}_ranks", f"{head}: numerical rank / upper bound (stable rank) "
                         "of batch means against batch size B", floatfmt=".3g")
        w += write_table(storage_table(d), out, f"{name}_storage", f"{head}: floats per sample", floatfmt=".4g")
    if "figures" in want:
        w += F.save(structure_figure(d, st.meta), out, name)
    return w


# --- CR and σ (Sections 4-5) ----------------------------------------------------------------

def cr_sigma_table(d: pd.DataFrame) -> pd.DataFrame:
    """Per method and swept value: final train loss (mean ± std over seeds), plateau exits, steps to exit, α/lr."""
    rows = []
    for (method, value), s in d.groupby(["method", "value"], sort=True):
        ok = s[s["status"] == "completed"]
        left = s["exit_step"].dropna()
        loss = ok["final_train_loss"]
        rows.append({
            "method": _METHOD_NAMES.get(method, method), "swept": "sigma" if method == "cr" else "lr", "value": value,
            "final train loss": _mean_std(loss) if len(loss) else "diverged",
            "left plateau": f"{len(left)}/{len(s)}",
            "steps to leave": f"{left.median():.0f}" if len(left) else "never",
            "mean alpha/lr": float(s["mean_alpha_over_lr"].mean()), "mean alpha": float(s["mean_alpha"].mean()),
            "failed": int((s["status"] != "completed").sum()),
        })
    tab = pd.DataFrame(rows)
    tab.index = [f"{m}, {sw} = {v:g}" for m, sw, v in zip(tab["method"], tab["swept"], tab["value"])]
    tab.index.name = "run"
    return tab.drop(columns=["method", "swept", "value"])


def _seeds(counts: pd.Series) -> str:
    lo, hi = int(counts.min()), int(counts.max())
    return f"{hi} seed{'s' * (hi != 1)}" if lo == hi else f"{lo}-{hi} seeds"


def _mean_std(v: pd.Series) -> str:
    return f"{v.mean():.4g}" if len(v) == 1 else f"{v.mean():.4g} ± {v.std(ddof=1):.2g}"


def cr_sigma_figure(d: pd.DataFrame, meta: dict) -> Figure:
    """Columns: CR against σ, SGD against lr (log x); rows: final train loss, steps to leave the plateau, mean α."""
    methods = [m for m in ("cr", "sgd") if m in set(d["method"])]
    fig, ax = plt.subplots(3, len(methods), figsize=(5.5 * len(methods), 9), layout="constrained", squeeze=False,
                           sharey="row")
    steps = float(meta.get("steps") or d["steps_run"].max())
    for j, method in enumerate(methods):
        s = d[d["method"] == method].sort_values("value")
        x = "sigma" if method == "cr" else "base lr"
        for seed, r in s.groupby("seed"):
            done = r["status"] == "completed"
            loss = r["final_train_loss"].where(done)
            ax[0, j].plot(r["value"], loss, "o-", ms=4, color=f"C{int(seed)}", label=f"seed {int(seed)}")
            bad = r[~done]
            if len(bad):
                top = [r["initial_train_loss"].max() * 1.05] * len(bad)  # diverged: drawn above the initial loss
                ax[0, j].plot(bad["value"], top, "x+"[int(seed) % 2], ms=9, color=f"C{int(seed)}",
                              label=f"seed {int(seed)}: diverged")
            ex = r["exit_step"].fillna(steps * 1.1)  # never: drawn above the run length
            ax[1, j].plot(r["value"], ex, "o-", ms=4, color=f"C{int(seed)}")
            ax[2, j].plot(r["value"], r["mean_alpha"], "o-", ms=4, color=f"C{int(seed)}")
        init = float(s["initial_train_loss"].mean())
        ax[0, j].axhline(init, color="0.5", ls=":", lw=1, label=f"initial loss {init:.3f}")
        ax[1, j].axhline(steps, color="0.5", ls=":", lw=1, label=f"run length {steps:.0f} (above: never)")
        ax[0, j].set(title=f"{_METHOD_NAMES.get(method, method)}: against {x}", ylabel="final train loss")
        ax[1, j].set(ylabel="steps to leave the plateau")
        ax[2, j].set(xlabel=x, ylabel="mean step length alpha" if method == "cr" else "mean scheduled lr")
        ax[2, j].set_yscale("log")
        for i in range(3):
            ax[i, j].set_xscale("log")
            ax[i, j].grid(alpha=0.3, which="both")
        ax[0, j].legend(fontsize=7)
        ax[1, j].legend(fontsize=7)
    fig.suptitle(f"Bakker et al. Sections 4-5: CR's sensitivity to sigma vs SGD's to lr ({meta.get('experiment', '')}, "
                 f"{meta.get('steps', '?')} updates, plateau exit = train loss < "
                 f"{100 * float(meta.get('exit_fraction', 0.9)):.0f} % of initial)", fontsize=10)
    return fig


def render_cr_sigma(st: Study, out: Path, want: set[str]) -> list[Path]:
    name, d = st.meta.get("name", "cr_sigma"), st.data
    w: list[Path] = []
    if "tables" in want:
        seeds = d.groupby(["method", "value"]).size()
        part = "" if st.meta.get("complete", True) else f" (partial: {len(d)} of {st.meta.get('runs_planned')} runs)"
        w += write_table(cr_sigma_table(d), out, name,
                         f"CR (Eq. 9) over sigma vs plain SGD over lr, {st.meta.get('steps', '?')} updates from the "
                         f"plateau init, {_seeds(seeds)}{part}", floatfmt=".3g")
    if "figures" in want:
        w += F.save(cr_sigma_figure(d, st.meta), out, name)
    return w
