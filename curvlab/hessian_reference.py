"""The exact blocks the Hessian-error logger compares against on a step net (convolutions, pooling).

Three routes, cheapest first (:func:`step_reference`):

1. **No residual anywhere.** When no element-wise step has a second-order term (ReLU, LeakyReLU,
   Identity: σ'' = 0 almost everywhere; conv, pooling, padding and Flatten are (piecewise) linear),
   the second term of Eq. (4b) of Chen et al. vanishes at every step, so the exact recursion and the
   Gauss-Newton one are the same recursion: the exact blocks are ``kind=gn`` with the per-sample output
   Hessians unmodified (signed factors, no sketch; HBP Sec. 3), for any loss. One GN pass, C−1 factor
   rows per sample for the cross-entropy: the DeepOBS presets ``mnist_2c2d`` and ``cifar10_3c3d``.
2. **Per-sample blocks.** Otherwise the ``exact`` recursion's per-sample blocks of whole feature maps,
   where they fit (``curvature.steps``; refused beyond 2^28 elements per sample).
3. **Autograd.** Otherwise the exact bias blocks by Hessian-vector products, one per row, for the layers
   that fit the budget (``log.hessian_hvp_budget``): the output layer and every conv layer first, then
   the others narrowest first (:func:`select_layers`); no weight blocks.

Routes 1 and 2 also form a conv layer's exact weight block where C_out·C_in·k² ≤ ``WEIGHT_LIMIT``, column by
column from the matrix-free block product (``LayerCurvature.block_product``, HBP Sec. 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
from torch import Tensor, nn

from curvlab.curvature import LayerCurvature, curvature
from curvlab.curvature.options import CurvatureOptions, Kind
from curvlab.losses import Loss
from curvlab.modules import Chain, ElementwiseRule
from curvlab.symmetric import symmetrized

__all__ = [
    "WEIGHT_LIMIT", "HVP_BUDGET", "Reference", "step_reference", "residual_free", "select_layers",
    "autograd_bias_blocks", "formed_weight_block",
]

WEIGHT_LIMIT = 512  # C_out·C_in·k² of a conv weight block the logger forms (one block product per column)
HVP_BUDGET = 512  # default log.hessian_hvp_budget: Σ_t n_t Hessian-vector products of route 3


@dataclass
class Reference:
    """The exact blocks of one logging batch: ``bias`` and ``weight`` by layer index (0-based), and
    ``notes`` (key → one line) saying which route gave them and what was skipped. On route 1 ``blocks``
    is the whole GN curvature and ``equal`` the kinds whose blocks (without the sketch) are these blocks:
    GN, and for a convex loss PCH-1/PCH-2 too (Pos-Eig of a PSD H_i changes nothing; for the cross-entropy
    the very same operations), so that the logger need not run the same pass again."""

    bias: dict[int, Tensor]  # t → (n_t, n_t)
    weight: dict[int, Tensor] = field(default_factory=dict)  # conv t → (C_out J, C_out J), W.flatten() order
    notes: dict[str, str] = field(default_factory=dict)
    blocks: list[LayerCurvature] | None = None
    equal: frozenset[Kind] = frozenset()


def residual_free(view: Chain) -> bool:
    """Whether no element-wise step of a step net has a second-order residual (σ'' ≡ 0), the same test
    as the recursion's (``curvature.steps``), so that its exact and GN recursions coincide."""
    return all(rule.bind(m).d2f is torch.zeros_like for m, rule in view.steps if isinstance(rule, ElementwiseRule))


def select_layers(widths: Sequence[int], conv: Sequence[bool], budget: int) -> list[int]:
    """The layers (0-based, ascending) whose bias blocks fit ``budget`` products, n_t each, picked greedily:
    the output layer first (C rows), then the conv layers input side first, then the others narrowest first."""
    last = len(widths) - 1
    first = [last] + [t for t in range(last) if conv[t]]
    rest = sorted((t for t in range(len(widths)) if t not in first), key=lambda t: (widths[t], t))
    chosen, used = [], 0
    for t in first + rest:
        if used + widths[t] <= budget:
            chosen.append(t)
            used += widths[t]
    return sorted(chosen)


