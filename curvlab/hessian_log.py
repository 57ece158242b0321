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

On a net with convolutions or pooling (a step net) the exact reference is per-sample blocks of whole
feature maps: the bias blocks are logged from it whenever that pass fits (``steps.step_chunk_size``),
else by autograd Hessian-vector products (``autograd_bias_blocks``, at most ``AUTOGRAD_ROWS``; beyond, a
note and no rows), and a conv layer's weight block (rows with ``block`` = ``weight``; the bias rows
leave ``block`` empty) where C_out·C_in·k² ≤ ``WEIGHT_LIMIT``, formed column by column from the
kinds' matrix-free block products (``LayerCurvature.block_product``, HBP Sec. 3): the exact weight
block against the kind's own per-sample-chain weight block E_i[J_θ,iᵀ H̃_i J_θ,i], not its G ⊗ A.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import Tensor

from curvlab.curvature import LayerCurvature, curvature
from curvlab.curvature.options import CurvatureOptions, FisherType, Kind
from curvlab.losses import Loss
from curvlab.metrics import layerwise_errors
from curvlab.modules import chain
from curvlab.symmetric import symmetrized

__all__ = [
    "HessianLogger", "summary_line", "variant_label", "WEIGHT_LIMIT", "AUTOGRAD_ROWS", "formed_weight_block",
    "autograd_bias_blocks",
]

WEIGHT_LIMIT = 512  # C_out·C_in·k² of a conv weight block the logger forms (one block product per column)
AUTOGRAD_ROWS = 512  # Σ_t n_t Hessian-vector products for the exact bias blocks when per-sample blocks do not fit


def autograd_bias_blocks(net: torch.nn.Module, layers: Sequence[torch.nn.Module], x: Tensor, y: Tensor, loss: Loss,
                         chunk: int = 64) -> list[Tensor]:
    """The exact bias blocks ∂²L/∂δ_t² of the batch-mean loss by autograd, δ_t (n_t,) an offset added to
    layer t's output (its bias, or where it has none the same block; broadcast over a conv's positions):
    one Hessian-vector product per row (``chunk`` rows per batched double backward). No per-sample block
    of a feature map is formed, so this fits where the ``exact`` recursion's blocks do not."""
    deltas = [torch.zeros(m.weight.shape[0], dtype=x.dtype, device=x.device, requires_grad=True) for m in layers]
    hooks = [m.register_forward_hook(lambda _m, _i, out, d=d: out + d.view(1, -1, *[1] * (out.dim() - 2)))
             for m, d in zip(layers, deltas)]
    try:
        with torch.enable_grad():
            grads = torch.autograd.grad(loss(net(x), y), deltas, create_graph=True)
            out = []
            for d, g in zip(deltas, grads):
                eye = torch.eye(d.numel(), dtype=x.dtype, device=x.device)
                rows = [torch.autograd.grad(g, d, eye[i:i + chunk], retain_graph=True, is_grads_batched=True)[0]
                        for i in range(0, d.numel(), chunk)]
                out.append(symmetrized(torch.cat(rows).detach()))  # (n_t, n_t)
    finally:
        for h in hooks:
            h.remove()
    return out


