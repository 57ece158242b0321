"""Slow, obviously correct references for the curvature blocks (float64, tiny nets).

Shared by the tests and by anyone who wants to check a block by hand:

* :func:`hessian_blocks` — the true batch-mean Hessian blocks with ``torch.func.hessian``;
* :func:`ea_blocks` — a loop over samples of Eqs. (6)/(8) of Chen et al. (and Eq. 7 of
  Dangel & Hennig), with derivatives from autograd rather than the closed forms of the rules;
* :func:`fisher_blocks` — KFAC's E[g gᵀ] with per-sample gradients from autograd.

Every quantity is taken with respect to an offset δ^t added to the output z^t of the t-th
layer module (one with a :class:`~curvlab.modules.base.LayerRule`, e.g. ``nn.Linear``), which
equals the bias block when the layer has a bias and is the z^t block when it has none. The
forward pass runs the net's own modules (an :class:`MLP` through
:meth:`~curvlab.MLP.as_sequential`; a layer through its rule's ``forward`` when its weight is
replaced), not the recursion's canonical chain; only autograd differentiates.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import grad, hessian, jvp

from curvlab.curvature.options import FisherType, JacobianAverage
from curvlab.losses import Loss
from curvlab.modules import LayerRule, Net, leaves, rule_for
from curvlab.nets import MLP

__all__ = ["forward_with_offsets", "hessian_blocks", "ea_blocks", "fisher_blocks", "abs_eig"]


def _is_layer(m: nn.Module) -> bool:
    return isinstance(rule_for(m), LayerRule)


def _out_width(lin: nn.Module) -> int:
    rule = rule_for(lin)
    assert isinstance(rule, LayerRule)
    return rule.widths(lin)[1]


def _input_jacobian(lin: nn.Module, like: Tensor) -> Tensor:
    """∂z/∂h (n, n_in) of a layer by autograd; a layer is affine in h, so at h = 0."""
    rule = rule_for(lin)
    assert isinstance(rule, LayerRule)
    h0 = torch.zeros(1, rule.widths(lin)[0], dtype=like.dtype, device=like.device)
    return torch.func.jacrev(lambda h: lin(h))(h0)[0, :, 0].detach()


def _segments(net: Net) -> tuple[list[nn.Module], list[tuple[nn.Module, list[nn.Module]]]]:
    """The modules before the first layer, and each layer with the modules after it."""
    mods = leaves(net.as_sequential() if isinstance(net, MLP) else net)
    first = next(i for i, m in enumerate(mods) if _is_layer(m))
    segs: list[tuple[nn.Module, list[nn.Module]]] = []
    for m in mods[first:]:
        if _is_layer(m):
            segs.append((m, []))
        else:
            segs[-1][1].append(m)
    return mods[:first], segs


def _run(mods: list[nn.Module], h: Tensor) -> Tensor:
    for m in mods:
        h = m(h)
    return h


def forward_with_offsets(
    net: Net, x: Tensor, offsets: list[Tensor], weights: dict[int, Tensor] | None = None
) -> Tensor:
    """The net's output with z^t ← z^t + δ^t after its t-th layer and, optionally, W^t ← ``weights[t]``."""
    prep, segs = _segments(net)
    h = _run(prep, x)
    for t, (lin, after) in enumerate(segs):
        w = lin.weight.detach() if weights is None or t not in weights else weights[t]
        h = rule_for(lin).forward(lin, h, w) + offsets[t]  # type: ignore[attr-defined]
        h = _run(after, h)
    return h


def _zeros(net: Net, like: Tensor) -> list[Tensor]:
    return [torch.zeros(_out_width(lin), dtype=like.dtype, device=like.device) for lin, _ in _segments(net)[1]]


def hessian_blocks(net: Net, x: Tensor, y: Tensor, loss: Loss, weights: bool = False) -> list[Tensor]:
    """True blocks of the batch-mean loss: w.r.t. δ^t (bias blocks) or, with ``weights``,
    w.r.t. W^t in row-major ``W.flatten()`` order, input side first."""
    blocks = []
    for t, (lin, _) in enumerate(_segments(net)[1]):
        if weights:

            def f(w: Tensor, t: int = t) -> Tensor:
                return loss(forward_with_offsets(net, x, _zeros(net, x), {t: w}), y)

            w0 = lin.weight.detach()
            blocks.append(hessian(f)(w0).reshape(w0.numel(), w0.numel()))
        else:

            def f(d: Tensor, t: int = t) -> Tensor:
                offs = _zeros(net, x)
                offs[t] = d
                return loss(forward_with_offsets(net, x, offs), y)

            blocks.append(hessian(f)(torch.zeros(_out_width(lin), dtype=x.dtype, device=x.device)))
    return blocks


