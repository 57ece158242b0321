"""Batched conjugate gradients for many small independent SPD systems.

EA-CG (Chen et al., Eqs. 9–11) and HBP's block splitting (Dangel & Hennig, Eq. 8 and
Figure 5) solve one linear system per curvature block. Running them one after another
would cost one Python loop of ``max_cg`` iterations per block; here all systems advance
in lock step and each keeps its own step sizes, so the result is exactly that of an
independent CG per system.

A *group* is a stack of systems of one shape: its unknowns and right-hand side have shape
``(*S, m, c)`` where ``S`` indexes the systems and the last two dimensions hold one
system's unknown (a vector when ``c == 1``, a weight matrix otherwise). Inner products
reduce over the last two dimensions. Several groups of different shapes are solved in
one loop (:func:`batched_cg`).

Stopping, per system: ``‖r‖ ≤ eps · ‖b‖`` (EA-CG's ε_CG rule), ``max_iter`` iterations,
or non-positive curvature ``pᵀAp ≤ 0``. In the last case CG cannot continue (the
quadratic model is unbounded along ``p``); the system stops and keeps its current
iterate, which is a descent direction for the model, or, when this happens at the very
first iteration (``x = 0``), returns the right-hand side ``b = −g``, the steepest-descent
direction. These systems are counted in :attr:`CGResult.neg_curvature`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["CGResult", "batched_cg"]

MatVec = Callable[[Tensor], Tensor]


@dataclass
class CGResult:
    """Solutions and per-system diagnostics of one group.

    Attributes:
        x: solutions, same shape as the right-hand side ``(*S, m, c)``.
        iters: (*S,) CG iterations (matrix products that updated the iterate).
        converged: (*S,) whether ``‖r‖ ≤ eps ‖b‖`` was reached (true for ``b = 0``).
        neg_curvature: (*S,) whether ``pᵀAp ≤ 0`` stopped the system.
    """

    x: Tensor
    iters: Tensor
    converged: Tensor
    neg_curvature: Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-system inner product over the last two dimensions, (*S,)."""
    sys_shape, n = a.shape[:-2], a.shape[-2] * a.shape[-1]
    # A batched (1, n) @ (n, 1) product: no (S, m, c) temporary as (a * b).sum would make.
    return (a.reshape(-1, 1, n) @ b.reshape(-1, n, 1)).reshape(sys_shape)


def _bcast(s: Tensor) -> Tensor:
    """(*S,) → (*S, 1, 1) to scale a group's systems."""
    return s[..., None, None]


class _GroupState:
    """CG iterates of one group; ``step`` performs one iteration on its active systems."""

    def __init__(self, matvec: MatVec, b: Tensor, eps: float) -> None:
        self.matvec = matvec
        self.b = b
        self.x = torch.zeros_like(b)
        self.r = b.clone()
        self.p = b.clone()
        self.rs = _dot(b, b)  # (*S,)
        self.tol = eps * self.rs.sqrt()
        sys_shape = b.shape[:-2]
        self.converged = self.rs.sqrt() <= self.tol  # b = 0 is solved by x = 0
        self.active = ~self.converged
        self.iters = torch.zeros(sys_shape, dtype=torch.long, device=b.device)
        self.neg = torch.zeros(sys_shape, dtype=torch.bool, device=b.device)

    def step(self) -> None:
        ap = self.matvec(self.p)  # (*S, m, c)
        pap = _dot(self.p, ap)
        neg = self.active & (pap <= 0)
        if neg.any():
            # Non-positive curvature: stop; at x = 0 fall back to steepest descent b = −g.
            first = neg & (self.iters == 0)
            self.x = torch.where(_bcast(first), self.b, self.x)
            self.neg |= neg
        upd = self.active & ~neg
        one = torch.ones_like(pap)
        # Inactive systems get a = β = 0, so their iterate and residual stay frozen.
        a = torch.where(upd, self.rs / torch.where(upd, pap, one), torch.zeros_like(pap))
        self.x.addcmul_(_bcast(a), self.p)  # x += a p, in place: these can be (1024, 3072)
        self.r.addcmul_(_bcast(a), ap, value=-1)  # r −= a A p
        rs_new = _dot(self.r, self.r)
        self.iters += upd.long()
        done = upd & (rs_new.sqrt() <= self.tol)
        self.converged |= done
        self.active = upd & ~done
        beta = torch.where(self.active, rs_new / torch.where(self.active, self.rs, one), torch.zeros_like(pap))
        self.p.mul_(_bcast(beta)).add_(self.r)  # p = r + β p
        self.rs = rs_new

    def result(self) -> CGResult:
        return CGResult(self.x, self.iters, self.converged, self.neg)


def batched_cg(
    matvecs: Sequence[MatVec], rhs: Sequence[Tensor], max_iter: int, eps: float
) -> list[CGResult]:
    """Solve ``A_s x_s = b_s`` for every system ``s`` of every group, in lock step.

    Args:
        matvecs: per group, ``X ↦ A X`` applied to all systems of the group at once;
            maps ``(*S, m, c)`` to the same shape. ``A_s`` must be symmetric.
        rhs: per group, the right-hand sides ``b``, shape ``(*S, m, c)``.
        max_iter: the most CG iterations of any system (EA-CG's max|CG|), ≥ 1.
        eps: relative residual tolerance ε_CG ≥ 0: a system stops when ``‖r‖ ≤ eps ‖b‖``.

    Returns:
        One :class:`CGResult` per group, in the order given.
    """
    if max_iter < 1:
        raise ValueError(f"max_cg must be >= 1, got {max_iter}")
    if eps < 0:
        raise ValueError(f"eps_cg must be >= 0, got {eps}")
    if len(matvecs) != len(rhs):
        raise ValueError(f"batched_cg: {len(matvecs)} matvecs for {len(rhs)} right-hand sides")
    groups = [_GroupState(mv, b, eps) for mv, b in zip(matvecs, rhs)]
    for _ in range(max_iter):
        live = [g for g in groups if bool(g.active.any())]  # one sync per group and iteration
        if not live:
            break
        for g in live:
            g.step()
    return [g.result() for g in groups]
