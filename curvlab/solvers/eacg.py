"""EA-CG: block-wise truncated Newton with conjugate gradients (Chen et al., Eqs. 9–11).

For every layer t the damped system of Eq. (9) splits into a bias system (Eq. 10a) and a
weight system (Eq. 10b):

    ((1 − α) B + α I) d_b = −∇_b,        D ↦ (1 − α) B D M + α D  with  D = d_W,  rhs −∇_W,

where ``B`` is the layer's bias block and ``M`` the input factor: E[h] E[h]ᵀ (Eq. 11b,
``weight_factor=rank_one``, the EA-CG default) or E[h hᵀ] (Eq. 11a, ``full``). The
matrix form is Eq. (11) read through ``(Cᵀ ⊗ A) vec(X) = vec(A X C)``; the weight block
itself is never formed. With ``split=k`` every bias and weight system is further cut
row-wise into ``k`` independent sub-systems (:class:`~curvlab.solvers.split.RowSplit`,
Dangel & Hennig Figure 5). All systems of all layers run in one batched CG
(:mod:`curvlab.solvers.cg`); systems of equal shape, including equal-shaped layers, share
one batched matrix product.

Non-positive curvature pᵀAp ≤ 0 can only occur for an indefinite kind (``exact``): that
system stops with its current iterate, or with −g if it happens at the first iteration
(see :mod:`curvlab.solvers.cg`). Statistics per step: ``cg_iters`` (most iterations of any
system), ``cg_iters_mean``, ``cg_systems``, ``neg_curvature`` (systems stopped by
pᵀAp ≤ 0) and ``cg_unconverged`` (systems that hit ``max_cg``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from curvlab.curvature.blocks import LayerCurvature
from curvlab.curvature.options import CurvatureOptions, WeightFactor
from curvlab.losses import Loss
from curvlab.nets import MLP
from curvlab.solvers.base import register
from curvlab.solvers.blockwise import BlockSolver
from curvlab.solvers.cg import batched_cg
from curvlab.solvers.split import RowSplit

__all__ = ["eacg_solve", "EACG"]


class _System(NamedTuple):
    """One layer's bias or weight system before batching."""

    slot: int  # position in net.parameters()
    split: RowSplit
    blocks: Tensor  # (k, m, m) split bias block
    rhs: Tensor  # (k, m, c) split −gradient
    factor: Tensor | None  # None (bias), μ (c,) for Eq. (11b) or E[h hᵀ] (c, c) for Eq. (11a)


def _group_matvec(bs: Tensor, factor: Tensor | None, alpha: float, full: bool) -> Callable[[Tensor], Tensor]:
    """``X ↦ (1 − α) B X M + α X`` for a stack of systems.

    Shapes: ``bs`` (L, k, m, m); ``X`` (L, k, m, c); ``factor`` None for bias systems
    (``M = 1``), (L, c) for the rank-one ``μ`` of Eq. (11b), or (L, c, c) for Eq. (11a).
    """
    n_l, k, m, _ = bs.shape
    bs3 = bs.reshape(n_l * k, m, m)
    if factor is not None and not full:
        mu_row = factor[:, None, None, :].expand(n_l, k, 1, factor.shape[-1]).reshape(n_l * k, 1, -1)  # (Lk, 1, c)
        mu_col = mu_row.transpose(1, 2)  # (Lk, c, 1)

    def mv(x: Tensor) -> Tensor:
        x3 = x.reshape(n_l * k, m, -1)  # (Lk, m, c)
        if factor is None:  # bias, Eq. (10a): B X
            left, right = bs3, x3
        elif not full:  # Eq. (11b): B (D μ) μᵀ, two matrix-vector products and one outer product
            left, right = bs3 @ (x3 @ mu_col), mu_row
        else:  # Eq. (11a): B (D M)
            c = x.shape[-1]
            left, right = bs3, (x.reshape(n_l, k * m, c) @ factor).reshape(n_l * k, m, c)
        # One fused pass: α X + (1 − α) left @ right.
        return torch.baddbmm(x3, left, right, beta=alpha, alpha=1 - alpha).reshape(x.shape)

    return mv


def _stack(ts: list[Tensor]) -> Tensor:
    """``torch.stack`` without a copy for the common one-member group."""
    return ts[0].unsqueeze(0) if len(ts) == 1 else torch.stack(ts)


