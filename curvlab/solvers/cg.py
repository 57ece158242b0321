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

**Per-iteration cost.** An iteration is a fixed handful of tensor operations whatever the
number of systems, without host synchronisation: every per-system quantity (step sizes, the
stopping tests, the iteration counts) lives in small (S,) tensors, stopped systems are frozen
by zero step sizes rather than removed, and whether any system is still running is asked only
at growing intervals (:data:`_CHECK_SHORT`), when groups whose systems have all stopped also
stop being multiplied. With short systems (EA-CG's reduced rank-one systems, see
:mod:`curvlab.solvers.eacg`) the iterates of all groups live in one dense, zero-padded (S, L)
layout, so that the inner products are one batched product and the updates of x and r one
fused ``addcmul``, because such an iteration is bound by per-operation overhead (on a GPU: by
kernel launches); with long ones (weight matrices) the inner products and updates run per
group in the groups' own shapes, so that no padded or buffer-sized temporary is made, because
such an iteration is bound by memory traffic. ``scripts/bench_cg_kernels.py`` counts the
operations.

Stopping, per system: ``‖r‖ ≤ eps · ‖b‖`` (EA-CG's ε_CG rule), ``max_iter`` iterations,
or non-positive curvature ``pᵀAp ≤ 0``. In the last case CG cannot continue (the
quadratic model is unbounded along ``p``); the system stops and keeps its current
iterate, which is a descent direction for the model, or, when this happens at the very
first iteration (``x = 0``), returns the right-hand side ``b = −g``, the steepest-descent
direction. These systems are counted in :attr:`CGResult.neg_curvature`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["CGResult", "batched_cg"]

MatVec = Callable[[Tensor], Tensor]
_SHORT = 4096  # systems with at most this many unknowns count as short (dense padded layout)
# Short layout: after ``it`` iterations the next host check of which systems still run comes
# max(1, it // _CHECK_SHORT) iterations later, so at most ~1/_CHECK_SHORT of the iterations run
# after the last system stopped, with O(_CHECK_SHORT · log max_iter) checks.
_CHECK_SHORT = 4
_DOT_BY_BMM: bool | None = None  # dense inner products by bmm; None: on CUDA (one kernel), not on CPU


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


@dataclass(frozen=True)
class _Group:
    """Where one group's systems live: ``systems`` indexes the (S,) per-system buffers."""

    shape: torch.Size  # (*S, m, c)
    systems: slice
    size: int  # unknowns per system, m c

    @property
    def n_sys(self) -> int:
        return self.systems.stop - self.systems.start


Op = Callable[[], object]  # one bound step of the iteration: its tensors and views made once


class _Dense:
    """Short systems: x, r (and p, Ap) of all systems in one zero-padded (2, S, L) buffer each.

    Padded entries stay exactly 0 (the right-hand side is 0 there and a matvec writes only its
    group's part), so inner products over whole rows are the systems' own.
    """

    def __init__(self, groups: list[_Group], rhs: Sequence[Tensor]) -> None:
        n_sys, width = groups[-1].systems.stop, max(g.size for g in groups)
        self.xr = rhs[0].new_zeros(2, n_sys, width)  # (x, r)
        self.pa = rhs[0].new_zeros(2, n_sys, width)  # (p, A p)
        self.x, self.r = self.xr.unbind()
        self.p, self.ap = self.pa.unbind()
        for g, b in zip(groups, rhs):
            self.r[g.systems, : g.size] = b.reshape(g.n_sys, g.size)
        self.p.copy_(self.r)
        # Strided views where a group is narrower than L.
        self.views = {name: [buf[g.systems, : g.size].view(g.shape) for g in groups]
                      for name, buf in (("x", self.x), ("r", self.r), ("p", self.p), ("ap", self.ap))}

    def dot(self, u: str, v: str, out: Tensor) -> Op:
        """``out = uᵀv`` per system, (S,), as one op over whole rows."""
        uu, vv = getattr(self, u), getattr(self, v)
        if uu.is_cuda if _DOT_BY_BMM is None else _DOT_BY_BMM:  # one batched (1, L) @ (L, 1) product
            return partial(torch.bmm, uu.unsqueeze(1), vv.unsqueeze(2), out=out.view(-1, 1, 1))
        return partial(torch.linalg.vecdot, uu, vv, out=out)  # CPU's bmm loops over the systems (L > 400)

    def update(self, coef: Tensor) -> Op:
        """x += a p, r −= a A p in one fused op; ``coef`` (2, S) = (a, −a)."""
        return partial(self.xr.addcmul_, coef.unsqueeze(-1), self.pa)

    def new_direction(self, beta: Tensor) -> Op:
        """p = r + β p with (S,) β."""
        return partial(torch.addcmul, self.r, beta.unsqueeze(-1), self.p, out=self.p)


class _PerGroup:
    """Long systems: iterates in the groups' own shapes; per-group products and updates with
    broadcast step sizes, so that no padded or buffer-sized temporary is made."""

    def __init__(self, groups: list[_Group], rhs: Sequence[Tensor]) -> None:
        self.groups = groups
        self.views = {"x": [torch.zeros_like(b) for b in rhs], "r": [b.clone() for b in rhs],
                      "p": [b.clone() for b in rhs],
                      "ap": [torch.zeros_like(b) for b in rhs]}  # zeros: unmultiplied groups are frozen

    def _per_sys(self, t: Tensor) -> list[Tensor]:
        """(S,) per-system scalars as one broadcastable (*S, 1, 1) view per group."""
        return [t[g.systems].view(*g.shape[:-2], 1, 1) for g in self.groups]

    @staticmethod
    def _run(ops: list[Op]) -> Op:
        return lambda: [op() for op in ops]

    def dot(self, u: str, v: str, out: Tensor) -> Op:
        # One batched (1, n) @ (n, 1) product per group: no temporary as (u * v).sum would make.
        return self._run([
            partial(torch.bmm, uu.reshape(g.n_sys, 1, -1), vv.reshape(g.n_sys, -1, 1),
                    out=out[g.systems].view(g.n_sys, 1, 1))
            for g, uu, vv in zip(self.groups, self.views[u], self.views[v])])

    def update(self, coef: Tensor) -> Op:
        a, na = self._per_sys(coef[0]), self._per_sys(coef[1])
        v = self.views
        return self._run([partial(x.addcmul_, ai, p) for x, ai, p in zip(v["x"], a, v["p"])]
                         + [partial(r.addcmul_, ni, ap) for r, ni, ap in zip(v["r"], na, v["ap"])])

    def new_direction(self, beta: Tensor) -> Op:
        v = self.views
        return self._run([partial(torch.addcmul, r, bi, p, out=p)
                          for r, bi, p in zip(v["r"], self._per_sys(beta), v["p"])])


def _matvec_op(mv: MatVec, p: Tensor, ap: Tensor) -> Op:
    """``ap = A p`` as one call: ``mv.bind(p, ap)`` (views made once), ``mv.into`` or a copy."""
    bind, into = getattr(mv, "bind", None), getattr(mv, "into", None)
    if bind is not None:
        return bind(p, ap)
    return partial(into, p, ap) if into is not None else lambda: ap.copy_(mv(p))


class _MaskedCG:
    """CG state of all systems: fixed-shape masked updates, stopped systems frozen.

    The per-system scalars live in rows of small (rows, S) buffers, laid out so that each half
    of an iteration is one division and one ``where`` over stacked rows, written in place:

    - ``m`` = (pᵀAp, ‖r‖², −‖r‖², β, z), z = 0 for a running system, +∞ for a stopped one, so
      that ``ok = pᵀAp > z`` is "running with positive curvature" in one comparison;
    - step: ``w[4:7]`` = (t, a, −a) = (pᵀAp, ‖r‖², −‖r‖²) / pᵀAp where ok, else (∞, 0, 0);
    - direction: q = ‖r_new‖² / ``w[0:5]`` = ‖r_new‖² / (1, −1, ‖r‖², ∞, t) =
      (‖r_new‖², −‖r_new‖², β, 0, ‖r_new‖² or 0), and ``m[1:5]`` = q[0:4] where q[4] > ε²‖b‖²,
      else (0, 0, 0, ∞): a system that did not update (t = ∞) stops there.

    ``w`` alternates between two buffers: the new ‖r‖² is written into the other one's row 2.
    """

    def __init__(self, matvecs: Sequence[MatVec], rhs: Sequence[Tensor], eps: float) -> None:
        self.rhs = list(rhs)
        self.groups: list[_Group] = []
        s = 0
        for b in rhs:
            n_sys = math.prod(b.shape[:-2])
            self.groups.append(_Group(b.shape, slice(s, s + n_sys), b.shape[-2] * b.shape[-1]))
            s += n_sys
        short = max(g.size for g in self.groups) <= _SHORT
        lay: _Dense | _PerGroup = (_Dense if short else _PerGroup)(self.groups, rhs)
        self.lay = lay
        self.check_div = _CHECK_SHORT if short else 0  # long: a matvec costs far more than a sync
        self.matvecs = [_matvec_op(mv, p, ap) for mv, p, ap in zip(matvecs, lay.views["p"], lay.views["ap"])]
        new = rhs[0].new_tensor
        self.w = new([[1.0], [-1.0], [0.0], [math.inf], [0.0], [0.0], [0.0]]).expand(2, 7, s).clone().unbind()
        self.m = rhs[0].new_zeros(5, s)
        self.q = rhs[0].new_zeros(5, s)
        self.t3 = rhs[0].new_zeros(3, s)
        self.step_else = new([[math.inf], [0.0], [0.0]])
        self.dir_else = new([[0.0], [0.0], [0.0], [math.inf]])
        self.ok = torch.zeros(s, dtype=torch.bool, device=self.m.device)
        self.act = torch.zeros_like(self.ok)
        self.iters = torch.zeros(s, dtype=torch.long, device=self.m.device)
        self.rs_end = rhs[0].new_zeros(s)
        rs = self.w[0][2]
        lay.dot("r", "r", rs)()
        self.tol2 = eps**2 * rs  # stop when ‖r‖² ≤ ε² ‖b‖²; b = 0 is solved by x = 0
        torch.mul(rs, self.w[0][:2, :1], out=self.m[1:3])  # (‖b‖², −‖b‖²)
        self.m[4].masked_fill_(rs <= self.tol2, math.inf)  # z: b = 0 has stopped
        self.ops = [self._iteration(i) for i in range(2)]
        self.z = self.m[4]
        self.cur = 0
        self.live = list(range(len(self.groups)))

    def _iteration(self, i: int) -> list[Op]:
        """The ops of one iteration after the matvecs, reading ``w[i]``; views made once."""
        m, w, w_next, q, lay = self.m, self.w[i], self.w[1 - i], self.q, self.lay
        return [
            lay.dot("p", "ap", m[0]),  # pᵀAp
            partial(torch.gt, m[0], m[4], out=self.ok),  # updates: running and pᵀAp > 0
            partial(torch.div, m[0:3], m[0], out=self.t3),
            partial(torch.where, self.ok, self.t3, self.step_else, out=w[4:7]),  # (t, a, −a)
            lay.update(w[5:7]),
            lay.dot("r", "r", w_next[2]),  # ‖r_new‖²
            partial(torch.div, w_next[2], w[0:5], out=q),
            partial(torch.gt, q[4], self.tol2, out=self.act),
            partial(torch.where, self.act, q[0:4], self.dir_else, out=m[1:5]),  # (‖r‖², −‖r‖², β, z)
            lay.new_direction(m[3]),
            partial(self.iters.add_, self.ok),
        ]

    def next_check(self, it: int) -> int:
        """The iteration of the host check after the one at ``it``."""
        return it + max(1, it // self.check_div) if self.check_div else it + 1

    def check(self) -> bool:
        """Host sync: the groups with a running system; False when there is none."""
        running = self.z.eq(0).tolist()
        self.live = [i for i, g in enumerate(self.groups) if any(running[g.systems])]
        return bool(self.live)

    def step(self) -> None:
        """One iteration of every running system; stopped ones keep x, r and their counts."""
        for g in self.live:
            self.matvecs[g]()
        for op in self.ops[self.cur]:
            op()
        self.cur = 1 - self.cur

    def results(self) -> list[CGResult]:
        self.lay.dot("r", "r", self.rs_end)()
        converged = self.rs_end <= self.tol2  # r is frozen once a system stops
        neg = (self.m[4] != 0) & ~converged  # stopped, not converged: by pᵀAp ≤ 0
        # Non-positive curvature at x = 0 (no update before it): fall back to steepest descent b = −g.
        at_start = neg & (self.iters == 0)
        out = []
        for g, x, b in zip(self.groups, self.lay.views["x"], self.rhs):
            sys_shape = g.shape[:-2]
            fallback = at_start[g.systems].view(*sys_shape, 1, 1)
            out.append(CGResult(torch.where(fallback, b, x), self.iters[g.systems].view(sys_shape),
                                converged[g.systems].view(sys_shape), neg[g.systems].view(sys_shape)))
        return out


def batched_cg(
    matvecs: Sequence[MatVec], rhs: Sequence[Tensor], max_iter: int, eps: float
) -> list[CGResult]:
    """Solve ``A_s x_s = b_s`` for every system ``s`` of every group, in lock step.

    Args:
        matvecs: per group, ``X ↦ A X`` applied to all systems of the group at once;
            maps ``(*S, m, c)`` to the same shape. ``A_s`` must be symmetric. A matvec
            may also offer ``into(X, out)``, which writes ``A X`` into ``out`` (one copy less;
            ``X`` and ``out`` may be strided views).
        rhs: per group, the right-hand sides ``b``, shape ``(*S, m, c)``, all of one dtype
            and device.
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
    if not rhs:
        return []
    state = _MaskedCG(matvecs, rhs, eps)
    check = 0
    for it in range(max_iter):
        if it == check:
            if not state.check():
                break
            check = state.next_check(it)
        state.step()
    return state.results()
