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
number of systems, without host synchronisation or gathers: every per-system
quantity lives in small (S,) rows, and whether any system still runs is asked only at growing
intervals (:data:`_CHECK_SHORT`), when groups whose systems have all stopped also stop being
multiplied. With short systems (EA-CG's reduced rank-one systems, see
:mod:`curvlab.solvers.eacg_reduced`) such an iteration is bound by per-operation overhead (on a GPU:
by kernel launches), so the iterates of all groups live in one dense, zero-padded (S, L)
layout and no system is tested inside the loop (:class:`_Unrolled`): all run on, every
iterate is kept, and each system's result is read from the iteration it stopped at, the same
bits as stopping it there. An iteration is then 7 operations besides the matvecs' extra ones
(``scripts/bench_cg_kernels.py`` counts them); on the CPU the host checks and the read-out compare
the kept history through numpy views, so they dispatch no operation at all (EA-CG's reduced
systems: 8 ATen calls an iteration, checks included, issue 24). With long systems (weight matrices) an
iteration is bound by memory traffic: the iterates stay in the groups' own shapes, updated
in place, and stopped systems are frozen by zero step sizes (:class:`_MaskedCG`).

Stopping, per system: ``‖r‖ ≤ eps · ‖b‖`` (EA-CG's ε_CG rule), ``max_iter`` iterations,
or non-positive curvature ``pᵀAp ≤ 0``. In the last case CG cannot continue (the
quadratic model is unbounded along ``p``); the system stops and keeps its current
iterate, which is a descent direction for the model, or, when this happens at the very
first iteration (``x = 0``), returns the right-hand side ``b = −g``, the steepest-descent
direction. These systems are counted in :attr:`CGResult.neg_curvature`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["CGResult", "batched_cg"]

MatVec = Callable[[Tensor], Tensor]
_SHORT = 4096  # systems with at most this many unknowns count as short (dense padded layout)
# Short layout: the host checks of which systems still run come after 2 iterations, then each
# max(2, it // _CHECK_SHORT) iterations after the last, none in the last 2, so at most
# ~1/_CHECK_SHORT of the iterations run after the last system stopped, with
# O(_CHECK_SHORT · log max_iter) checks.
_CHECK_SHORT = 4
_HISTORY_BYTES = 32 * 2**20  # the short layout keeps every iterate: at most this much, else per group
# Inner products by bmm; None: on CUDA (one kernel). On CPU bmm is faster for short rows (≈ 1.6 µs of
# 4 at L = 129), but vecdot keeps the iterates bit for bit those of the masked iteration before it.
_DOT_BY_BMM: bool | None = None
# Host checks and read-out of the short layout by numpy views of its history; None: on the CPU.
_HOST_READ: bool | None = None
_KEEP = 2  # short-layout states kept for the next solve of the same shapes
_STATES: dict[tuple[object, ...], _Unrolled] = {}


@dataclass
class CGResult:
    """Solutions and per-system diagnostics of one group.

    Attributes:
        x: solutions, same shape as the right-hand side ``(*S, m, c)``.
        iters: (*S,) CG iterations (matrix products that updated the iterate).
        converged: (*S,) whether ``‖r‖ ≤ eps ‖b‖`` was reached (true for ``b = 0``).
        neg_curvature: (*S,) whether ``pᵀAp ≤ 0`` stopped the system.
        host: (iters, converged, neg_curvature) as the numpy arrays the three tensors share their
            memory with, where the stops were read on the host (CPU), else None: statistics read
            from them need no dispatch (:func:`curvlab.solvers.eacg._stats`).
    """

    x: Tensor
    iters: Tensor
    converged: Tensor
    neg_curvature: Tensor
    host: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)


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
Flags = Tensor | np.ndarray  # (S,) per-system iterations or flags: numpy where read on the host


