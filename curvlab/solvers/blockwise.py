"""Shared machinery of the block-diagonal solvers (KFI, EA-CG).

Both solvers turn the per-layer curvature of :func:`curvlab.curvature.curvature` into a
direction. This base class owns what they share: parsing and validating the curvature
options against the loss, the single forward pass per step whose cache feeds the
curvature recursion, the input second moments E[h hᵀ] that only some layers need, and,
for the layers that ask for them, the per-sample factors behind a layer's Kronecker
blocks (:class:`LayerSamples`), with which KFI applies (E[h hᵀ] + cI)⁻¹ through the
(B, B) Gram matrix.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from curvlab.curvature.blocks import LayerCurvature, drop_absent_biases, shape_weights
from curvlab.curvature.options import CurvatureOptions, Kind, WeightFactor, reject_unknown
from curvlab.curvature.recursion import curvature
from curvlab.losses import Loss
from curvlab.modules import Chain, Net, chain
from curvlab.solvers.base import Direction, Solver
from curvlab.solvers.options import UNIT_INTERVAL, check_step_options

__all__ = ["as_curvature_options", "check_kind", "BlockSolver", "LayerSamples", "compute_blocks"]

_PSD_KINDS = "fisher (KFAC), gn (KFRA, convex loss only), pch1 or pch2"


def as_curvature_options(value: CurvatureOptions | dict[str, Any] | str | None) -> CurvatureOptions:
    """Accept options, their config dict, a bare kind name, or None (PCH-1 defaults)."""
    if value is None:
        return CurvatureOptions()
    if isinstance(value, CurvatureOptions):
        return value
    if isinstance(value, str):
        return CurvatureOptions(kind=value)  # type: ignore[arg-type]
    if isinstance(value, dict):
        reject_unknown(value, CurvatureOptions.field_names(), "curvature")
        return CurvatureOptions(**value)
    raise ValueError(f"curvature must be CurvatureOptions, a dict or a kind name, got {type(value).__name__}")


def check_kind(kind: Kind, loss: Loss, solver: str, psd_required: bool) -> None:
    """Reject curvature kinds that make ``solver`` ill-posed for ``loss`` (the config check reads this too)."""
    allowed = [k.value for k in Kind if (loss.convex or k is not Kind.GN) and not (psd_required and k is Kind.EXACT)]
    if kind.value in allowed:
        return
    if kind is Kind.GN:
        why = (f"curvature.kind=gn with solver {solver}: GN is not PSD for the {loss.kind.value} loss; "
               "use pch1, pch2 or fisher (or loss=cross_entropy)")
    else:
        why = (f"solver {solver}: curvature.kind=exact is not PSD, so its Kronecker factors have no Cholesky "
               f"factorisation; use {_PSD_KINDS}")
    raise ValueError(f"{why}; allowed: {', '.join(sorted(allowed))}")


@dataclass
class LayerSamples:
    """Per-sample factors of one layer: E[h hᵀ] = hᵀh / B and ∇_W = eᵀ h.

    Attributes:
        h: (B, n_in) the layer's inputs.
        e: (B, n_out) each sample's share of the batch-mean gradient with respect to the
            layer's pre-activation z (∇_{z_i} of the mean loss, i.e. δ_i / B).
    """

    h: Tensor
    e: Tensor


@lru_cache(maxsize=16)
def _rank_one(options: CurvatureOptions) -> CurvatureOptions:
    """``options`` with ``weight_factor=rank_one``, validated once per distinct options, not every step."""
    return replace(options, weight_factor=WeightFactor.RANK_ONE)


def compute_blocks(
    net: Net | Chain,
    x: Tensor,
    y: Tensor,
    loss: Loss,
    options: CurvatureOptions,
    input_cov_layers: set[int],
    sample_layers: set[int] | None = None,
) -> tuple[float, list[LayerCurvature], dict[int, LayerSamples]]:
    """One forward pass, the curvature blocks from it, and E[h hᵀ] or samples where requested.

    Args:
        net: the net, or its :class:`~curvlab.modules.Chain` (saves the module walk).
        input_cov_layers: 0-based layer indices whose ``input_cov`` must be filled. It is
            computed here from the cached inputs so that no layer pays for it unasked (the
            first layer's E[h hᵀ] does not fit in memory for ImageNet inputs).
        sample_layers: 0-based layer indices whose :class:`LayerSamples` are returned; their
            ``e`` are the per-sample gradient shares the recursion computes anyway.

    Returns:
        The batch-mean loss before the update, the per-layer blocks and the samples.
    """
    sample_layers = sample_layers or set()
    with torch.no_grad():  # the recursion computes the gradients itself: no autograd graph
        view = net if isinstance(net, Chain) else chain(net)
        cache = view.forward_cache(x)
    # E[h hᵀ] is filled below only where needed; rank_one keeps the recursion from forming it.
    opts = options if options.weight_factor is WeightFactor.RANK_ONE else _rank_one(options)
    # A conv layer's A factor comes from its patches (kfac_type), which only the recursion holds.
    step_cov = input_cov_layers if view.has_steps else False
    products = options.weight_factor is WeightFactor.BLOCK
    check_step_options(options, view.has_steps)
    blocks = curvature(
        view, x, y, opts.kind, loss, options=opts, cache=cache, grad_samples=sample_layers, input_cov=step_cov,
        block_products=products,
    )
    samples = {t: LayerSamples(cache.inputs[t], blocks[t].grad_samples) for t in sorted(sample_layers)}
    with torch.no_grad():
        loss_value = float(loss(cache.output.detach(), y))
        for t in input_cov_layers:
            if blocks[t].input_cov is None:
                h = cache.inputs[t].detach()  # (B, n_{t-1})
                blocks[t] = replace(blocks[t], input_cov=view.rules[t].input_factors(h, cov=True)[1])  # E[h hᵀ]
    return loss_value, list(blocks), samples


class BlockSolver(Solver):
    """A solver whose direction is a function of the per-layer curvature blocks.

    Args:
        net, loss, lr: as every solver.
        curvature: the curvature options, their dict, or None for the defaults (PCH-1).
        alpha: damping weight, 0 < α < 1.
    """

    psd_required: bool = False  # whether the kind must be PSD for every loss (KFI)
    curvature_fields = frozenset(CurvatureOptions.field_names())  # the whole `curvature` group
    option_rules = {"alpha": UNIT_INTERVAL.with_hint("0 < alpha < 1; EA-CG uses 0.01–0.1")}

    def __init__(
        self,
        net: Net,
        loss: Loss,
        lr: float,
        curvature: CurvatureOptions | dict[str, Any] | str | None = None,
        alpha: float = 0.02,
    ) -> None:
        super().__init__(net, loss, lr)
        self.check_ranges(alpha=alpha)
        self.alpha = float(alpha)
        self.curvature = as_curvature_options(curvature)
        self.check_kind(self.curvature.kind, loss)

    @classmethod
    def check_kind(cls, kind: Kind, loss: Loss) -> None:
        check_kind(kind, loss, cls.name or cls.__name__, cls.psd_required)

    def needs_input_cov(self, t: int) -> bool:
        """Whether layer ``t`` (0-based) needs E[h hᵀ]."""
        return False

    _depth: int | None = None

    @property
    def depth(self) -> int:
        """The net's number of layers, from its first walk (``compute_blocks`` walks it every step)."""
        if self._depth is None:
            self._depth = chain(self.net).depth
        return self._depth

    def input_needs(self, batch: int) -> tuple[set[int], set[int]]:
        """The layers that need E[h hᵀ] and those that need :class:`LayerSamples` this step."""
        return {t for t in range(self.depth) if self.needs_input_cov(t)}, set()

    @abstractmethod
    def solve(
        self, blocks: list[LayerCurvature], samples: dict[int, LayerSamples]
    ) -> tuple[list[Tensor], dict[str, float]]:
        """The direction in ``net.parameters()`` order and solver statistics."""

    def direction(self, x: Tensor, y: Tensor) -> Direction:
        cov_layers, sample_layers = self.input_needs(x.shape[0])
        loss_value, blocks, samples = compute_blocks(
            self.net, x, y, self.loss, self.curvature, cov_layers, sample_layers
        )
        with torch.no_grad():
            d, stats = self.solve(blocks, samples)
            d = drop_absent_biases(shape_weights(d, blocks), blocks)  # conv weights; layers without a bias
        return Direction(loss_value, [di.detach() for di in d], stats)
