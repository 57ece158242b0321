"""Slow, obviously correct references for the curvature blocks (float64, tiny nets).

Shared by the tests and by anyone who wants to check a block by hand:

* :func:`hessian_blocks` — the true batch-mean Hessian blocks with ``torch.func.hessian``;
* :func:`ea_blocks` — a loop over samples of Eqs. (6)/(8) of Chen et al. (and Eq. 7 of
  Dangel & Hennig), with derivatives from autograd rather than the closed forms of the rules;
* :func:`fisher_blocks` — KFAC's E[g gᵀ] with per-sample gradients from autograd;
* for any feed-forward ``nn.Sequential`` (Conv2d, pooling, padding, Flatten, activations; the
  layers are its Linear and Conv2d leaves): :func:`layer_hessian_blocks` (true blocks),
  :func:`ggn_sample_blocks` / :func:`pch_sample_blocks` (per-sample chains: BackPACK's GGNMP /
  PCHMP quantity), :func:`ea_step_blocks` (KFRA's batch-averaged recursion) and
  :func:`kfac_reference` (KFAC factors, expand / reduce, by loops over output positions).

Every quantity is taken with respect to an offset δ^t added to the output z^t of the t-th
layer module (one with a :class:`~curvlab.modules.base.LayerRule`, e.g. ``nn.Linear``), which
equals the bias block when the layer has a bias and is the z^t block when it has none. The
forward pass runs the net's own modules (an :class:`MLP` through
:meth:`~curvlab.MLP.as_sequential`; a layer through its rule's ``forward`` when its weight is
replaced), not the recursion's canonical chain; only autograd differentiates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, jvp

from curvlab.curvature.options import FisherType, JacobianAverage
from curvlab.losses import Loss
from curvlab.modules import LayerRule, Net, leaves, rule_for
from curvlab.nets import MLP

__all__ = [
    "forward_with_offsets", "hessian_blocks", "ea_blocks", "fisher_blocks", "abs_eig", "clip_eig", "LayerBlocks",
    "net_steps", "sample_chain_blocks", "ggn_sample_blocks", "pch_sample_blocks", "layer_hessian_blocks",
    "ea_step_blocks", "kfac_reference",
]


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


# --- any feed-forward Sequential (Conv2d, pooling, Flatten, activations): per-sample chains -------
#
# Each sample i keeps its own Jacobians through every step (BackPACK's ``curvmatprod`` quantity,
# HBP Sec. 3), the steps are the net's leaf modules, and every derivative is autograd's on the
# module itself: no rule, no closed form. Layers are the ``nn.Linear`` and ``nn.Conv2d`` leaves.

PARAM_LAYERS = (nn.Linear, nn.Conv2d)
Modify = Callable[[Tensor], Tensor]  # a symmetric matrix ↦ its modification (Pos-Eig, identity)


@dataclass
class LayerBlocks:
    """Batch-mean blocks of one layer (Linear or Conv2d), as one ``net.parameters()`` layer holds them.

    Attributes:
        weight: (p, p) block of W in row-major ``W.flatten()`` order (for a conv, W.flatten(1) = (C_out, J)).
        bias: (C_out, C_out) block of an offset δ added to the layer output at every position
            (z + δ broadcast over H, W): the bias block with a bias, the same quantity without one.
    """

    weight: Tensor
    bias: Tensor


def clip_eig(a: Tensor) -> Tensor:
    """The symmetric matrix with the negative eigenvalues of A set to zero (PCH-2's max(λ, 0))."""
    lam, q = torch.linalg.eigh(0.5 * (a + a.T))
    return q @ torch.diag(lam.clamp(min=0)) @ q.T


POS_EIG: dict[str, Modify] = {"abs": abs_eig, "clip": clip_eig}


def net_steps(net: Net) -> list[nn.Module]:
    """The net's leaf modules in forward order (an :class:`MLP` through ``as_sequential``)."""
    return leaves(net.as_sequential() if isinstance(net, MLP) else net)


def _flat_fn(m: nn.Module, a: Tensor) -> Callable[[Tensor], Tensor]:
    """u ↦ m(u) of one sample as a map of flat vectors, at the shape of ``a`` (1, …)."""
    return lambda u: m(u.view_as(a)).flatten()


def _layer_jacobians(m: nn.Module, a: Tensor) -> tuple[Tensor, Tensor]:
    """∂z/∂W (n_out, W.numel()) and ∂z/∂δ (n_out, C_out) of one sample's z = m(a), by autograd."""
    w0 = m.weight.detach()
    jw = jacrev(lambda w: functional_call(m, {"weight": w}, (a,)).flatten())(w0).reshape(-1, w0.numel())

    def offset(d: Tensor) -> Tensor:
        z = m(a)
        return (z + d.view(1, -1, *[1] * (z.dim() - 2))).flatten()  # δ broadcast over positions

    jd = jacrev(offset)(torch.zeros(m.weight.shape[0], dtype=a.dtype, device=a.device))
    return jw.detach(), jd.detach()


def _sample_chain(
    mods: list[nn.Module], x_i: Tensor, y_i: Tensor, loss: Loss, output: Modify, residual: Modify | None
) -> list[LayerBlocks]:
    """One sample's J_θᵀ M J_θ per layer, M the curvature at the layer output from the recursion
    M ← J_sᵀ M J_s + residual(R_s), R_s = Σ_k (∂ξ_i/∂a_{s+1,k}) ∇²a_{s+1,k} (HBP Eq. 9-10 per sample)."""
    acts = [x_i[None]]  # the input of every step, then the output (1, …)
    for m in mods:
        acts.append(m(acts[-1]).detach())
    out = acts[-1][0]
    g = grad(lambda o: loss(o[None], y_i[None]))(out)  # ∇_out ξ_i
    big_m = output(hessian(lambda o: loss(o[None], y_i[None]))(out))  # H_i, modified
    blocks: list[LayerBlocks] = []
    for m, a in zip(reversed(mods), reversed(acts[:-1])):
        if isinstance(m, PARAM_LAYERS):
            jw, jd = _layer_jacobians(m, a)
            blocks.insert(0, LayerBlocks(jw.T @ big_m @ jw, jd.T @ big_m @ jd))
        f = _flat_fn(m, a)
        j = jacrev(f)(a.flatten()).detach()  # (n_{s+1}, n_s)
        big_m = j.T @ big_m @ j
        if residual is not None:
            big_m = big_m + residual(hessian(lambda u, g=g, f=f: (g * f(u)).sum())(a.flatten()).detach())
        g = j.T @ g
    return blocks


def sample_chain_blocks(
    net: Net, x: Tensor, y: Tensor, loss: Loss, output: Modify | None = None, residual: Modify | None = None
) -> list[LayerBlocks]:
    """E_i of each layer's J_θ,iᵀ M_i J_θ,i with sample i's own Jacobians through every step.

    Args:
        output: maps H_i = ∇²_out ξ_i to the output curvature (None: H_i itself).
        residual: maps each step's per-sample residual R_{s,i} (the module's second-order term,
            zero for Linear, Conv2d, pooling and ReLU) to what is added (None: dropped).

    ``residual=lambda r: r`` gives the true Hessian blocks (:func:`layer_hessian_blocks`).
    """
    mods = net_steps(net)
    out_fn = output or (lambda h: h)
    per = [_sample_chain(mods, x[i], y[i], loss, out_fn, residual) for i in range(x.shape[0])]
    return [
        LayerBlocks(*(sum(getattr(p[t], f) for p in per) / len(per) for f in ("weight", "bias")))
        for t in range(len(per[0]))
    ]


def ggn_sample_blocks(net: Net, x: Tensor, y: Tensor, loss: Loss) -> list[LayerBlocks]:
    """The GGN blocks E_i[J_θ,iᵀ H_i J_θ,i] (BackPACK ``GGNMP``; curvlab ``gn`` on step nets)."""
    return sample_chain_blocks(net, x, y, loss)


def pch_sample_blocks(net: Net, x: Tensor, y: Tensor, loss: Loss, mode: str = "abs") -> list[LayerBlocks]:
    """Per-sample PCH blocks: Pos-Eig of H_i at the output and |R_{s,i}| (``abs``, PCH-1) or
    max(R_{s,i}, 0) (``clip``, PCH-2) at each step, pulled back with sample i's own Jacobians
    (BackPACK ``PCHMP(modify=mode)``; HBP Sec. 3, Dangel & Hennig Eqs. 9-10). The residual of an
    element-wise step is diagonal, so its Pos-Eig is the entry-wise |·| / max(·, 0)."""
    if mode not in POS_EIG:
        raise ValueError(f"pch_sample_blocks: mode={mode!r}; use 'abs' or 'clip'")
    return sample_chain_blocks(net, x, y, loss, POS_EIG[mode], POS_EIG[mode])


def layer_hessian_blocks(net: Net, x: Tensor, y: Tensor, loss: Loss) -> list[LayerBlocks]:
    """True blocks of the batch-mean loss by ``torch.func.hessian`` of the whole net: w.r.t. W
    (``functional_call`` with W replaced) and w.r.t. an offset δ added to the layer output (a
    forward hook), per layer."""
    seq = net.as_sequential() if isinstance(net, MLP) else net
    names = {id(m): n for n, m in seq.named_modules()}
    out: list[LayerBlocks] = []
    for m in (m for m in net_steps(net) if isinstance(m, PARAM_LAYERS)):
        key, w0 = f"{names[id(m)]}.weight", m.weight.detach()
        h_w = hessian(lambda w, key=key: loss(functional_call(seq, {key: w}, (x,)), y))(w0)
        d0 = torch.zeros(w0.shape[0], dtype=x.dtype, device=x.device)
        h_d = hessian(lambda d, m=m: loss(_with_offset(seq, m, x, d), y))(d0)
        out.append(LayerBlocks(h_w.reshape(w0.numel(), w0.numel()), h_d))
    return out


def _with_offset(net: nn.Module, layer: nn.Module, x: Tensor, d: Tensor) -> Tensor:
    """The net's output with δ = ``d`` added to ``layer``'s output at every position."""
    handle = layer.register_forward_hook(lambda mod, inp, z: z + d.view(1, -1, *[1] * (z.dim() - 2)))
    try:
        return net(x)
    finally:
        handle.remove()


def ea_step_blocks(net: Net, x: Tensor, y: Tensor, loss: Loss) -> list[Tensor]:
    """KFRA's recursion (Botev et al. 2017; BackPACK ``KFRA``) on steps: B̄ = E_i[H_i] at the output,
    then B̄ ← E_i[J_{s,i}ᵀ B̄ J_{s,i}] through every step (each sample's own Jacobian of that step,
    one shared B̄: EA-CG Eq. 6 with the residual dropped). Returns B̄ (n_out, n_out) at each layer
    output in ``z.flatten()`` order, input side first; its position sums are the bias blocks."""
    mods, b = net_steps(net), x.shape[0]
    acts = [x]
    for m in mods:
        acts.append(m(acts[-1]).detach())
    out = acts[-1]
    big = sum(hessian(lambda o, i=i: loss(o[None], y[i : i + 1]))(out[i]) for i in range(b)) / b
    blocks: list[Tensor] = []
    for m, a in zip(reversed(mods), reversed(acts[:-1])):
        if isinstance(m, PARAM_LAYERS):
            blocks.insert(0, big)
        js = [jacrev(_flat_fn(m, a[i : i + 1]))(a[i].flatten()).detach() for i in range(b)]
        big = sum(j.T @ big @ j for j in js) / b
    return blocks


def _patch_rows(m: nn.Module, a: Tensor, bias: bool) -> Tensor:
    """One sample's inputs to ``m`` as rows ũ_l (L, J (+1)), one per output position (row-major), in
    ``W.flatten(1)`` column order, each cut by hand from the zero-padded map; a Linear has L = 1."""
    if isinstance(m, nn.Linear):
        rows = a.reshape(1, -1)
    else:
        (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
        reach_h, reach_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # the kernel's extent on the map
        if m.padding == "same":  # PyTorch puts the odd extra element at the bottom/right
            top, left = (reach_h - 1) // 2, (reach_w - 1) // 2
            pads = (left, reach_w - 1 - left, top, reach_h - 1 - top)
        else:
            ph, pw = (0, 0) if m.padding == "valid" else m.padding
            pads = (pw, pw, ph, ph)
        xp = F.pad(a[0], pads)  # (C_in, H_pad, W_pad)
        rows = torch.stack([
            xp[:, r : r + reach_h : dh, c : c + reach_w : dw].reshape(-1)
            for r in range(0, xp.shape[1] - reach_h + 1, sh)
            for c in range(0, xp.shape[2] - reach_w + 1, sw)
        ])
    return torch.cat([rows, rows.new_ones(len(rows), 1)], 1) if bias else rows


def kfac_reference(
    net: Net, x: Tensor, y: Tensor, loss: Loss, fisher: FisherType | str, approx: str = "expand",
    labels: Tensor | None = None, bias: bool = True,
) -> list[tuple[Tensor, Tensor]]:
    """KFAC factors (A, G) per layer, G ⊗ A ≈ the Fisher block of [W.flatten(1), b] (``bias`` and the
    layer has one: patches with a ones row; else of W), by loops over samples, label rows and positions.

    Rows: g_{i,c} = ∇_z ξ(out_i | c) at the layer output, weighted w_c: ``exact`` all classes with
    w_c = p_c (= the GGN for cross-entropy: KFLR), ``empirical`` c = y_i with w = 1, ``mc`` the given
    ``labels`` (M, b) with w = 1/M. With ũ_l the patch at position l of L (a Linear: L = 1):

    * ``expand`` (KFC, Grosse & Martens 2016 Eq. 32): A = E_i[(1/L) Σ_l ũ_l ũ_lᵀ],
      G = E_i[Σ_c w_c Σ_l g_{c,l} g_{c,l}ᵀ];
    * ``reduce`` (Eschenhagen et al. 2023, Sec. 3): A = E_i[ū ūᵀ] with ū = (1/L) Σ_l ũ_l,
      G = E_i[Σ_c w_c (Σ_l g_{c,l})(Σ_l g_{c,l})ᵀ], the exact bias block of the kind.
    """
    fisher = FisherType(fisher)
    if approx not in ("expand", "reduce"):
        raise ValueError(f"kfac_reference: approx={approx!r}; use 'expand' or 'reduce'")
    if fisher is FisherType.MC and labels is None:
        raise ValueError("kfac_reference: fisher='mc' needs the sampled labels (M, b)")
    mods, b = net_steps(net), x.shape[0]
    layers = [m for m in mods if isinstance(m, PARAM_LAYERS)]
    facs: list[list[Tensor]] = []
    for i in range(b):
        h, inputs, zs = x[i : i + 1].clone().requires_grad_(True), [], []
        with torch.enable_grad():
            for m in mods:
                if isinstance(m, PARAM_LAYERS):
                    inputs.append(h.detach())
                h = m(h)
                if isinstance(m, PARAM_LAYERS):
                    zs.append(h)
            p = torch.softmax(h.detach()[0], -1)
            if fisher is FisherType.EXACT:
                rows = [(c, p[c]) for c in range(len(p))]
            elif fisher is FisherType.EMPIRICAL:
                rows = [(int(y[i]), 1.0)]
            else:
                rows = [(int(c), 1.0 / len(labels)) for c in labels[:, i]]  # type: ignore[index]
            grads = [
                (w, torch.autograd.grad(loss(h, torch.tensor([c], device=x.device)), zs, retain_graph=True))
                for c, w in rows
            ]
        for t, m in enumerate(layers):
            u = _patch_rows(m, inputs[t], bias and m.bias is not None)  # (L, J (+1))
            n_pos = len(u)
            a = torch.zeros(u.shape[1], u.shape[1], dtype=x.dtype, device=x.device)
            g = torch.zeros(m.weight.shape[0], m.weight.shape[0], dtype=x.dtype, device=x.device)
            if approx == "expand":
                for l in range(n_pos):
                    a += torch.outer(u[l], u[l]) / n_pos
                    for w, gr in grads:
                        gl = gr[t][0].reshape(len(g), -1)[:, l]  # (C_out,) at position l
                        g += w * torch.outer(gl, gl)
            else:
                ubar = sum(u[l] for l in range(n_pos)) / n_pos
                a += torch.outer(ubar, ubar)
                for w, gr in grads:
                    gsum = gr[t][0].reshape(len(g), -1).sum(1)
                    g += w * torch.outer(gsum, gsum)
            if i == 0:
                facs.append([a / b, g / b])
            else:
                facs[t][0] += a / b
                facs[t][1] += g / b
    return [(a, g) for a, g in facs]