def eacg_solve(
    blocks: Sequence[LayerCurvature],
    alpha: float,
    max_cg: int = 50,
    eps_cg: float = 0.1,
    split: int = 1,
    weight_factor: WeightFactor | str = WeightFactor.RANK_ONE,
    bias: bool = True,
) -> tuple[list[Tensor], dict[str, float]]:
    """Solve Eq. (10a)/(10b) for every layer with (optionally split) batched CG.

    Args:
        blocks: per-layer curvature, input side first.
        alpha: weight of the identity in Eq. (9), 0 < α < 1.
        max_cg: CG iteration limit per system (max|CG|).
        eps_cg: stop a system when ‖r‖ ≤ eps_cg ‖g‖, ``g`` that system's gradient part.
        split: number of row-wise sub-blocks per bias and weight (HBP Figure 5).
        weight_factor: ``rank_one`` (Eq. 11b) or ``full`` (Eq. 11a; needs ``input_cov``).
        bias: whether the net has biases (otherwise no bias systems are solved).

    Returns:
        The direction ``[d_W1, d_b1, d_W2, …]`` in ``net.parameters()`` order (no bias
        entries without biases), and CG statistics.
    """
    full = WeightFactor(weight_factor) is WeightFactor.FULL
    # Systems of equal shape (kind, k, m, c) form one batched group, across layers too.
    groups: dict[tuple[str, int, int, int], list[_System]] = defaultdict(list)
    slot = 0
    for t, blk in enumerate(blocks):
        rs = RowSplit(blk.n_out, split, device=blk.bias.device)
        b_split = rs.blocks(blk.bias)  # (k, m, m)
        if full and blk.input_cov is None:
            raise ValueError(f"weight_factor=full needs input_cov for layer {t + 1}; request input_cov=True")
        factor = blk.input_cov if full else blk.input_mean
        groups[("w", rs.k, rs.m, blk.n_in)].append(_System(slot, rs, b_split, rs.rows(-blk.grad_weight), factor))
        slot += 1
        if bias:
            groups[("b", rs.k, rs.m, 1)].append(_System(slot, rs, b_split, rs.rows(-blk.grad_bias[:, None]), None))
            slot += 1

    matvecs, rhs = [], []
    for (tag, *_), members in groups.items():
        factor = None if tag == "b" else _stack([s.factor for s in members])  # type: ignore[misc]
        matvecs.append(_group_matvec(_stack([s.blocks for s in members]), factor, alpha, full))
        rhs.append(_stack([s.rhs for s in members]))  # (L, k, m, c)
    results = batched_cg(matvecs, rhs, max_cg, eps_cg)

    d: list[Tensor] = [torch.empty(0)] * slot
    for ((tag, *_), members), res in zip(groups.items(), results):
        for i, s in enumerate(members):
            x = s.split.merge(res.x[i])  # (n_out, c)
            d[s.slot] = x[:, 0] if tag == "b" else x
    iters = torch.cat([r.iters.flatten() for r in results]).double()
    stats = {
        "cg_iters": float(iters.max()),
        "cg_iters_mean": float(iters.mean()),
        "cg_systems": float(iters.numel()),
        "neg_curvature": float(sum(int(r.neg_curvature.sum()) for r in results)),
        "cg_unconverged": float(sum(int((~r.converged & ~r.neg_curvature).sum()) for r in results)),
    }
    return d, stats


@register("eacg")
class EACG(BlockSolver):
    """EA-CG solver: ``θ ← θ + lr · d`` with ``d`` from :func:`eacg_solve`.

    Args:
        net, loss, lr: as every solver.
        curvature: curvature options (kind, weight_factor, …) or their dict; default PCH-1.
        alpha: Eq. (9)'s identity weight, 0 < α < 1.
        max_cg: CG iteration limit per block, ≥ 1.
        eps_cg: relative residual tolerance, ≥ 0.
        split: row-wise sub-blocks per bias and weight, ≥ 1.
    """

    def __init__(
        self,
        net: MLP,
        loss: Loss,
        lr: float,
        curvature: CurvatureOptions | dict[str, Any] | None = None,
        alpha: float = 0.02,
        max_cg: int = 50,
        eps_cg: float = 0.1,
        split: int = 1,
    ) -> None:
        super().__init__(net, loss, lr, curvature, alpha)
        if int(max_cg) != max_cg or max_cg < 1:
            raise ValueError(f"solver.max_cg must be an integer >= 1, got {max_cg}")
        if not eps_cg >= 0:
            raise ValueError(f"solver.eps_cg must be >= 0, got {eps_cg}")
        if int(split) != split or split < 1:
            raise ValueError(f"solver.split must be an integer >= 1 (1, 2, 4, 16, …), got {split}")
        self.max_cg = int(max_cg)
        self.eps_cg = float(eps_cg)
        self.split = int(split)

    def needs_input_cov(self, t: int) -> bool:
        return self.curvature.weight_factor is WeightFactor.FULL

    def solve(self, blocks: list[LayerCurvature]) -> tuple[list[Tensor], dict[str, float]]:
        return eacg_solve(
            blocks, self.alpha, self.max_cg, self.eps_cg, self.split,
            self.curvature.weight_factor, bias=self.net.has_bias,
        )
