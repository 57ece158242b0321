"""EA-CG's systems as batches for :func:`~curvlab.solvers.cg.batched_cg` (Chen et al., Eqs. 10–11).

A *group* (:class:`Group`) is a stack of systems of one shape with its matvec, right-hand sides
and the map from its CG solution back to the direction's tensors. Here are the groups that run
CG on the (m, c) iterates themselves:

- the full factor (Eq. 11a, ``weight_factor=full``): D ↦ (1 − α) B D M + α D with M = E[h hᵀ],
  and any rank-one system without the reduced structure (a conv layer whose weight G,
  ``kron_out``, is not its bias block: M = μμᵀ on the (m, c) iterates), with the bias systems
  ((1 − α) B + α I) d_b = −∇_b of Eq. (10a) (:func:`full_factor_groups`);
- ``weight_factor=block`` (conv nets): D ↦ (1 − α) 𝓑 D + α D with the layer's own weight block
  𝓑 multiplied matrix-free (:func:`product_groups`).

With ``split=k`` each bias and weight system is cut row-wise into ``k`` sub-systems
(:class:`~curvlab.solvers.split.RowSplit`, Dangel & Hennig Figure 5). The rank-one default
(Eq. 11b) runs in reduced coordinates instead (:mod:`curvlab.solvers.eacg_reduced`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from curvlab.curvature.blocks import LayerCurvature
from curvlab.solvers.cg import MatVec
from curvlab.solvers.split import RowSplit

__all__ = ["Group", "Unpack", "full_factor_groups", "product_groups"]

# Turns a group's CG solution (*S, m, c) into (slot, tensor) pairs of the direction.
Unpack = Callable[[Tensor], list[tuple[int, Tensor]]]


@dataclass
class Group:
    """Systems of one shape solved as one batch: their operator, right-hand sides, unpacking."""

    matvec: MatVec
    rhs: Tensor  # (*S, m, c)
    unpack: list[Unpack] = field(default_factory=list)


class _System(NamedTuple):
    """One layer's bias or weight system before batching."""

    slot: int  # position in net.parameters()
    split: RowSplit
    blocks: Tensor  # (k, m, m) split bias block
    rhs: Tensor  # (k, m, c) split −gradient
    factor: Tensor | None  # None (bias) or E[h hᵀ] (c, c) for Eq. (11a)


def _group_matvec(bs: Tensor, factor: Tensor | None, alpha: float) -> MatVec:
    """``X ↦ (1 − α) B X M + α X`` for a stack of systems.

    Shapes: ``bs`` (L, k, m, m); ``X`` (L, k, m, c); ``factor`` None for bias systems
    (``M = 1``) or (L, c, c) for Eq. (11a).
    """
    n_l, k, m, _ = bs.shape
    bs3 = bs.reshape(n_l * k, m, m)

    def mv(x: Tensor) -> Tensor:
        x3 = x.reshape(n_l * k, m, -1)  # (Lk, m, c)
        if factor is None:  # bias, Eq. (10a): B X
            right = x3
        else:  # Eq. (11a): B (D M)
            c = x.shape[-1]
            right = (x.reshape(n_l, k * m, c) @ factor).reshape(n_l * k, m, c)
        # One fused pass: α X + (1 − α) B @ right.
        return torch.baddbmm(x3, bs3, right, beta=alpha, alpha=1 - alpha).reshape(x.shape)

    return mv


def _stack(ts: list[Tensor]) -> Tensor:
    """``torch.stack`` without a copy for the common one-member group."""
    return ts[0].unsqueeze(0) if len(ts) == 1 else torch.stack(ts)


def full_factor_groups(
    blocks: Sequence[LayerCurvature], alpha: float, split: int, bias: bool,
    layers: Sequence[int] | None = None, rank_one: bool = False,
) -> list[Group]:
    """Eq. (11a) systems of ``layers`` (default: all); equal shapes (kind, k, m, c) form one group,
    across layers too. ``rank_one``: M = E[h] E[h]ᵀ (Eq. 11b) on the (m, c) iterates, for layers whose
    weight G (``out_factor``, a conv's expand G) is not their bias block."""
    by_shape: dict[tuple[str, int, int, int], list[_System]] = defaultdict(list)
    per_layer = 2 if bias else 1
    for t in range(len(blocks)) if layers is None else layers:
        blk, slot = blocks[t], per_layer * t
        rs = RowSplit(blk.n_out, split, device=blk.bias.device)
        b_split = rs.blocks(blk.bias)  # (k, m, m)
        w_split = b_split if blk.kron_out is None else rs.blocks(blk.kron_out)  # G ⊗ M of the weight
        if rank_one:
            factor = torch.outer(blk.input_mean, blk.input_mean)
        elif blk.input_cov is None:
            raise ValueError(f"weight_factor=full needs input_cov for layer {t + 1}; request input_cov=True")
        else:
            factor = blk.input_cov
        by_shape[("w", rs.k, rs.m, blk.n_in)].append(_System(slot, rs, w_split, rs.rows(-blk.grad_weight), factor))
        if bias:
            by_shape[("b", rs.k, rs.m, 1)].append(
                _System(slot + 1, rs, b_split, rs.rows(-blk.grad_bias[:, None]), None)
            )

    groups = []
    for (tag, *_), members in by_shape.items():
        factor = None if tag == "b" else _stack([s.factor for s in members])  # type: ignore[misc]
        group = Group(_group_matvec(_stack([s.blocks for s in members]), factor, alpha),
                       _stack([s.rhs for s in members]))  # (L, k, m, c)
        for i, s in enumerate(members):
            def unpack(x: Tensor, i: int = i, s: _System = s, is_bias: bool = tag == "b") -> list[tuple[int, Tensor]]:
                merged = s.split.merge(x[i])  # (n_out, c)
                return [(s.slot, merged[:, 0] if is_bias else merged)]

            group.unpack.append(unpack)
        groups.append(group)
    return groups


def product_groups(blocks: Sequence[LayerCurvature], alpha: float, bias: bool) -> list[Group]:
    """``weight_factor=block`` (conv nets): each weight system D ↦ (1 − α) 𝓑 D + α D with the layer's
    own weight block 𝓑 = E_i[J_θ,iᵀ H_i J_θ,i] multiplied matrix-free (``block_product``); bias systems
    as Eq. (10a). One group per system (the products differ in shape and kind)."""
    per_layer = 2 if bias else 1
    groups = []
    for t, blk in enumerate(blocks):
        product = blk.block_product
        if product is None:
            raise ValueError(f"weight_factor=block needs each layer's block_product (layer {t + 1} has none)")

        def mv(x: Tensor, product: Callable = product) -> Tensor:  # x (1, 1, n_out, n_in)
            return product(x[0, 0], None)[0].mul(1 - alpha).add_(x[0, 0], alpha=alpha).view_as(x)

        weight = Group(mv, -blk.grad_weight[None, None])
        weight.unpack.append(lambda x, slot=per_layer * t: [(slot, x[0, 0])])
        groups.append(weight)
        if bias:
            b_sys = Group(_group_matvec(blk.bias[None, None], None, alpha), -blk.grad_bias[None, None, :, None])
            b_sys.unpack.append(lambda x, slot=per_layer * t + 1: [(slot, x[0, 0, :, 0])])
            groups.append(b_sys)
    return groups
