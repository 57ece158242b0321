"""Layer-wise Hessian errors of EA-CG (Chen et al., Tables 2–5).

For layer t with approximate block B̃_t and true Hessian block B_t, the error is
‖B̃_t − |B_t|‖_F, where |B_t| replaces the eigenvalues of B_t by their absolute values (the
PSD target a positive-curvature approximation aims at). The "Total" row is √Σ_t err_t².
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Sequence

import torch
from torch import Tensor

from curvlab.curvature.blocks import LayerCurvature
from curvlab.curvature.options import parse_enum
from curvlab.curvature.reference import abs_eig

__all__ = ["BlockPart", "layerwise_errors", "total_error", "weight_block"]


class BlockPart(str, Enum):
    """Which block of a layer the error compares."""

    BIAS = "bias"  # the (n_t, n_t) bias (pre-activation) block
    WEIGHT = "weight"  # the (n_t n_{t-1})² weight block; needs exact blocks with weight_blocks=True


def weight_block(layer: LayerCurvature) -> Tensor:
    """The weight block of a layer: the stored one, else Eq. (8c)/(11a) H̄ ⊗ E[h hᵀ] (row-major
    ``W.flatten()`` order), or Eq. (11b) H̄ ⊗ E[h]E[h]ᵀ when E[h hᵀ] was not computed."""
    if layer.weight is not None:
        return layer.weight
    cov = layer.input_cov
    if cov is None:
        cov = torch.outer(layer.input_mean, layer.input_mean)
    return torch.kron(layer.bias, cov)


def layerwise_errors(
    approx: Sequence[LayerCurvature | Tensor],
    exact: Sequence[LayerCurvature | Tensor],
    part: str | BlockPart = BlockPart.BIAS,
) -> list[float]:
    """‖B̃_t − |B_t|‖_F for every layer, input side first.

    Args:
        approx: approximate blocks (``curvature(..., kind=...)`` or plain tensors).
        exact: the true blocks (``curvature(..., kind="exact")`` or plain tensors).
        part: ``bias`` or ``weight`` (the latter needs ``weight_blocks=True`` on ``exact``).
    """
    part = parse_enum(BlockPart, part, "layerwise_errors.part")
    if len(approx) != len(exact):
        raise ValueError(f"layerwise_errors: {len(approx)} approximate layers but {len(exact)} exact layers")
    errs = []
    for t, (a, e) in enumerate(zip(approx, exact)):
        a_t, e_t = _select(a, part, t, exact=False), _select(e, part, t, exact=True)
        if a_t.shape != e_t.shape:
            raise ValueError(f"layerwise_errors: layer {t} shapes differ, {tuple(a_t.shape)} vs {tuple(e_t.shape)}")
        errs.append(float(torch.linalg.matrix_norm(a_t - abs_eig(e_t.to(a_t.dtype)))))
    return errs


def total_error(errs: Sequence[float]) -> float:
    """The "Total" row of Tables 2–5: the Frobenius norm over all layers, √Σ_t err_t²."""
    return math.sqrt(sum(e * e for e in errs))


def _select(block: LayerCurvature | Tensor, part: BlockPart, t: int, exact: bool) -> Tensor:
    if isinstance(block, Tensor):
        return block
    if part is BlockPart.BIAS:
        return block.bias
    if exact and block.weight is None:
        raise ValueError(
            f"layerwise_errors(part='weight'): exact layer {t} has no weight block; "
            "compute it with curvature(..., kind='exact', weight_blocks=True)"
        )
    return weight_block(block)
