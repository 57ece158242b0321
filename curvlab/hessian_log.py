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

On a net with convolutions or pooling (a step net) the exact reference comes from
:func:`curvlab.hessian_reference.step_reference` by the cheapest route that gives it: the Gauss-Newton
recursion where no step has a second-order residual (ReLU nets: GN ≡ exact), else the ``exact`` recursion's
per-sample blocks where they fit, else autograd Hessian-vector products for the layers that fit
``log.hessian_hvp_budget`` (rows only for those layers). A conv layer's weight block (rows with ``block`` =
``weight``; the bias rows leave ``block`` empty) is logged where C_out·C_in·k² ≤ ``WEIGHT_LIMIT``: the exact
weight block against the kind's own per-sample-chain weight block E_i[J_θ,iᵀ H̃_i J_θ,i], not its G ⊗ A.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import Tensor

from curvlab.curvature import LayerCurvature, curvature
from curvlab.curvature.options import CurvatureOptions, FisherType, Kind
from curvlab.hessian_reference import (
    HVP_BUDGET, WEIGHT_LIMIT, Reference, autograd_bias_blocks, formed_weight_block, step_reference,
)
from curvlab.losses import Loss
from curvlab.metrics import layerwise_errors
from curvlab.modules import chain

__all__ = [
    "HessianLogger", "summary_line", "variant_label", "WEIGHT_LIMIT", "formed_weight_block",
    "autograd_bias_blocks",
]


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
        hvp_budget: on a step net whose exact blocks need autograd, at most this many Hessian-vector
            products per logging batch (``log.hessian_hvp_budget``; layers beyond it are skipped).

    ``notes`` says what was skipped and why (each kind of note once).
    """

    def __init__(
        self, kinds: list[Kind], options: CurvatureOptions, loss: Loss, every: int, first: int,
        fisher_mc: Sequence[int] = (), fisher_types: Sequence[FisherType | str] = (), hvp_budget: int = HVP_BUDGET,
    ) -> None:
        self.options = options
        self.hvp_budget = int(hvp_budget)
        self._noted: set[str] = set()  # keys of the reference's notes already in ``notes``
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
            fisher = replace(self.options, kind=kind, sketch=False)  # the sketch is of gn/pch output factors only
            for ftype in self.fisher_types:
                if ftype is FisherType.MC:
                    out += [(kind, replace(fisher, fisher=ftype, mc_samples=k), k, ftype) for k in self.fisher_mc]
                else:
                    out.append((kind, replace(fisher, fisher=ftype), None, ftype))
        return out

    def rows(self, net: torch.nn.Module, x: Tensor, y: Tensor, step: int) -> list[dict[str, Any]]:
        """Errors of each kind on the batch ``(x, y)`` at the current parameters (module docstring)."""
        view = chain(net)
        steps = view.has_steps  # a net with convolutions or pooling
        if steps:
            ref = step_reference(net, view, x, y, self.loss, self.options, self.hvp_budget)
            for key, text in ref.notes.items():
                if key not in self._noted:
                    self._noted.add(key)
                    self.notes.append(text)
            if not ref.bias:  # nothing fits: stop logging
                self.kinds = []
                return []
        else:
            exact = self._curvature(net, x, y, replace(self.options, kind=Kind.EXACT, sketch=False), False)
            ref = Reference({t: layer.bias for t, layer in enumerate(exact)})
        layers = sorted(ref.bias)
        refs = [float(torch.linalg.matrix_norm(ref.bias[t])) for t in layers]
        out: list[dict[str, Any]] = []
        for kind, options, mc, ftype in self._variants():
            approx = self._approx(net, x, y, options, ref, steps)
            if approx is None:
                continue
            base = {"step": step, "kind": kind.value, "batch": len(y), "mc_samples": mc,
                    "fisher": None if ftype is None else ftype.value}
            errs = layerwise_errors([approx[t] for t in layers], [ref.bias[t] for t in layers])
            for t, err, norm in zip(layers, errs, refs):
                out.append({**base, "layer": t + 1, "error": float(err), "reference": norm})
            for t, w in ref.weight.items():
                (err,) = layerwise_errors([formed_weight_block(approx[t])], [w])
                out.append({**base, "layer": t + 1, "error": err, "reference": float(torch.linalg.matrix_norm(w)),
                            "block": "weight"})
        return out

    def _approx(self, net: torch.nn.Module, x: Tensor, y: Tensor, options: CurvatureOptions,
                ref: Reference, steps: bool) -> list[LayerCurvature] | None:
        """The blocks of one logged kind: the reference's own where they are the same pass (``ref.equal``),
        else a curvature pass; None (and the kind dropped, with a note) where a step net refuses it."""
        if ref.blocks is not None and options.kind in ref.equal and not options.sketch:
            return ref.blocks
        try:
            return self._curvature(net, x, y, options, bool(ref.weight))
        except ValueError as err:  # e.g. PCH's residual rows of a smooth activation on large maps
            if not steps:
                raise
            self.notes.append(f"log.hessian_*: skipped {options.kind.value} on this net ({str(err).splitlines()[0]})")
            self.kinds = [k for k in self.kinds if k is not options.kind]
            return None

    def _curvature(self, net: torch.nn.Module, x: Tensor, y: Tensor, options: CurvatureOptions,
                   products: bool) -> list[LayerCurvature]:
        extra = {"block_products": True} if products else {}
        return curvature(net, x, y, options.kind, self.loss, options=options, **extra)


def variant_label(kind: str, fisher: str | None = None, mc_samples: float | None = None, mc_count: bool = True) -> str:
    """The name of one logged approximation (a ``hessian_errors.csv`` row's ``kind, fisher, mc_samples``):
    the kind, or for the Fisher ``fisher (MC m)`` (``fisher (MC)`` with ``mc_count=False``),
    ``fisher (empirical)`` or ``fisher (exact)``. A Fisher row with a sample count and no definition
    is an MC Fisher (files written before ``fisher`` was logged); with neither, the bare kind."""
    has_mc = mc_samples is not None and not math.isnan(float(mc_samples))
    if kind != "fisher" or not (fisher or has_mc):
        return kind
    if (fisher or "mc") != "mc":
        return f"{kind} ({fisher})"
    return f"{kind} (MC {float(mc_samples):g})" if mc_count and has_mc else f"{kind} (MC)"  # type: ignore[arg-type]


def summary_line(rows: Sequence[dict[str, Any]]) -> str | None:
    """The errors of the last logged update in one line: per kind (and Fisher variant), the total
    √Σ_t err_t² over layers (the "Total" row of Chen et al.'s Tables 2–5) and relative to ‖B‖
    (√Σ_t ref_t²); None when nothing was logged. The first logging batch size only."""
    if not rows:
        return None
    step, batch = rows[-1]["step"], rows[-1]["batch"]
    totals: dict[str, list[float]] = {}
    for r in rows:
        if r["step"] != step or r["batch"] != batch or r.get("block") == "weight":
            continue
        acc = totals.setdefault(variant_label(r["kind"], r.get("fisher"), r.get("mc_samples")), [0.0, 0.0])
        acc[0] += r["error"] ** 2
        acc[1] += r["reference"] ** 2
    parts = [f"{k} {math.sqrt(e):.4g} ({math.sqrt(e / ref):.1%})" if ref > 0 else f"{k} {math.sqrt(e):.4g}"
             for k, (e, ref) in totals.items()]
    return (f"layer-wise Hessian errors at update {step} (batch {batch}; total over layers, relative to ‖B‖): "
            + ", ".join(parts) + " (all in hessian_errors.csv)")