class _Unrolled:
    """Short systems: every system runs unmasked; the iterates are kept and the stops found afterwards.

    x and r of all systems live in one zero-padded (S, L) layout (padded entries stay exactly 0:
    the right-hand side is 0 there and a matvec writes only its group's part), and iteration i
    writes (x_{i+1}, r_{i+1}) into frame i + 1 of a (n + 1, 2, S, L) history instead of over
    (x_i, r_i). No system is tested or frozen inside the loop: a stopped system goes on with
    CG (rows are independent, so its round-off or NaN reaches no other system), and its result
    is the kept iterate of the iteration it stopped at, bit for bit what freezing it would give.
    The per-system scalars of iteration i are kept too, as rows of ``h[i]`` (each (S, 1)):

        h[i] = (β_{i−1}, ‖r_i‖², −‖r_i‖², a_i, −a_i),   a_i = ‖r_i‖² / pᵀAp_i,

    written by the two divisions of an iteration. A system is running at iteration i while
    every row of h[0..i] exceeds the thresholds ``(−∞, ε²‖b‖², −∞, 0, −∞)``: ‖r‖ > ε‖b‖, and
    0 < a < ∞, which is pᵀAp > 0 while ‖r‖ > 0 (pᵀAp = +0 gives a = ∞). Rows not yet written
    hold values that pass, so the host check and the read-out compare the whole history in
    one operation, and the first failing row in iteration order gives the stop and its kind.
    An iteration is 7 operations (``baddbmm`` matvec, 2 inner products, 2 divisions, 2
    ``addcmul``) on views of the frames made in advance, by ``unbind``; the buffers and views
    are kept for the next solve of the same shapes (:meth:`cached`).
    """

    ROWS = 5  # rows of h[i]

    def __init__(self, groups: list[_Group], like: Tensor, max_iter: int, bmm: bool) -> None:
        """Buffers and views for ``groups`` (shapes only; :meth:`start` fills them)."""
        n_sys, width, n = groups[-1].systems.stop, max(g.size for g in groups), max_iter
        self.groups, self.n_run = groups, 0
        self.xr = like.new_zeros(n + 1, 2, n_sys, width)  # (x_i, r_i)
        self.pa = like.new_zeros(2, n_sys, width)  # (p, A p)
        self.p, ap = self.pa.unbind()
        r0 = self.xr[0, 1]
        self.views = {name: [buf[g.systems, : g.size].view(g.shape) for g in groups]
                      for name, buf in (("p", self.p), ("ap", ap), ("r0", r0))}
        new = like.new_tensor
        # Unwritten rows pass the stopping test: β 0, ‖r‖² ∞, −‖r‖² −1, (a, −a) = (1, −1).
        self.h_fresh = new([0.0, math.inf, -1.0, 1.0, -1.0]).view(1, 5, 1, 1)
        self.h = like.new_empty(n + 1, 5, n_sys, 1)
        self.d = new([0.0, 1.0, -1.0]).view(1, 3, 1, 1).repeat(2, 1, n_sys, 1)  # (‖r‖², 1, −1) of i, i+1
        self.pap = like.new_zeros(n_sys, 1)
        self.thresh = new([-math.inf, 0.0, -math.inf, 0.0, -math.inf]).view(5, 1, 1).repeat(1, n_sys, 1)
        # Views of every frame, made once: frame i's x and r, and the rows of h[i] each op reads or writes.
        self.frames, self.r, self.hq, self.hn, self.ha, self.hb = (t.unbind() for t in (
            self.xr, self.xr[:, 1], self.h[:, 0:3], self.h[:, 1:3], self.h[:, 3:5], self.h[:, 0]))
        self.rs = [self.d[j, 0] for j in range(2)]  # (S, 1) where ‖r_i‖² goes, by the parity of i
        self.den = list(self.d.unbind())  # (‖r_i‖², 1, −1), by the parity of i
        self.b0 = self.den[0][1:]  # (1, −1)
        self.dots = _Dots(self.xr[:, 1], self.r, self.p, ap, self.pap, self.rs, bmm)
        self.systems = torch.arange(n_sys, device=like.device)
        # On the CPU the host checks and the read-out compare the history through numpy views made
        # here: no ATen call (an iteration's count, issue 24), the same bits; the time is a wash
        # (a check 4 µs against torch's 6, read-out 95 µs against 160 when warm; within noise in a step).
        host = like.device.type == "cpu" and like.dtype in (torch.float16, torch.float32, torch.float64)
        host = host if _HOST_READ is None else _HOST_READ and host
        self.host = (self.h.numpy(), self.thresh.numpy(), np.arange(n_sys)) if host else None

    @classmethod
    def cached(cls, groups: list[_Group], rhs: Sequence[Tensor], eps: float, max_iter: int) -> _Unrolled:
        """A state for these shapes, filled for ``rhs``: EA-CG solves systems of the same shapes
        every step, so the buffers and the views of every frame are made once and kept
        (:data:`_KEEP` states; not thread-safe)."""
        like = rhs[0]
        bmm = like.is_cuda if _DOT_BY_BMM is None else _DOT_BY_BMM
        key = (tuple(g.shape for g in groups), like.dtype, like.device, max_iter, bmm,
               torch.is_inference_mode_enabled(), _HOST_READ)
        state = _STATES.pop(key, None) or cls(groups, like, max_iter, bmm)
        _STATES[key] = state  # the most recently used last
        while len(_STATES) > _KEEP:
            _STATES.pop(next(iter(_STATES)))
        state.start(rhs, eps)
        return state

    def start(self, rhs: Sequence[Tensor], eps: float) -> None:
        """x = 0, r = p = b, and the scalars of iteration 0. Frame 0 is no iteration's output:
        x_0 and the padded entries of r_0 stay 0 from the allocation; p is overwritten whole."""
        self.n_run = 0
        for r0, b in zip(self.views["r0"], rhs):
            r0.copy_(b)
        self.p.copy_(self.r[0])
        self.h.copy_(self.h_fresh)
        self.dots.rr(0, 0)
        torch.div(self.rs[0], self.b0, out=self.hn[0])  # (‖b‖², −‖b‖²)
        torch.mul(self.rs[0], eps**2, out=self.thresh[1])  # stop when ‖r‖² ≤ ε² ‖b‖²; b = 0: x = 0

    def running(self) -> list[bool]:
        """Host sync: whether each system has passed every stopping test so far (rows after
        iteration ``n_run`` are unwritten and pass)."""
        if self.host is not None:  # no dispatch: the same comparisons in numpy
            h, thresh, _ = self.host
            return (h[: self.n_run + 1] > thresh).all(axis=(0, 1, 3)).tolist()
        return torch.gt(self.h, self.thresh).all((0, 1, 3)).tolist()

    def step(self, matvecs: list[Op]) -> None:
        """Iteration i: the matvecs, then 6 operations on views made in advance."""
        i, j, k = self.n_run, self.n_run % 2, 1 - self.n_run % 2
        for mv in matvecs:
            mv()
        self.dots.pap()  # pᵀAp
        torch.div(self.hn[i], self.pap, out=self.ha[i])  # (a, −a) = (‖r‖², −‖r‖²) / pᵀAp
        torch.addcmul(self.frames[i], self.ha[i], self.pa, out=self.frames[i + 1])  # x + a p, r − a A p
        self.dots.rr(i + 1, k)  # ‖r_{i+1}‖²
        torch.div(self.rs[k], self.den[j], out=self.hq[i + 1])  # (β, ‖r_{i+1}‖², −‖r_{i+1}‖²)
        torch.addcmul(self.r[i + 1], self.hb[i + 1], self.p, out=self.p)  # p = r + β p
        self.n_run += 1

    first_check = 2  # a check earlier than this costs more than the iterations it can save

    def next_check(self, it: int) -> int:
        """The iteration of the host check after the one at ``it``; none in the last 2 iterations."""
        nxt = it + max(2, it // _CHECK_SHORT)
        return nxt if nxt < len(self.frames) - 2 else len(self.frames)

    def read_out(self) -> tuple[list[Tensor], Flags, Flags, Flags]:
        """(x per group, iterations, converged, stopped by pᵀAp ≤ 0) at each system's stop; the
        per-system (S,) flags as numpy arrays where the history is read on the host."""
        if self.host is not None:
            return self._read_out_host()
        n, rows = self.n_run, self.ROWS
        passed = torch.gt(self.h[: n + 1], self.thresh).flatten(0, 1)[..., 0]  # ((n+1) 5, S), in order
        first_fail = passed.cumprod(0).sum(0)  # (S,) the row of the first failed test, or (n+1) 5
        iters = first_fail.div(rows, rounding_mode="floor").clamp_(max=n)
        systems = self.systems
        converged = self.h[iters, 1, systems, 0] <= self.thresh[1, :, 0]
        neg = (first_fail < (n + 1) * rows) & ~converged
        x = self.xr[iters, 0, systems]  # (S, L)
        return self._per_group(x), iters, converged, neg

    def _read_out_host(self) -> tuple[list[Tensor], np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`read_out` by numpy on the CPU's history: the same tests, and x copied from one
        frame when every system stopped at the same iteration (forced runs, ``eps_cg = 0``)."""
        n, rows = self.n_run, self.ROWS
        h, thresh, systems = self.host  # type: ignore[misc]
        passed = h[: n + 1] > thresh  # (n+1, 5, S, 1)
        if passed.all():  # every system ran every iteration (forced runs, eps_cg = 0): frame n, no search
            n_sys = len(systems)
            none = np.zeros(n_sys, dtype=bool)
            return self._per_group(self.xr[n, 0].clone()), np.full(n_sys, n, dtype=np.intp), none, none.copy()
        passed = passed.reshape((n + 1) * rows, -1)  # ((n+1) 5, S), in order
        first_fail = np.where(passed.all(0), (n + 1) * rows, passed.argmin(0))  # (S,) as cumprod().sum()
        iters = np.minimum(first_fail // rows, n)
        converged = h[iters, 1, systems, 0] <= thresh[1, :, 0]
        neg = (first_fail < (n + 1) * rows) & ~converged
        if (iters == iters[0]).all():
            x = self.xr[int(iters[0]), 0].clone()  # (S, L)
        else:
            x = self.xr[torch.from_numpy(iters), 0, self.systems]
        return self._per_group(x), iters, converged, neg

    def _per_group(self, x: Tensor) -> list[Tensor]:
        """Each group's (*S, m, c) view of the (S, L) rows."""
        return [x[g.systems, : g.size].view(g.shape) for g in self.groups]


class _Dots:
    """The two inner products of an iteration over rows: pᵀAp into ``pap``, ‖r_i‖² into ``rs[j]``.

    Args:
        r_hist: (n + 1, S, L) the residuals of every frame; ``r``: its frames.
        p, ap: (S, L) search direction and its product.
        pap, rs: (S, 1) outputs.
    """

    def __init__(self, r_hist: Tensor, r: Sequence[Tensor], p: Tensor, ap: Tensor, pap: Tensor,
                 rs: Sequence[Tensor], bmm: bool) -> None:
        self.bmm = bmm
        if bmm:  # one batched (1, L) @ (L, 1) product: one kernel on CUDA
            self.r_row, self.r_col = r_hist.unsqueeze(2).unbind(), r_hist.unsqueeze(3).unbind()
            self.args = (p.unsqueeze(1), ap.unsqueeze(2))
            self.pap_out, self.rs_out = pap.unsqueeze(2), [t.unsqueeze(2) for t in rs]  # (S, 1, 1)
        else:  # CPU's bmm loops over the systems: slow for long rows
            self.r, self.args = r, (p, ap)
            self.pap_out, self.rs_out = pap[:, 0], [t[:, 0] for t in rs]  # (S,)

    def pap(self) -> None:
        if self.bmm:
            torch.bmm(*self.args, out=self.pap_out)
        else:
            torch.linalg.vecdot(*self.args, out=self.pap_out)

    def rr(self, i: int, j: int) -> None:
        if self.bmm:
            torch.bmm(self.r_row[i], self.r_col[i], out=self.rs_out[j])
        else:
            torch.linalg.vecdot(self.r[i], self.r[i], out=self.rs_out[j])


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
    """CG state of long systems: fixed-shape masked updates in place, stopped systems frozen.

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

    def __init__(self, groups: list[_Group], rhs: Sequence[Tensor], eps: float) -> None:
        self.lay = lay = _PerGroup(groups, rhs)
        self.views = lay.views
        s = groups[-1].systems.stop
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
        self.cur = 0

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

    first_check = 0

    @staticmethod
    def next_check(it: int) -> int:
        """Every iteration: a long system's matvec costs far more than a host sync."""
        return it + 1

    def running(self) -> list[bool]:
        """Host sync: whether each system still runs."""
        return self.m[4].eq(0).tolist()

    def step(self, matvecs: list[Op]) -> None:
        """One iteration of every running system; stopped ones keep x, r and their counts."""
        for mv in matvecs:
            mv()
        for op in self.ops[self.cur]:
            op()
        self.cur = 1 - self.cur

    def read_out(self) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
        """(x per group, iterations, converged, stopped by pᵀAp ≤ 0), per system."""
        self.lay.dot("r", "r", self.rs_end)()
        converged = self.rs_end <= self.tol2  # r is frozen once a system stops
        neg = (self.m[4] != 0) & ~converged  # stopped, not converged: by pᵀAp ≤ 0
        return self.views["x"], self.iters, converged, neg


def _groups(rhs: Sequence[Tensor]) -> list[_Group]:
    """Where each group's systems live in the (S,) per-system rows."""
    groups, start = [], 0
    for b in rhs:
        n_sys = math.prod(b.shape[:-2])
        groups.append(_Group(b.shape, slice(start, start + n_sys), b.shape[-2] * b.shape[-1]))
        start += n_sys
    return groups


def _history_fits(groups: list[_Group], rhs: Sequence[Tensor], max_iter: int) -> bool:
    """Whether the short layout's history of every iterate takes at most :data:`_HISTORY_BYTES`."""
    width = max(g.size for g in groups)
    history = (max_iter + 1) * 2 * groups[-1].systems.stop * width * rhs[0].element_size()
    return width <= _SHORT and history <= _HISTORY_BYTES


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
    groups = _groups(rhs)
    state: _Unrolled | _MaskedCG
    if _history_fits(groups, rhs, max_iter):
        state = _Unrolled.cached(groups, rhs, eps, max_iter)
    else:
        state = _MaskedCG(groups, rhs, eps)
    ops = [_matvec_op(mv, p, ap) for mv, p, ap in zip(matvecs, state.views["p"], state.views["ap"])]
    live, check = ops, state.first_check
    for it in range(max_iter):
        if it == check:  # host sync: multiply only the groups with a running system
            running = state.running()
            live = [op for op, g in zip(ops, groups) if any(running[g.systems])]
            if not live:
                break
            check = state.next_check(it)
        state.step(live)
    return _results(groups, rhs, *state.read_out())


def _results(groups: list[_Group], rhs: Sequence[Tensor], xs: list[Tensor], iters: Flags, converged: Flags,
             neg: Flags) -> list[CGResult]:
    """Per group: x, with steepest descent b = −g where pᵀAp ≤ 0 stopped a system at x = 0 (no
    update before it), and the (*S,) diagnostics (numpy flags: tensors sharing their memory)."""
    host_read = isinstance(iters, np.ndarray)
    # On the host, the fallback test only where some system stopped by pᵀAp ≤ 0 (a few numpy calls less).
    at_start = (neg & (iters == 0) if neg.any() else None) if host_read else neg & (iters == 0)
    out = []
    for g, x, b in zip(groups, xs, rhs):
        sys_shape = g.shape[:-2]
        if host_read:  # read on the host: no dispatch unless a fallback is due
            host = tuple(a[g.systems].reshape(sys_shape) for a in (iters, converged, neg))
            if at_start is not None and (fallback := at_start[g.systems]).any():
                x = torch.where(torch.from_numpy(fallback).view(*sys_shape, 1, 1), b, x)
            out.append(CGResult(x, *(torch.from_numpy(a) for a in host), host=host))  # type: ignore[arg-type]
            continue
        fallback_t = at_start[g.systems].view(*sys_shape, 1, 1)  # type: ignore[index]
        out.append(CGResult(torch.where(fallback_t, b, x), iters[g.systems].view(sys_shape),
                            converged[g.systems].view(sys_shape), neg[g.systems].view(sys_shape)))
    return out
