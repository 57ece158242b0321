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
(:mod:`curvlab.solvers.cg`).

The systems are built as batches elsewhere: the rank-one factor's in n_t + 1 unknowns
(:mod:`curvlab.solvers.eacg_reduced`, which derives the reduction), the full factor's and
``weight_factor=block``'s on the (m, c) iterates (:mod:`curvlab.solvers.eacg_groups`). Here:
:func:`eacg_solve`, which picks them, runs CG and assembles the direction, and the solver
:class:`EACG`.

**Conv layers** are linear layers over their input patches (``LayerCurvature``): M is the patch
factor A (``input_cov``, Eq. 11a) or the patch mean's outer product (Eq. 11b), the bias system uses
the exact bias block; with ``kfac_type=expand`` the weight's G (KFC's, ``kron_out``) differs from that
block, so such a layer's rank-one weight system runs on the (m, c) iterates with M = μμᵀ. With
``weight_factor=block`` a weight system multiplies with the layer's own weight block of the kind
(its per-sample chain, HBP Sec. 3) matrix-free, no Kronecker factor at all.

Non-positive curvature pᵀAp ≤ 0 can only occur for an indefinite kind (``exact``): that
system stops with its current iterate, or with −g if it happens at the first iteration
(see :mod:`curvlab.solvers.cg`). Statistics per step: ``cg_iters`` (most iterations of any
system), ``cg_iters_mean``, ``cg_systems``, ``neg_curvature`` (systems stopped by
pᵀAp ≤ 0) and ``cg_unconverged`` (systems that hit ``max_cg``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from curvlab.curvature.blocks import LayerCurvature
from curvlab.curvature.options import CurvatureOptions, WeightFactor
from curvlab.losses import Loss
from curvlab.modules import Net
from curvlab.solvers.base import register
from curvlab.solvers.blockwise import BlockSolver, LayerSamples
from curvlab.solvers.cg import CGResult, batched_cg
from curvlab.solvers.eacg_groups import full_factor_groups, product_groups
from curvlab.solvers.eacg_reduced import rank_one_groups
from curvlab.solvers.options import COUNT, NON_NEGATIVE

__all__ = ["eacg_solve", "EACG"]


def _cat(ts: list[Tensor]) -> Tensor:
    """``torch.cat`` without a copy for the common one-member group."""
    return ts[0] if len(ts) == 1 else torch.cat(ts)


def _stats(results: list[CGResult]) -> dict[str, float]:
    """CG statistics of a step, read back in one host sync (none where the stops were read on
    the host)."""
    if all(r.host is not None for r in results):  # a few flags: Python lists cost less than numpy calls
        it, conv, ng = ([v for r in results for v in r.host[k].ravel().tolist()] for k in range(3))  # type: ignore[index]
        return {"cg_iters": float(max(it)), "cg_iters_mean": sum(it) / len(it), "cg_systems": float(len(it)),
                "neg_curvature": float(sum(ng)), "cg_unconverged": float(sum(not (c or g) for c, g in zip(conv, ng)))}
    iters = _cat([r.iters.flatten() for r in results]).double()
    neg = _cat([r.neg_curvature.flatten() for r in results])
    unconverged = _cat([(~r.converged & ~r.neg_curvature).flatten() for r in results])
    most, mean, n_neg, n_unconv = torch.stack([iters.max(), iters.mean(), neg.sum(), unconverged.sum()]).tolist()
    return {
        "cg_iters": most, "cg_iters_mean": mean, "cg_systems": float(iters.numel()),
        "neg_curvature": n_neg, "cg_unconverged": n_unconv,
    }


def eacg_solve(
    blocks: Sequence[LayerCurvature],
    alpha: float,
    max_cg: int = 50,
    eps_cg: float = 0.1,
    split: int = 1,
    weight_factor: WeightFactor | str = WeightFactor.RANK_ONE,
    bias: bool = True,
    overwrite: bool = False,
    cache: dict[tuple[object, ...], Any] | None = None,
) -> tuple[list[Tensor], dict[str, float]]:
    """Solve Eq. (10a)/(10b) for every layer with (optionally split) batched CG.

    Args:
        blocks: per-layer curvature, input side first.
        alpha: weight of the identity in Eq. (9), 0 < α < 1.
        max_cg: CG iteration limit per system (max|CG|).
        eps_cg: stop a system when ‖r‖ ≤ eps_cg ‖g‖, ``g`` that system's gradient part.
        split: number of row-wise sub-blocks per bias and weight (HBP Figure 5).
        weight_factor: ``rank_one`` (Eq. 11b), ``full`` (Eq. 11a; needs ``input_cov``) or ``block``
            (nets with convolutions: each layer's own weight block, matrix-free; needs ``block_product``).
        bias: whether the net has biases (otherwise no bias systems are solved).
        overwrite: the rank-one path may use the blocks' ``grad_weight`` as its workspace: they
            are overwritten and become the returned d_W (a solver's own per-step blocks; saves
            writing a fresh weight-sized tensor, ≈ 6 ms for the first CIFAR-10 layer).
        cache: a dict the caller keeps from step to step: the rank-one path's buffers, views and
            bindings live there (:class:`~curvlab.solvers.eacg_reduced._ReducedLayout`), and the
            next solve of the same shapes refills them. The returned direction never aliases them.

    Returns:
        The direction ``[d_W1, d_b1, d_W2, …]`` in ``net.parameters()`` order (no bias
        entries without biases), and CG statistics.
    """
    if WeightFactor(weight_factor) is WeightFactor.BLOCK:
        if split != 1:
            raise ValueError("EA-CG: split applies to Kronecker-factored blocks; use split=1 with weight_factor=block")
        groups = product_groups(blocks, alpha, bias)
    elif WeightFactor(weight_factor) is WeightFactor.FULL:
        groups = full_factor_groups(blocks, alpha, split, bias)
    else:  # the reduced form shares B_j between a layer's systems: layers with their own weight G apart
        shared = [t for t, blk in enumerate(blocks) if blk.kron_out is None]
        own = [t for t, blk in enumerate(blocks) if blk.kron_out is not None]
        groups = rank_one_groups(blocks, alpha, split, bias, overwrite, shared, cache) if shared else []
        if own:
            groups += full_factor_groups(blocks, alpha, split, bias, own, rank_one=True)
    results = batched_cg([g.matvec for g in groups], [g.rhs for g in groups], max_cg, eps_cg)
    d: list[Tensor] = [torch.empty(0)] * (len(blocks) * (2 if bias else 1))
    for group, res in zip(groups, results):
        for unpack in group.unpack:
            for slot, tensor in unpack(res.x):
                d[slot] = tensor
    return d, _stats(results)


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

    label = "EA-CG · {kind}"
    option_rules = {
        **BlockSolver.option_rules,
        "max_cg": COUNT,
        "eps_cg": NON_NEGATIVE.with_hint("0: CG runs max_cg iterations"),
        "split": COUNT.with_hint("1, 2, 4, 16, …"),
    }

    def __init__(
        self,
        net: Net,
        loss: Loss,
        lr: float,
        curvature: CurvatureOptions | dict[str, Any] | None = None,
        alpha: float = 0.02,
        max_cg: int = 50,
        eps_cg: float = 0.1,
        split: int = 1,
    ) -> None:
        super().__init__(net, loss, lr, curvature, alpha)
        self.check_ranges(max_cg=max_cg, eps_cg=eps_cg, split=split)
        self.max_cg = int(max_cg)
        self.eps_cg = float(eps_cg)
        self.split = int(split)
        self._cache: dict[tuple[object, ...], Any] = {}  # eacg_solve's buffers, kept across steps

    def needs_input_cov(self, t: int) -> bool:
        return self.curvature.weight_factor is WeightFactor.FULL

    def solve(
        self, blocks: list[LayerCurvature], samples: dict[int, LayerSamples]
    ) -> tuple[list[Tensor], dict[str, float]]:
        return eacg_solve(
            blocks, self.alpha, self.max_cg, self.eps_cg, self.split,
            self.curvature.weight_factor, bias=any(b.has_bias for b in blocks), overwrite=True, cache=self._cache,
        )
