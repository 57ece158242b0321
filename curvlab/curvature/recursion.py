"""The one backward recursion for every curvature kind, and the public ``curvature()``.

Per layer, going from the output to the input (Chen et al., "Layer-wise Equations"):

* gradient:  ∇_{b^{t−1}} ξ_i = h^{(t−1)'} ⊙ (W^{tT} ∇_{b^t} ξ_i);
* curvature: Eq. (4b), H^{t−1} = diag(h')·Wᵀ H^t W·diag(h') + diag(h'' ⊙ Wᵀ ∇_{b^t} ξ_i), where the
  message type (per sample, factors or batch mean) and the residual policy come from the kind
  (``kinds.py``), and the gradient term is shared.

The layer maths (W, its transpose products, the parameters' gradients and blocks) come from
each layer's rule and σ', σ'' and the residual from the element-wise rule (:mod:`curvlab.modules`).

``exact`` runs over chunks of samples to bound the memory of its per-sample blocks (``fisher``
only when asked: its factors are small); the batch-mean kinds (gn, pch) need the whole batch
at once for their Jacobian averages. The caller's forward pass can be reused (``cache``), and
the batch-mean gradients come out of the same pass, so a solver needs no autograd backward.

A net with convolutions or pooling (a *step net*) runs the same loop step by step
(:func:`curvlab.curvature.steps.step_backward`), every kind with per-sample Jacobians.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Collection

import torch
from torch import Tensor

from curvlab.curvature.blocks import LayerCurvature
from curvlab.curvature.kinds import Batching, KindPolicy, policy
from curvlab.curvature.messages import PerSampleBlocks, Residual
from curvlab.curvature.options import CurvatureOptions, Kind, WeightFactor, reject_unknown
from curvlab.losses import Loss, make_loss
from curvlab.curvature.steps import step_backward, step_chunk_size, summed
from curvlab.hugepages import scratch
from curvlab.modules import Chain, Conv2dRule, Net, chain
from curvlab.modules.conv import ConvCache
from curvlab.nets import ForwardCache

__all__ = ["curvature", "backward"]

_CHUNK_ELEMENTS = 2**26  # per-sample work arrays of about 256 MiB (float32) per chunk


def backward(
    net: Net | Chain,
    cache: ForwardCache,
    y: Tensor,
    loss: Loss,
    pol: KindPolicy,
    options: CurvatureOptions,
    *,
    scale: float | None = None,
    weight_blocks: bool = False,
    generator: torch.Generator | None = None,
    keep_samples: Collection[int] = (),
) -> list[dict[str, Tensor]]:
    """Run the recursion on one set of samples; return per-layer sums over them times ``scale``.

    With ``scale`` = 1/batch (the default takes the samples of ``cache`` as the whole batch)
    these are the samples' shares of the batch means, so that chunks can be added up.

    ``net`` may already be its :class:`~curvlab.modules.Chain` (saves the module walk).

    Returns, input side first, dicts with ``block`` (n_t, n_t) Σ_i H_i^t, ``grad_bias``
    (n_t,) Σ_i ∇_{b^t} ξ_i, ``grad_weight`` (n_t, n_{t−1}) Σ_i ∇_{W^t} ξ_i and, with
    ``weight_blocks``, ``weight`` Σ_i H_i^t ⊗ h_i h_iᵀ (row-major ``W.flatten()`` order); for the
    0-based layers in ``keep_samples``, ``samples`` (b, n_t): each sample's ∇_{b^t} ξ_i times ``scale``,
    in place of ``grad_weight`` (= samplesᵀ h: a caller that keeps the samples forms it if it needs it).
    """
    view = net if isinstance(net, Chain) else chain(net)
    k = view.depth
    out = cache.output
    scale = 1.0 / out.shape[0] if scale is None else scale
    loss = loss.at(out)  # the gradient and the output block share one softmax
    g = loss.grad(out, y)  # (b, n_k) per-sample ∇_{b^k} ξ_i
    msg = pol.output(loss, out, y, options, generator).carry(g)  # Eq. (4a) / (8a); factors carry g
    sums: list[dict[str, Tensor]] = [{} for _ in range(k)]
    for t in reversed(range(k)):  # view.layers[t] is layer t+1 of the paper: z^{t+1} = W h^t + b
        h = cache.inputs[t]  # (b, n_t) its input h^t
        rule, layer = view.rules[t], view.layers[t]
        # (b, n_{t+1}); scaling g is cheaper than scaling the (n_{t+1}, n_t) product. A kept buffer
        # unless the layer's samples are returned (or autograd runs): only ∇_W and ∇_b read it.
        keep = t in keep_samples or torch.is_grad_enabled()
        gs = torch.mul(g, scale, out=None if keep else scratch("recursion.gs", g, *g.shape))
        sums[t] = {"block": msg.total(scale), "grad_bias": gs.sum(0)}
        if t in keep_samples:
            sums[t]["samples"] = gs
        else:
            sums[t]["grad_weight"] = rule.weight_grad(gs, h)
        if weight_blocks:
            assert isinstance(msg, PerSampleBlocks)
            sums[t]["weight"] = msg.weight_total(rule, h, scale)  # Eq. (4c)
        if t == 0:
            break
        z = cache.preacts[t - 1]  # (b, n_t) z^t, whose σ gave h^t
        fns = view.acts[t - 1]  # σ_t between layer t and t+1 (identity for Linear → Linear)
        # σ'' ≡ 0 (ReLU, leaky ReLU, Linear → Linear): the residual term vanishes; skip its ≈ 6 ops
        residual = pol.residual is not Residual.DROP and fns.d2f is not torch.zeros_like
        fused = fns.residual_out if residual else None  # sigmoid, tanh: h'' ⊙ Wᵀ∇ξ_i from g and h, no h''
        # From h^t = σ(z^t) where σ allows it (ReLU: one sign pass, sigmoid/tanh: no σ to recompute), into a
        # kept buffer outside autograd (autograd refuses out=): the pull-back reads it, then the residual goes in
        reuse = not torch.is_grad_enabled()
        if residual and fused is None:
            dphi, d2phi = fns.derivatives(z, h)  # (b, n_t) each
        else:
            dphi, d2phi = fns.first(z, h, scratch("recursion.dphi", h, *h.shape) if reuse else None), None
        # The last pull-back (into the first layer) only needs the sum over samples.
        per_sample = t > 1 or weight_blocks
        if msg.grad is not None and not residual:  # a factor message carries g: one GEMM pulls both back
            msg = msg.pull_back(rule, layer, dphi, options.jacobian_average, per_sample)
            g = msg.grad  # ∇_{b^t} ξ_i
            continue
        # (b, n_t) Wᵀ ∇_{b^{t+1}} ξ_i; outside autograd in one of two kept buffers by turns, and g into it
        # when nothing reads Wᵀ∇ξ_i again (g lives on into the next layer, whose product takes the other)
        back = rule.jac_t_vec(layer, g, slot=f"recursion.back{t % 2}" if reuse else None)  # type: ignore[call-arg]
        g = fns.jac_t_vec(dphi, back, back if reuse and d2phi is None else None)  # ∇_{b^t} ξ_i
        msg = msg.pull_back(rule, layer, dphi, options.jacobian_average, per_sample)
        if fused is not None:  # h^{t''} ⊙ Wᵀ∇ξ_i in one pass from g and h, into dphi's buffer (read by now)
            msg = msg.add_residual(fused(g, h, dphi if reuse else None), pol.residual)
        elif d2phi is not None:
            msg = msg.add_residual(fns.residual(d2phi, back), pol.residual)  # h^{t''} ⊙ Wᵀ∇ξ_i
    return sums


def _detached(t: Tensor) -> Tensor:
    """``t.detach()`` only where autograd tracks ``t`` (a solver's cache is made under no_grad)."""
    return t.detach() if t.requires_grad else t


def _chunk_size(widths: list[int], weight_blocks: bool) -> int:
    """Samples per chunk so that one chunk's per-sample arrays stay around 2^26 elements.

    Per sample, the pull-back from block n_{t+1} into layer t holds H_i (n_{t+1}²), F_i and
    H_i F_i (n_{t+1} n_t each) and, except into the first layer whose block is only summed,
    the new block (n_t²); the exact weight blocks add (n_t n_{t−1})² when requested.
    """
    per_sample = 1
    for t, (n_in, n_out) in enumerate(zip(widths[1:-1], widths[2:])):
        per_sample = max(per_sample, n_out * n_out + 2 * n_in * n_out + (n_in * n_in if t > 0 else 0))
    if weight_blocks:
        per_sample = max(per_sample, max((a * b) ** 2 for a, b in zip(widths[:-1], widths[1:])))
    return max(1, _CHUNK_ELEMENTS // per_sample)


def _make_options(kind: Any, options: CurvatureOptions | None, overrides: dict[str, Any]) -> CurvatureOptions:
    if overrides:
        reject_unknown(overrides, CurvatureOptions.field_names() - {"kind"}, "curvature()")
    if options is None:
        return CurvatureOptions(kind=Kind.PCH1 if kind is None else kind, **overrides)
    if kind is not None and kind != options.kind:
        overrides = {**overrides, "kind": kind}
    # re-validated by __post_init__; a solver's unchanged options skip that (≈ 40 µs a step)
    return replace(options, **overrides) if overrides else options


@torch.no_grad()
def curvature(
    net: Net | Chain,
    x: Tensor,
    y: Tensor,
    kind: str | Kind | None = None,
    loss: str | Loss = "cross_entropy",
    *,
    options: CurvatureOptions | None = None,
    input_cov: bool | Collection[int] = False,
    weight_blocks: bool = False,
    cache: ForwardCache | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    grad_samples: Collection[int] = (),
    block_products: bool = False,
    **option_overrides: Any,
) -> list[LayerCurvature]:
    """Batch-mean curvature blocks and gradients of every layer, input side first.

    Args:
        net: a :class:`~curvlab.MLP` or a feed-forward ``nn.Sequential`` of supported modules
            (:mod:`curvlab.modules`); its ``nn.Linear`` and ``nn.Conv2d`` modules are the layers here.
            Its :class:`~curvlab.modules.Chain` (``chain(net)``) is taken too (saves the module walk).
            On a net with convolutions every kind keeps per-sample Jacobians (``kinds.STEP_KINDS``)
            and a conv layer's block is read as a Linear layer's over its input patches
            (:class:`LayerCurvature`; ``options.kfac_type`` picks the Kronecker convention).
        x: (B, n_0) inputs, or images (B, C, H, W) (flattened by the net or fed to its first conv).
        y: (B,) integer class labels.
        kind: ``exact``, ``gn``, ``fisher``, ``pch``/``pch1`` or ``pch2`` (default: ``options.kind``,
            else ``pch1``).
        loss: ``cross_entropy``, ``nonconvex`` or a :class:`~curvlab.losses.Loss`.
        options: a full :class:`CurvatureOptions`; ``kind`` and ``option_overrides``
            (``jacobian_average``, ``weight_factor``, ``fisher``, ``mc_samples``) replace its fields.
        input_cov: also compute E[h hᵀ] (Eq. 11a): True for every layer, or the 0-based layers that
            need it (a conv layer's is its patch factor); implied for all by ``weight_factor="full"``.
        weight_blocks: also return the exact weight blocks E_i[H_i ⊗ h hᵀ] (``exact`` only;
            memory grows like (n_t n_{t−1})², so small nets only; a conv's via ``Conv2dRule.weight_block``).
        cache: a forward pass ``chain(net).forward_cache(x)`` already done by the caller (saves one).
        generator: random generator for the Monte-Carlo Fisher labels.
        chunk_size: samples per chunk for the per-sample kinds (default: from the widths).
        grad_samples: 0-based layers whose per-sample gradient shares ``grad_samples`` (B, n_t),
            ∇_{b^t} ξ_i / B, are kept (KFI's Gram form uses them; the recursion has them anyway).
            Their ``grad_weight`` is left None: it is ``grad_samplesᵀ h`` with the layer's inputs
            h (for the first layer of the CIFAR-10 net at batch 500, a 3 GFLOP product saved).
        block_products: (nets with convolutions) also return each layer's matrix-free block
            product ``block_product``: (dW, db) ↦ the kind's block of (W, b) times it, from the
            per-sample factors or blocks kept at the layer output (what EA-CG's CG multiplies with).

    Returns:
        One :class:`LayerCurvature` per layer (Linear or Conv2d).
    """
    opts = _make_options(kind, options, option_overrides)
    loss_fn = make_loss(loss)
    view = net if isinstance(net, Chain) else chain(net)
    pol = policy(opts.kind, steps=view.has_steps)
    if block_products and not view.has_steps:
        raise ValueError("block_products=True needs a net with convolutions; an MLP's blocks are formed already")
    if weight_blocks and opts.kind is not Kind.EXACT:
        raise ValueError(
            f"weight_blocks=True needs kind='exact' (got {opts.kind.value!r}); for other kinds build "
            "the Kronecker-factored weight block from .bias and .input_cov/.input_mean (Eq. 11)"
        )
    if cache is None:
        cache = view.forward_cache(x)
    elif cache.output.shape[0] != x.shape[0]:
        raise ValueError(
            f"cache holds {cache.output.shape[0]} samples but x has {x.shape[0]}; pass chain(net).forward_cache(x)"
        )
    if view.has_steps:
        cache = cache.select()  # detached, with every step's cache
    else:
        cache = ForwardCache([_detached(h) for h in cache.inputs], [_detached(z) for z in cache.preacts],
                             _detached(cache.output))
    batch = cache.output.shape[0]
    if not isinstance(y, Tensor) or y.device != cache.output.device:  # as_tensor costs an op even as a no-op
        y = torch.as_tensor(y, device=cache.output.device)
    if y.shape != (batch,) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"y must hold {batch} integer class labels, shape ({batch},); got {tuple(y.shape)} {y.dtype}")
    if y.dtype != torch.long:
        y = y.long()

    if pol.batching is Batching.MEAN:
        step = batch
    elif pol.batching is Batching.FACTORS:
        step = chunk_size or batch
    elif view.has_steps:
        step = chunk_size or step_chunk_size(cache, weight_blocks, view)
    else:
        step = chunk_size or _chunk_size(view.widths, weight_blocks)
    run = step_backward if view.has_steps else backward
    totals: list[dict[str, Tensor]] | None = None
    for lo in range(0, batch, step):
        part = slice(lo, lo + step)
        whole = step >= batch  # one chunk: the cache and labels as they are (saves ≈ 8 slicing ops a step)
        if view.has_steps:
            sub = cache.select(part)
        elif whole:
            sub = cache
        else:
            sub = ForwardCache([h[part] for h in cache.inputs], [z[part] for z in cache.preacts], cache.output[part])
        sums = run(
            view, sub, y if whole else y[part],
            loss_fn, pol, opts, scale=1.0 / batch, weight_blocks=weight_blocks, generator=generator,
            keep_samples=frozenset(grad_samples), **({"products": True} if block_products else {}),
        )
        if totals is None:
            totals = sums
        else:
            for acc, new in zip(totals, sums):
                for key in acc:
                    if key == "samples":  # per-sample rows: the chunks follow each other
                        acc[key] = torch.cat([acc[key], new[key]])
                    else:
                        acc[key] += new[key]
    assert totals is not None

    every_cov = input_cov is True or opts.weight_factor is WeightFactor.FULL
    cov_layers = set() if isinstance(input_cov, bool) else set(input_cov)
    layers = []
    conv_caches = [sc.cache for sc in cache.steps or () if isinstance(sc.cache, ConvCache)]
    for t, (h, tot, rule, has_bias, module) in enumerate(
        zip(cache.inputs, totals, view.rules, view.biases, view.layers)
    ):
        want_cov = every_cov or t in cov_layers
        if isinstance(rule, Conv2dRule):  # the patch factor of the chosen convention
            mean, cov = rule.input_factors(conv_caches.pop(0), opts.kfac_type, want_cov)
        else:
            mean, cov = rule.input_factors(h, want_cov)  # Eq. (11b), (11a)
        layers.append(
            LayerCurvature(
                bias=tot["block"],  # exactly symmetric: every message's total is
                input_mean=mean,
                input_cov=cov,
                grad_bias=tot["grad_bias"],
                grad_weight=tot.get("grad_weight"),
                weight=tot.get("weight"),
                has_bias=has_bias,
                grad_samples=tot.get("samples"),
                kron_out=tot.get("kron_out"),
                weight_shape=tuple(module.weight.shape) if view.has_steps else None,
                block_product=summed(tot["products"]) if block_products else None,
            )
        )
    return layers