def formed_weight_block(layer: LayerCurvature) -> Tensor:
    """A conv layer's weight block (n, n), n = C_out·C_in·k² in ``W.flatten()`` order, from its
    matrix-free ``block_product``: column j is the block times the j-th unit weight direction."""
    assert layer.block_product is not None and layer.weight_shape is not None
    n = math.prod(layer.weight_shape)
    eye = torch.eye(n, dtype=layer.bias.dtype, device=layer.bias.device)
    cols = [layer.block_product(eye[j].reshape(layer.weight_shape), None)[0].reshape(n) for j in range(n)]
    return torch.stack(cols, 1)  # (n, n)


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
        """Errors of each kind on the batch ``(x, y)`` at the current parameters (module docstring)."""
        view = chain(net)
        steps = view.has_steps  # a net with convolutions or pooling
        formed = self._weight_layers(view.layers) if steps else []
        try:
            exact = self._curvature(net, x, y, replace(self.options, kind=Kind.EXACT), bool(formed))
            exact_bias = [layer.bias for layer in exact]
            if steps:
                self._note_skipped(view.layers, formed)
        except ValueError as err:  # the per-sample exact blocks of this net do not fit (step nets only)
            if not steps:
                raise
            fallback = self._autograd_fallback(net, view.layers, x, y, str(err).splitlines()[0])
            if fallback is None:
                return []
            exact_bias, formed = fallback, []
        refs = [float(torch.linalg.matrix_norm(b)) for b in exact_bias]
        exact_w = {t: formed_weight_block(exact[t]) for t in formed}
        out: list[dict[str, Any]] = []
        for kind, options, mc, ftype in self._variants():
            try:
                approx = self._curvature(net, x, y, options, bool(formed))
            except ValueError as err:  # e.g. PCH's residual rows of a smooth activation on large maps
                if not steps:
                    raise
                self.notes.append(f"log.hessian_*: skipped {kind.value} on this net ({str(err).splitlines()[0]})")
                self.kinds = [k for k in self.kinds if k is not kind]
                continue
            base = {"step": step, "kind": kind.value, "batch": len(y), "mc_samples": mc,
                    "fisher": None if ftype is None else ftype.value}
            for layer, (err, ref) in enumerate(zip(layerwise_errors(approx, exact_bias), refs), start=1):
                out.append({**base, "layer": layer, "error": float(err), "reference": ref})
            for t, w in exact_w.items():
                (err,) = layerwise_errors([formed_weight_block(approx[t])], [w])
                out.append({**base, "layer": t + 1, "error": err, "reference": float(torch.linalg.matrix_norm(w)),
                            "block": "weight"})
        return out

    def _curvature(self, net: torch.nn.Module, x: Tensor, y: Tensor, options: CurvatureOptions,
                   products: bool) -> list[LayerCurvature]:
        extra = {"block_products": True} if products else {}
        return curvature(net, x, y, options.kind, self.loss, options=options, **extra)

    def _autograd_fallback(self, net: torch.nn.Module, layers: Sequence[torch.nn.Module], x: Tensor, y: Tensor,
                           why: str) -> list[Tensor] | None:
        """The exact bias blocks by autograd when they take at most ``AUTOGRAD_ROWS`` products, else None
        (and the logging stops); either way a note (once) says why."""
        rows = sum(m.weight.shape[0] for m in layers)  # Σ_t n_t: one product per row of every bias block
        if rows > AUTOGRAD_ROWS:
            self.notes.append(f"log.hessian_*: no layer-wise Hessian errors on this net ({why}; the autograd bias "
                              f"blocks would take {rows:,} Hessian-vector products > {AUTOGRAD_ROWS})")
            self.kinds = []
            return None
        if not any(n.startswith("log.hessian_*: exact bias blocks by autograd") for n in self.notes):
            self.notes.append(f"log.hessian_*: exact bias blocks by autograd ({rows} Hessian-vector products), "
                              f"no weight blocks: {why}")
        return autograd_bias_blocks(net, layers, x, y, self.loss)

    @staticmethod
    def _weight_layers(layers: Sequence[torch.nn.Module]) -> list[int]:
        """The conv layers whose weight blocks are formed: C_out·C_in·k² ≤ ``WEIGHT_LIMIT``."""
        return [t for t, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d) and m.weight.numel() <= WEIGHT_LIMIT]

    def _note_skipped(self, layers: Sequence[torch.nn.Module], formed: list[int]) -> None:
        """Name the conv layers whose weight blocks are not formed (once per run)."""
        big = [t for t, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d) and t not in formed]
        if big and not any(n.startswith("log.hessian_*: conv weight blocks") for n in self.notes):
            sizes = ", ".join(f"layer {t + 1}: {layers[t].weight.numel():,}" for t in big)
            self.notes.append(f"log.hessian_*: conv weight blocks skipped where C_out·C_in·k² > {WEIGHT_LIMIT} "
                              f"({sizes}); their bias blocks are logged")


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
