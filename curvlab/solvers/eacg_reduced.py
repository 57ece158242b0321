"""EA-CG's rank-one weight systems (Chen et al., Eq. 11b) solved in n_t + 1 unknowns.

With M = μμᵀ (μ = E[h], s = μᵀμ, μ̂ = μ/√s) the weight operator 𝒜(D) = (1 − α) B D μμᵀ + α D
of Eq. (10b) has two invariant subspaces: every D with Dμ = 0 is an eigenvector with eigenvalue
α, and on {y μ̂ᵀ : y ∈ ℝᵐ} it acts as 𝒜(y μ̂ᵀ) = ((1 − α) s B + α I) y μ̂ᵀ. Split the right-hand
side G = −∇_W accordingly, G = G_⊥ + g μ̂ᵀ with g = G μ̂ and G_⊥ μ̂ = 0. CG started at 0
only ever forms linear combinations of G and 𝒜-images of its iterates, so every iterate,
residual and search direction has the form a G_⊥ + y μ̂ᵀ (a scalar, y an m-vector). The
map (a, y) ↦ a G_⊥ + y μ̂ᵀ, scaled as z = (a ‖G_⊥‖_F, y), is an isometry:
⟨a G_⊥ + y μ̂ᵀ, a' G_⊥ + y' μ̂ᵀ⟩_F = a a' ‖G_⊥‖² + yᵀy' because G_⊥ μ̂ = 0. In z the
operator is the (m + 1) × (m + 1) matrix

    Ã = diag(α, (1 − α) s B + α I),        b̃ = (‖G_⊥‖_F, G μ̂),

so CG on (Ã, b̃) produces, step for step, the isometric images of the CG iterates on the
assembled (m c) × (m c) system: the same step sizes, the same residual norms (hence the
same ε_CG stop), the same pᵀ𝒜p (hence the same non-positive-curvature stop) and the
same iteration counts, up to round-off. The direction is D = (z₀ / ‖G_⊥‖) G_⊥ + z_{1:} μ̂ᵀ
(z₀ = 0 when G_⊥ = 0); the fallback x = b̃ maps back to G. Each iteration costs
O(m²) instead of O(m c); forming G_⊥, ‖G_⊥‖ and D costs O(m c) once. With ``split=k``
each row group is its own system (its own ‖G_⊥‖ over its rows, B its diagonal
sub-block). A layer's bias systems are padded with one leading zero unknown (zero
right-hand side, Ã entry α: it stays exactly 0) so that bias and weight systems of a
layer share one batched product over B_j; narrow layers are zero-padded the same way to
share a batch (:func:`_buckets`). B_j must be symmetric (the recursion makes it so): the
product runs on row vectors, z B_j. The full factor (Eq. 11a) has no such structure and
runs CG on the (m, c) iterates (:mod:`curvlab.solvers.eacg_groups`).

Here: the batch layout and its buffers kept across steps (:class:`_ReducedLayout`), Ã and b̃
written into it with the map back to d_W, d_b (:func:`_reduced_group`), the matvec on row
vectors (:class:`_ReducedMatVec`), the batching of layers (:func:`_buckets`) and the entry point
:func:`rank_one_groups`. The switches :data:`_FOLD`, :data:`_FOLD_SCALE` and :data:`_PAD_BUDGET`
are read when a batch is built (tests and ``scripts/bench_cg_kernels.py`` set them here).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from curvlab.curvature.blocks import LayerCurvature
from curvlab.solvers.eacg_groups import Group
from curvlab.solvers.split import RowSplit

__all__ = ["rank_one_groups"]


class _ReducedLayout:
    """The buffers of one batch of reduced systems (:func:`_reduced_group`), made once per shape.

    Ã's blocks diag(0, B_j) (``mats``, zero-padded), b̃ (``rhs``), the scales and the matvec with
    its bindings are kept across the steps of a solver (``cache`` of
    :func:`~curvlab.solvers.eacg.eacg_solve`): the padding is written once, and each step only
    copies its values into views made here (a fresh step spends most of its set-up on
    allocations, page faults and views, issue 24).
    """

    def __init__(self, like: Tensor, splits: Sequence[RowSplit], alpha: float, nb: int, size: int) -> None:
        n_sys = sum(rs.k for rs in splits)
        self.off = off = 1 if (size - 1) ** 2 <= _FOLD else 0  # diag(0, B_j) formed here when folded
        width = size - 1 + off
        self.mats = like.new_zeros(n_sys, width, width)  # B_j zero-padded, shared by j's systems
        self.rhs = like.new_zeros(n_sys, nb, 1, size)  # b̃ per system, as a row vector: (‖G_⊥‖, G μ̂) or (0, −∇_b)
        self.norms = _window(self.rhs, (nb * size,), (n_sys,), 0)  # ‖G_⊥‖_F per row group: weight's ⊥ unknown
        self.scale = like.new_zeros(n_sys, nb, 1)  # (1 − α) s for a weight system, (1 − α) for a bias system
        numpy_ok = like.device.type == "cpu" and like.dtype in _NUMPY
        self.scale_np = self.scale.view(-1).numpy() if numpy_ok else None  # written without a dispatch
        self.norms_np = self.norms.numpy() if numpy_ok and like.dtype != torch.float16 else None
        # Per layer, windows by offset (one view op each; its k systems start at system lo):
        # B_j (k, m, m), ‖G_⊥‖ (k,), G μ̂ (k, m), −∇_b (k, m); without a split (k = 1) B (m, m), G μ̂
        # and −∇_b (m,), so that the unsplit tensors are written without a view op per step.
        self.views: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []
        lo = 0
        for rs in splits:
            k, m = rs.k, rs.m
            shape = (m,) if rs.trivial else (k, m)
            mat = _window(self.mats, (width**2, width, 1)[-len(shape) - 1 :], (*shape[:-1], m, m),
                          (lo * width + off) * width + off)
            g_mu = _window(self.rhs, (nb * size, 1)[-len(shape) :], shape, lo * nb * size + 1)
            b = _window(self.rhs, (nb * size, 1)[-len(shape) :], shape, (lo * nb + 1) * size + 1) if nb == 2 else None
            self.views.append((mat, self.norms[lo : lo + k], g_mu, b))
            lo += k
        self.matvec = _ReducedMatVec(self.mats, self.scale, alpha, fold=bool(off))

    def set_scale(self, values: list[float]) -> None:
        """Write the scales (the same rounding as ``tensor(values)``), and refresh the matvec."""
        if self.scale_np is not None:
            self.scale_np[:] = values
        else:
            self.scale.copy_(self.scale.new_tensor(values).view_as(self.scale))
        self.matvec.refresh()


def _reduced_group(
    blocks: Sequence[LayerCurvature], which: Sequence[int], splits: Sequence[RowSplit], alpha: float,
    bias: bool, size: int, overwrite: bool, layout: _ReducedLayout | None = None,
) -> Group:
    """Ã = α I + scale · diag(0, B_j) and b̃ of the layers ``which`` (row splits ``splits``), written
    straight into one batch (``layout``'s buffers, or fresh ones), and the map back to their d_W, d_b.

    Every layer's systems are zero-padded from m + 1 to ``size`` unknowns so that layers of
    different widths share the batch; as for :class:`RowSplit`, padded unknowns stay exactly 0.
    Per row group j there is a weight and (nb = 2) a bias system. With ``overwrite`` a layer's
    weight gradient becomes −G_⊥ and then d_W in place.
    """
    nb, per_layer = (2, 2) if bias else (1, 1)
    if layout is None:
        layout = _ReducedLayout(blocks[which[0]].grad_weight, splits, alpha, nb, size)
    n_sys, norms = layout.norms.shape[0], layout.norms
    scale: list[float] = []  # (1 − α) s for a weight system, (1 − α) for a bias system
    layers: list[tuple[int, RowSplit, slice, Tensor, Tensor]] = []  # (slot, split, systems, −G_⊥, −μ̂)
    lo = 0
    for t, rs, (mat, norm, rhs_w, rhs_b) in zip(which, splits, layout.views):
        blk, k, sl = blocks[t], rs.k, slice(lo, lo + rs.k)
        mu = blk.input_mean  # (c,)
        s = float(torch.dot(mu, mu))
        # −μ̂: a negation is exact, so products with −μ̂ are those with μ̂ negated, bit for bit, and
        # G μ̂ = ∇_W (−μ̂) lands in b̃ without a negation of its own.
        neg_mu_hat = mu / -math.sqrt(s) if s > 0 else torch.zeros_like(mu)
        gw = blk.grad_weight  # (n_out, c)
        if rs.trivial:  # (n_out,) G μ̂, straight into b̃
            g_mu = torch.mv(gw, neg_mu_hat, out=rhs_w)
        else:
            g_mu = torch.mv(gw, neg_mu_hat)
            rhs_w.copy_(rs.vector(g_mu))
        # (n_out, c) = −G_⊥ = ∇_W − (∇_W μ̂) μ̂ᵀ. Formed explicitly: gradient rows lie mostly along μ̂
        # (their h_i share a large mean), so ‖g‖² − (gᵀμ̂)² would cancel to round-off.
        perp = gw.addr_(g_mu, neg_mu_hat, alpha=-1) if overwrite else torch.addr(gw, g_mu, neg_mu_hat, alpha=-1)
        row_norm = torch.linalg.vector_norm(perp, dim=1)  # (n_out,)
        row_sq = row_norm * row_norm  # the bits of row_norm.square(), by a kernel already warm
        if rs.trivial and layout.norms_np is not None:  # sqrt on the host: correctly rounded, as torch's
            layout.norms_np[lo] = math.sqrt(row_sq.sum().item())
        else:
            torch.sqrt(rs.vector(row_sq).sum(1), out=norm)
        mat.copy_(blk.bias if rs.trivial else rs.blocks(blk.bias))
        if rhs_b is not None:  # a leading zero unknown, then the bias system (1 − α) B_j + α I
            torch.neg(blk.grad_bias if rs.trivial else rs.vector(blk.grad_bias), out=rhs_b)
        scale += [(1 - alpha) * s, 1 - alpha][:nb] * k
        layers.append((per_layer * t, rs, sl, perp, neg_mu_hat))
        lo += k
    layout.set_scale(scale)
    trivial = all(rs.trivial for rs in splits)
    coef_np = layout.norms_np if trivial else None

    def unpack(z: Tensor) -> list[tuple[int, Tensor]]:
        """z (S, nb, 1, size) → per layer d_W = (z₀ / ‖G_⊥‖) G_⊥ + z_{1:} μ̂ᵀ (and d_b = z_{1:})."""
        rows = z.reshape(n_sys * nb, size)  # system i's weight row i nb, bias row i nb + 1
        if coef_np is not None and (z_np := _host_view(rows)) is not None:  # on the host, no dispatch
            z0 = z_np[::nb, 0]
            coefs = np.divide(z0, coef_np, out=np.zeros_like(z0), where=coef_np > 0).tolist()
        elif trivial:
            coefs = torch.where(norms > 0, rows[::nb, 0] / norms, 0.0).tolist()  # one sync for all
        else:
            coefs = None
            coef = torch.where(norms > 0, rows[::nb, 0] / norms, 0.0)  # (S,)
        out = []
        for slot, rs, sl, perp, neg_mu_hat in layers:
            m = rs.m
            if coefs is not None:  # one pass, in perp's memory: −coef · perp + y μ̂ᵀ
                y = rows[sl.start * nb, 1 : m + 1]
                out.append((slot, perp.addr_(y, neg_mu_hat, beta=-coefs[sl.start], alpha=-1)))
                if bias:
                    out.append((slot + 1, rows[sl.start * nb + 1, 1 : m + 1]))
                continue
            coef_rows = rs.merge(coef[sl, None, None].expand(rs.k, m, 1))[:, 0]  # (n_out,)
            y = rs.merge(z[sl, 0, 0, 1 : m + 1, None])[:, 0]  # (n_out,)
            out.append((slot, perp.mul_(-coef_rows[:, None]).addr_(y, neg_mu_hat, alpha=-1)))
            if bias:
                out.append((slot + 1, rs.merge(z[sl, 1, 0, 1 : m + 1, None])[:, 0]))
        return out

    return Group(layout.matvec, layout.rhs, [unpack])


def _host_view(t: Tensor) -> np.ndarray | None:
    """The numpy array sharing ``t``'s memory on the CPU (reads without a dispatch), else None."""
    return t.numpy() if t.device.type == "cpu" and t.dtype in _NUMPY and not t.requires_grad else None


class _ReducedMatVec:
    """``x ↦ α x + scale · x diag(0, B_j)`` on row vectors: ``x`` (S, nb, 1, size), ``scale``
    (S, nb, 1). ``B_j`` is symmetric, so x B_j = (B_j x)ᵀ, and the weight and bias systems of a
    row group share one pass over ``B_j``.

    Small blocks (at most :data:`_FOLD` entries) come as diag(0, B_j) (``fold``, formed by
    :class:`_ReducedLayout`), so that the ⊥ unknown needs no operation of its own; on CUDA (:data:`_FOLD_SCALE`) into scale ·
    diag(0, B_j), one copy per system, so that the product is one kernel (an iteration there is
    bound by launches; on CPU the per-system copies cost more than the multiplication they save:
    EA-CG on the CIFAR-10 net 13 % more per CG iteration, the 784-128-128-10 net's product 16 %
    more, issue 24). The fold rounds differently, and CG amplifies that: on the 784-128-128-10 net
    a float64 direction of 50 iterations (ε_CG = 0.1) moves by 2e-7 relative, so it is not the default.
    Larger blocks are used as they are, with the scaling and the ⊥ unknown apart."""

    def __init__(self, blocks: Tensor, scale: Tensor, alpha: float, fold: bool) -> None:
        """``blocks``: diag(0, B_j) (S, size, size) with ``fold``, else B_j (S, size − 1, size − 1);
        both and ``scale`` are read when called (and by :meth:`refresh`), so they may be refilled."""
        self.fold = fold
        self.fold_scale = fold and (blocks.is_cuda if _FOLD_SCALE is None else _FOLD_SCALE)
        self.raw = blocks
        if self.fold_scale:  # (S nb, size, size)
            blocks = blocks.new_empty(scale.shape[0] * scale.shape[1], *blocks.shape[1:])
        self.blocks, self.scale, self.alpha = blocks, scale, alpha
        self.refresh()
        self._bound: tuple[Tensor, Tensor, Callable[[], None]] | None = None  # the last binding

    def refresh(self) -> None:
        """Fold the current ``scale`` into the blocks (``fold_scale`` only: the others read it per call)."""
        if self.fold_scale:
            torch.mul(self.scale[..., None], self.raw[:, None], out=self.blocks.view(*self.scale.shape[:2],
                                                                                    *self.raw.shape[1:]))

    def bind(self, x: Tensor, out: Tensor) -> Callable[[], None]:
        """``out = 𝒜 x`` as a call without arguments, its views made once (a CG iteration's form);
        the same ``x`` and ``out`` as the last call (a kept CG state) get the same call back."""
        if self._bound is not None and self._bound[0] is x and self._bound[1] is out:
            return self._bound[2]
        op = self._bind(x, out)
        self._bound = (x, out, op)
        return op

    def _bind(self, x: Tensor, out: Tensor) -> Callable[[], None]:
        x3 = x.view(self.scale.shape[0], self.scale.shape[1], -1)  # (S, nb, size), maybe strided
        o3 = out.view(x3.shape)
        if self.fold_scale:  # one (1, size) @ (size, size) product per system
            xf, of = x3.flatten(0, 1).unsqueeze(1), o3.flatten(0, 1).unsqueeze(1)
            return partial(torch.baddbmm, xf, xf, self.blocks, beta=self.alpha, out=of)
        scaled = torch.empty_like(x3, memory_format=torch.contiguous_format)
        if self.fold:
            def run() -> None:
                torch.mul(x3, self.scale, out=scaled)
                torch.baddbmm(x3, scaled, self.blocks, beta=self.alpha, out=o3)

            return run
        rest, o_rest, o_perp, x_perp = x3[..., 1:], o3[..., 1:], o3[..., :1], x3[..., :1]
        scaled = scaled[..., 1:]

        def run_apart() -> None:
            torch.mul(rest, self.scale, out=scaled)
            torch.baddbmm(rest, scaled, self.blocks, beta=self.alpha, out=o_rest)
            torch.mul(x_perp, self.alpha, out=o_perp)  # the ⊥ unknown: eigenvalue α

        return run_apart

    def into(self, x: Tensor, out: Tensor) -> None:
        self.bind(x, out)()

    def __call__(self, x: Tensor) -> Tensor:
        out = torch.empty_like(x)
        self.into(x, out)
        return out


_FOLD = 65536  # B_j entries up to which diag(0, B_j) is formed (one op less per iteration)
_FOLD_SCALE: bool | None = None  # fold the scale too (one op less again); None: on CUDA only
_PAD_BUDGET = 65536  # padded matrix entries per batch that cost less than one more batch per iteration


def _buckets(splits: list[RowSplit]) -> list[tuple[int, list[int]]]:
    """Layers whose reduced systems share one batch, and its padded size.

    Greedy from the widest layer down: a layer joins the current batch while the padding
    adds at most ``_PAD_BUDGET`` matrix entries in all, about what the per-batch overhead
    of an iteration costs; equal shapes always share a batch.
    """
    order = sorted(range(len(splits)), key=lambda t: -splits[t].m)
    out: list[tuple[int, list[int]]] = []
    waste = 0
    for t in order:
        k, m = splits[t].k, splits[t].m
        extra = k * (out[-1][0] ** 2 - (m + 1) ** 2) if out else None
        if extra is not None and waste + extra <= _PAD_BUDGET:
            out[-1][1].append(t)
            waste += extra
        else:
            out.append((m + 1, [t]))
            waste = 0
    return out


def rank_one_groups(
    blocks: Sequence[LayerCurvature], alpha: float, split: int, bias: bool, overwrite: bool,
    which: Sequence[int] | None = None, cache: dict[tuple[object, ...], Any] | None = None,
) -> list[Group]:
    """Eq. (11b) systems of the layers ``which`` (default: all) in reduced form, batched over layers
    by :func:`_buckets`. ``cache``: where the splits, buckets and buffers of these shapes are kept
    for the next call (:class:`_ReducedLayout`; a solver's own, its groups used before the next call)."""
    which = range(len(blocks)) if which is None else which
    ref = blocks[which[0]].grad_weight
    key = (tuple((blocks[t].n_out, blocks[t].n_in) for t in which), split, bias, alpha, ref.dtype, ref.device,
           torch.is_inference_mode_enabled(), _FOLD, _FOLD_SCALE, _PAD_BUDGET)
    plan = cache.get(key) if cache is not None else None
    if plan is None:
        splits = [RowSplit(blocks[t].n_out, split, device=blocks[t].bias.device) for t in which]
        nb = 2 if bias else 1
        plan = [([which[i] for i in members], [splits[i] for i in members],
                 _ReducedLayout(ref, [splits[i] for i in members], alpha, nb, size), size)
                for size, members in _buckets(splits)]
        if cache is not None:
            cache.clear()  # one net, one shape: keep only the latest
            cache[key] = plan
    return [_reduced_group(blocks, ts, rss, alpha, bias, size, overwrite, layout) for ts, rss, layout, size in plan]


_NUMPY = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def _window(t: Tensor, strides: tuple[int, ...], shape: tuple[int, ...], offset: int) -> Tensor:
    """The view of the contiguous ``t`` with ``shape`` and ``strides`` that starts ``offset`` elements in."""
    return t.as_strided(shape, strides, t.storage_offset() + offset)
