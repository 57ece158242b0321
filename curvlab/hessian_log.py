"""Layer-wise Hessian-error logging for the runner (EA-CG Tables 2–5).

At a logging step the true bias blocks B_t are computed on a batch, and for every kind in
``log.hessian_kinds`` the error ‖B̃_t − |B_t|‖_F of that kind's blocks against them
(:func:`curvlab.metrics.layerwise_errors`), whatever kind the run trains with. Each row
also carries ``reference`` = ‖B_t‖_F (= ‖|B_t|‖_F), so that the relative error
error / reference can be read off: near θ⁰ the lower layers' |B_t| nearly vanish and the
absolute errors alone hide a ~100 % relative error. ``batch`` is the logging batch's size
(``log.hessian_batches`` may log several) and ``mc_samples`` the Fisher's Monte-Carlo
sample count (``log.hessian_fisher_mc`` may log several; blank for the other kinds), and
``fisher`` the Fisher's definition (``log.hessian_fisher_types`` may log several: the Monte-Carlo
Fisher E_{ŷ~p}[∇ξ(ŷ) ∇ξ(ŷ)ᵀ] of Chen et al.'s Tables, the empirical Fisher with the true labels as
EA-CG's text writes it, or the exact expectation over the predictive distribution; blank for the
other kinds).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import Tensor

from curvlab.curvature import curvature
from curvlab.curvature.options import CurvatureOptions, FisherType, Kind
from curvlab.losses import Loss
from curvlab.metrics import layerwise_errors

__all__ = ["HessianLogger", "summary_line"]


class HessianLogger:
    """Computes ``step, layer, kind, error, reference, batch, mc_samples`` rows.

    Args:
        kinds: curvature kinds to compare with the exact blocks.
        options: the run's curvature options (averaging, Fisher type, …); only ``kind`` varies.
        loss: the criterion; GN is skipped when it is not convex (GN is not PSD there).
        every: log when ``step % every == 0`` (0: never) ...
        first: ... and at each of the first ``first`` updates.
        fisher_mc: Monte-Carlo sample counts to log the MC Fisher with (empty: the run's
            ``curvature.mc_samples``).
        fisher_types: Fisher definitions to log (empty: the run's ``curvature.fisher``).

    ``notes`` says what was skipped and why.
    """

    def __init__(
        self, kinds: list[Kind], options: CurvatureOptions, loss: Loss, every: int, first: int,
        fisher_mc: Sequence[int] = (), fisher_types: Sequence[FisherType | str] = (),
    ) -> None:
        self.options = options
        self.loss = loss
        self.every = int(every)
        self.first = int(first)
        self.notes: list[str] = []
        self.kinds = []
        for kind in kinds:
            if kind is Kind.GN and not loss.convex:
                self.notes.append(f"hessian_kinds: skipped gn, GN is not PSD for the {loss.kind.value} loss")
            else:
                self.kinds.append(kind)
        self.fisher_types = list(dict.fromkeys(FisherType(t) for t in fisher_types)) or [options.fisher]
        # The MC Fisher's sample counts to log.
        self.fisher_mc = [int(k) for k in fisher_mc] or [options.mc_samples]
        if fisher_mc and FisherType.MC not in self.fisher_types:
            self.notes.append(f"hessian_fisher_mc: ignored, no Monte-Carlo Fisher is logged "
                              f"(fisher: {', '.join(t.value for t in self.fisher_types)})")

    def due(self, step: int) -> bool:
        """Whether to log before update ``step + 1`` (``step`` updates done so far)."""
        if not self.kinds:
            return False
        return step < self.first or (self.every > 0 and step % self.every == 0)

    def _variants(self) -> list[tuple[Kind, CurvatureOptions, int | None, FisherType | None]]:
        """(kind, options, mc_samples or None, Fisher definition or None) of every logged approximation."""
        out: list[tuple[Kind, CurvatureOptions, int | None, FisherType | None]] = []
        for kind in self.kinds:
            if kind is not Kind.FISHER:
                out.append((kind, replace(self.options, kind=kind), None, None))
                continue
            for ftype in self.fisher_types:
                if ftype is FisherType.MC:
                    out += [(kind, replace(self.options, kind=kind, fisher=ftype, mc_samples=k), k, ftype)
                            for k in self.fisher_mc]
                else:
                    out.append((kind, replace(self.options, kind=kind, fisher=ftype), None, ftype))
        return out

    def rows(self, net: torch.nn.Module, x: Tensor, y: Tensor, step: int) -> list[dict[str, Any]]:
        """Errors of each kind on the batch ``(x, y)`` at the current parameters."""
        exact = curvature(net, x, y, Kind.EXACT, self.loss, options=replace(self.options, kind=Kind.EXACT))
        refs = [float(torch.linalg.matrix_norm(layer.bias)) for layer in exact]
        out: list[dict[str, Any]] = []
        for kind, options, mc, ftype in self._variants():
            approx = curvature(net, x, y, kind, self.loss, options=options)
            for layer, (err, ref) in enumerate(zip(layerwise_errors(approx, exact), refs), start=1):
                out.append({
                    "step": step, "layer": layer, "kind": kind.value, "error": float(err), "reference": ref,
                    "batch": len(y), "mc_samples": mc, "fisher": None if ftype is None else ftype.value,
                })
        return out


def summary_line(rows: Sequence[dict[str, Any]]) -> str | None:
    """The errors of the last logged update in one line: per kind (and Fisher variant), the total
    √Σ_t err_t² over layers (the "Total" row of Chen et al.'s Tables 2–5) and relative to ‖B‖
    (√Σ_t ref_t²); None when nothing was logged. The first logging batch size only."""
    if not rows:
        return None
    step, batch = rows[-1]["step"], rows[-1]["batch"]
    totals: dict[str, list[float]] = {}
    for r in rows:
        if r["step"] != step or r["batch"] != batch:
            continue
        fisher = r.get("fisher")
        name = r["kind"] + (f" (MC {r['mc_samples']})" if fisher == "mc" else f" ({fisher})" if fisher else "")
        acc = totals.setdefault(name, [0.0, 0.0])
        acc[0] += r["error"] ** 2
        acc[1] += r["reference"] ** 2
    parts = [f"{k} {math.sqrt(e):.4g} ({math.sqrt(e / ref):.1%})" if ref > 0 else f"{k} {math.sqrt(e):.4g}"
             for k, (e, ref) in totals.items()]
    return (f"layer-wise Hessian errors at update {step} (batch {batch}; total over layers, relative to ‖B‖): "
            + ", ".join(parts) + " (all in hessian_errors.csv)")