def abs_eig(a: Tensor) -> Tensor:
    """|A|: the symmetric matrix with the eigenvalues of A replaced by their absolute values."""
    lam, q = torch.linalg.eigh(0.5 * (a + a.T))
    return q @ torch.diag(lam.abs()) @ q.T


def _sample_parts(net: Net, x_i: Tensor, y_i: Tensor, loss: Loss):
    """One sample's output, δ-gradients, and the first and second derivatives (autograd, by
    nested jvps along ones) of the element-wise map after each Linear, at its z^t."""
    prep, segs = _segments(net)
    x1 = x_i[None]
    out = forward_with_offsets(net, x1, _zeros(net, x_i))

    def loss_of(offs: list[Tensor]) -> Tensor:
        return loss(forward_with_offsets(net, x1, offs), y_i[None])

    grads = grad(loss_of)(_zeros(net, x_i))  # ∇_{b^t} ξ_i for every t
    d1, d2 = [], []
    h = _run(prep, x1)
    for lin, after in segs:
        z = lin(h).detach()  # (1, n_t)
        ones = torch.ones_like(z)

        def sigma(u: Tensor, after: list[nn.Module] = after) -> Tensor:
            return _run(after, u)

        def dsigma(u: Tensor, sigma: Callable[[Tensor], Tensor] = sigma) -> Tensor:
            return jvp(sigma, (u,), (ones,))[1]  # σ'(u) ⊙ 1 for an element-wise σ

        d1.append(dsigma(z)[0])
        d2.append(jvp(dsigma, (z,), (ones,))[1][0])
        h = sigma(z)
    return out[0], grads, d1, d2


def ea_blocks(
    net: Net,
    x: Tensor,
    y: Tensor,
    loss: Loss,
    output: Callable[[Tensor], Tensor],
    residual: Callable[[Tensor], Tensor] | None,
    average: JacobianAverage = JacobianAverage.PER_SAMPLE,
) -> list[Tensor]:
    """Eqs. (6)/(8) of Chen et al. by a loop over samples, input side first.

    Args:
        output: maps E_i[∇²_{h^k} ξ_i] to the output block (identity for GN, Pos-Eig for PCH).
        residual: maps the mean diagonal term E_i[h'' ⊙ Wᵀ∇ξ_i] to what is added (None: drop).
        average: per-sample Jacobians E[diag(h') A diag(h')] (Eq. 6) or mean Jacobians (HBP Eq. 7).
    """
    parts = [_sample_parts(net, x[i], y[i], loss) for i in range(x.shape[0])]
    n = len(parts)
    hess = sum(hessian(lambda o: loss(o[None], y[i : i + 1]))(parts[i][0]) for i in range(n)) / n
    block = output(hess)
    blocks = [block]
    linears = [lin for lin, _ in _segments(net)[1]]
    for t in range(len(linears) - 1, 0, -1):  # from block of layer t+1 (0-based t) to layer t
        w = _input_jacobian(linears[t], x)  # ∂z^{t+1}/∂h^t, W for nn.Linear
        a = w.T @ block @ w
        if average is JacobianAverage.PER_SAMPLE:
            block = sum(torch.diag(p[2][t - 1]) @ a @ torch.diag(p[2][t - 1]) for p in parts) / n
        else:
            dm = torch.diag(sum(p[2][t - 1] for p in parts) / n)
            block = dm @ a @ dm
        if residual is not None:
            r = sum(p[3][t - 1] * (w.T @ p[1][t]) for p in parts) / n
            block = block + torch.diag(residual(r))
        blocks.insert(0, block)
    return blocks


def fisher_blocks(net: Net, x: Tensor, y: Tensor, loss: Loss, fisher: FisherType) -> list[Tensor]:
    """E_i[Σ_c p_c g_c g_cᵀ] (exact) or E_i[g_y g_yᵀ] (empirical), g = ∇_{b^t} ξ(· | label),
    by a loop over samples and classes with autograd gradients."""
    if fisher is FisherType.MC:
        raise ValueError("fisher_blocks: the reference is deterministic; use fisher='exact' or 'empirical'")
    blocks = [torch.zeros(len(z), len(z), dtype=x.dtype, device=x.device) for z in _zeros(net, x)]
    n_classes = len(_zeros(net, x)[-1])
    for i in range(x.shape[0]):
        out = net(x[i : i + 1])[0].detach()
        p = torch.softmax(out, -1)
        labels = range(n_classes) if fisher is FisherType.EXACT else [int(y[i])]
        for c in labels:
            weight = p[c] if fisher is FisherType.EXACT else 1.0
            g = _sample_parts(net, x[i], torch.tensor(c, device=x.device), loss)[1]
            for t, gt in enumerate(g):
                blocks[t] += weight * torch.outer(gt, gt) / x.shape[0]
    return blocks
