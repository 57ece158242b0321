"""Slow, obviously correct references for the curvature blocks (float64, tiny nets).

Shared by the tests and by anyone who wants to check a block by hand:

* :func:`hessian_blocks` — the true batch-mean Hessian blocks with ``torch.func.hessian``;
* :func:`ea_blocks` — a loop over samples of Eqs. (6)/(8) of Chen et al. (and Eq. 7 of
  Dangel & Hennig), with derivatives from autograd rather than the net's closed forms;
* :func:`fisher_blocks` — KFAC's E[g gᵀ] with per-sample gradients from autograd.

Every quantity is taken with respect to an offset δ^t added to the pre-activation z^t, which
equals the bias block when the net has biases and is the z^t block when it has none.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.func import grad, hessian

from curvlab.curvature.options import FisherType, JacobianAverage
from curvlab.losses import Loss
from curvlab.nets import MLP

__all__ = ["forward_with_offsets", "hessian_blocks", "ea_blocks", "fisher_blocks", "abs_eig"]


def _sigma(net: MLP) -> Callable[[Tensor], Tensor]:
    return {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}[net.activation.value]


def forward_with_offsets(net: MLP, params: dict[str, Tensor], x: Tensor, offsets: list[Tensor]) -> Tensor:
    """The net's output with z^t ← z^t + δ^t, written out independently of ``MLP.forward``."""
    h = x.reshape(x.shape[0], -1)
    for t, delta in enumerate(offsets):
        z = h @ params[f"layers.{t}.weight"].T + delta
        if f"layers.{t}.bias" in params:
            z = z + params[f"layers.{t}.bias"]
        h = _sigma(net)(z) if t < net.depth - 1 else z
    return h


def _zeros(net: MLP, like: Tensor) -> list[Tensor]:
    return [torch.zeros(n, dtype=like.dtype, device=like.device) for n in net.widths[1:]]


def hessian_blocks(net: MLP, x: Tensor, y: Tensor, loss: Loss, weights: bool = False) -> list[Tensor]:
    """True blocks of the batch-mean loss: w.r.t. δ^t (bias blocks) or, with ``weights``,
    w.r.t. W^t in row-major ``W.flatten()`` order, input side first."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    blocks = []
    for t in range(net.depth):
        if weights:
            name = f"layers.{t}.weight"

            def f(w: Tensor, name: str = name) -> Tensor:
                return loss(forward_with_offsets(net, {**params, name: w}, x, _zeros(net, x)), y)

            w0 = params[name]
            blocks.append(hessian(f)(w0).reshape(w0.numel(), w0.numel()))
        else:

            def f(d: Tensor, t: int = t) -> Tensor:
                offs = _zeros(net, x)
                offs[t] = d
                return loss(forward_with_offsets(net, params, x, offs), y)

            blocks.append(hessian(f)(torch.zeros(net.widths[t + 1], dtype=x.dtype, device=x.device)))
    return blocks


def abs_eig(a: Tensor) -> Tensor:
    """|A|: the symmetric matrix with the eigenvalues of A replaced by their absolute values."""
    lam, q = torch.linalg.eigh(0.5 * (a + a.T))
    return q @ torch.diag(lam.abs()) @ q.T


def _sample_parts(net: MLP, x_i: Tensor, y_i: Tensor, loss: Loss):
    """One sample's pre-activations, activation derivatives (autograd) and δ-gradients."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    sig = _sigma(net)
    x1 = x_i[None]
    out = forward_with_offsets(net, params, x1, _zeros(net, x_i))

    def loss_of(offs: list[Tensor]) -> Tensor:
        return loss(forward_with_offsets(net, params, x1, offs), y_i[None])

    grads = grad(loss_of)(_zeros(net, x_i))  # ∇_{b^t} ξ_i for every t
    zs = []
    h = x1
    for t in range(net.depth):
        z = h @ params[f"layers.{t}.weight"].T
        if f"layers.{t}.bias" in params:
            z = z + params[f"layers.{t}.bias"]
        zs.append(z[0])
        h = sig(z)
    d1 = [torch.func.vmap(grad(sig))(z) for z in zs]
    d2 = [torch.func.vmap(grad(grad(sig)))(z) for z in zs]
    return out[0], grads, d1, d2


def ea_blocks(
    net: MLP,
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
    for t in range(net.depth - 1, 0, -1):  # from block of layer t+1 (0-based t) to layer t
        w = net.layers[t].weight.detach()
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


def fisher_blocks(net: MLP, x: Tensor, y: Tensor, loss: Loss, fisher: FisherType) -> list[Tensor]:
    """E_i[Σ_c p_c g_c g_cᵀ] (exact) or E_i[g_y g_yᵀ] (empirical), g = ∇_{b^t} ξ(· | label),
    by a loop over samples and classes with autograd gradients."""
    if fisher is FisherType.MC:
        raise ValueError("fisher_blocks: the reference is deterministic; use fisher='exact' or 'empirical'")
    blocks = [torch.zeros(n, n, dtype=x.dtype, device=x.device) for n in net.widths[1:]]
    n_classes = net.widths[-1]
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