def autograd_bias_blocks(net: nn.Module, layers: Sequence[nn.Module], x: Tensor, y: Tensor, loss: Loss,
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


def weight_layers(layers: Sequence[nn.Module]) -> list[int]:
    """The conv layers whose weight blocks are formed: C_out·C_in·k² ≤ ``WEIGHT_LIMIT``."""
    return [t for t, m in enumerate(layers) if isinstance(m, nn.Conv2d) and m.weight.numel() <= WEIGHT_LIMIT]


def step_reference(net: nn.Module, view: Chain, x: Tensor, y: Tensor, loss: Loss, options: CurvatureOptions,
                   budget: int = HVP_BUDGET) -> Reference:
    """The exact blocks of a step net on the batch ``(x, y)`` by the cheapest route that gives them
    (module docstring); ``options``: the run's (only the kind and the sketch are changed)."""
    formed = weight_layers(view.layers)
    notes = _weight_note(view.layers, formed)
    equal: frozenset[Kind] = frozenset()
    if residual_free(view):
        exact = curvature(net, x, y, Kind.GN, loss, options=replace(options, kind=Kind.GN, sketch=False),
                          **({"block_products": True} if formed else {}))
        notes["route"] = ("log.hessian_*: exact blocks from the Gauss-Newton recursion (no step of this net has a "
                          "second-order residual, so the exact Hessian's blocks equal GN's)")
        equal = frozenset({Kind.GN, Kind.PCH, Kind.PCH1, Kind.PCH2} if loss.convex else {Kind.GN})
    else:
        try:
            exact = curvature(net, x, y, Kind.EXACT, loss, options=replace(options, kind=Kind.EXACT, sketch=False),
                              **({"block_products": True} if formed else {}))
        except ValueError as err:  # the per-sample blocks of this net's feature maps do not fit
            return _autograd_reference(net, view.layers, x, y, loss, budget, str(err).splitlines()[0])
    return Reference({t: lay.bias for t, lay in enumerate(exact)},
                     {t: formed_weight_block(exact[t]) for t in formed}, notes, exact if equal else None, equal)


def _weight_note(layers: Sequence[nn.Module], formed: list[int]) -> dict[str, str]:
    """A note naming the conv layers whose weight blocks are not formed, if any."""
    big = [t for t, m in enumerate(layers) if isinstance(m, nn.Conv2d) and t not in formed]
    if not big:
        return {}
    sizes = ", ".join(f"layer {t + 1}: {layers[t].weight.numel():,}" for t in big)
    return {"weight": f"log.hessian_*: conv weight blocks skipped where C_out·C_in·k² > {WEIGHT_LIMIT} ({sizes})"}


def _autograd_reference(net: nn.Module, layers: Sequence[nn.Module], x: Tensor, y: Tensor, loss: Loss,
                        budget: int, why: str) -> Reference:
    """Route 3: the bias blocks of the layers that fit ``budget`` products (none: an empty reference)."""
    widths = [int(m.weight.shape[0]) for m in layers]  # n_t: one product per row of layer t's bias block
    chosen = select_layers(widths, [isinstance(m, nn.Conv2d) for m in layers], budget)
    skipped = ", ".join(f"layer {t + 1} ({widths[t]:,})" for t in range(len(layers)) if t not in chosen)
    if not chosen:
        return Reference({}, notes={"none": (
            f"log.hessian_*: no layer-wise Hessian errors on this net ({why}; no layer's autograd bias block fits "
            f"log.hessian_hvp_budget={budget} Hessian-vector products: {skipped}; raise the budget)")})
    used = sum(widths[t] for t in chosen)
    text = (f"log.hessian_*: exact bias blocks by autograd ({used} Hessian-vector products, "
            f"log.hessian_hvp_budget={budget}) of layer(s) {', '.join(str(t + 1) for t in chosen)}")
    if skipped:
        text += f"; skipped (products each) {skipped}"
    blocks = autograd_bias_blocks(net, [layers[t] for t in chosen], x, y, loss)
    return Reference(dict(zip(chosen, blocks)), notes={"autograd": f"{text}; no weight blocks: {why}"})
