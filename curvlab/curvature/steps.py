"""The backward recursion on step nets (nets with convolutions or pooling), one step at a time.

The same loop as :func:`curvlab.curvature.recursion.backward`, over the chain's ``steps`` instead
of fused Linear layers (``docs/module_rules.md``, "Wiring convolutions"): per step from the output,

* gradient: the step's transposed Jacobian, ∇_{in} ξ_i = J_iᵀ ∇_{out} ξ_i (``jac_t_vec``);
* curvature: the message through the step's pull-back (Eq. 4b of Chen et al., first term, per
  sample: ``through`` for a conv/linear/pooling step, ``scale_diag`` for an element-wise one),
  plus the element-wise step's residual diag(σ'' ⊙ ∇_h ξ_i) under the kind's policy (second term);
* at a layer, its contributions are read off the message at its output before the pull-back.

Every message keeps each sample's own Jacobians (``kinds.STEP_KINDS``), so any chunk of samples
can run alone and the chunks add up.
"""

from __future__ import annotations

from typing import Any, Callable, Collection

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from curvlab.curvature.fused_pool import fused_max_pool
from curvlab.curvature.kinds import KindPolicy
from curvlab.curvature.messages import Message, PerSampleBlocks, Residual, SampleFactors
from curvlab.curvature.options import CurvatureOptions, KFACType
from curvlab.losses import Loss
from curvlab.modules import Chain, Conv2dRule, ElementwiseRule, LayerRule, ModuleRule, ParameterFreeRule
from curvlab.modules.conv import block_matvec
from curvlab.nets import ForwardCache, StepCache

__all__ = ["step_backward", "step_chunk_size", "Product", "summed"]

_CHUNK_ELEMENTS = 2**26  # per-sample blocks of about 256 MiB (float32) per chunk
_SAMPLE_LIMIT = 2**28  # one sample's blocks beyond this (1 GiB float32) are refused

# A layer's matrix-free block product: (dW, db or None) ↦ (block · (dW, db)) split as (weight, bias or None).
Product = Callable[[Tensor, "Tensor | None"], tuple[Tensor, "Tensor | None"]]
TensorMap = Callable[[Tensor], Tensor]


def summed(products: list[Product]) -> Product:
    """The sum of the chunks' block products (one per chunk of samples)."""
    if len(products) == 1:
        return products[0]

    def mv(dw: Tensor, db: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        parts = [p(dw, db) for p in products]
        bias = None if db is None else sum(b for _, b in parts)
        return sum(w for w, _ in parts), bias  # type: ignore[return-value]

    return mv


def _block_product(rule: LayerRule | Conv2dRule, m: nn.Module, sc: StepCache, msg: Message, scale: float) -> Product:
    """(dW, db) ↦ ``scale`` · Σ_i J_θ,iᵀ H_i J_θ,i (dW, db) with the message's per-sample H_i at the layer
    output, never formed (HBP Sec. 3, BackPACK ``curvmatprod``); db None: the weight block alone."""
    out_mv = msg.out_matvec()  # type: ignore[attr-defined]
    if isinstance(rule, Conv2dRule):

        def conv_mv(dw: Tensor, db: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
            w, b = block_matvec(rule, m, sc.cache, out_mv, dw.reshape(m.weight.shape), db, scale)
            return w.reshape(dw.shape), b

        return conv_mv
    h = sc.x  # (b, n_in)

    def linear_mv(dw: Tensor, db: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        hv = out_mv(F.linear(h, dw.reshape(m.weight.shape), db)) * scale  # (b, n): H_i J_θ,i (dW, db)
        return rule.weight_grad(hv, h).reshape(dw.shape), None if db is None else hv.sum(0)

    return linear_mv


def _layer_sums(
    rule: LayerRule | Conv2dRule, layer: nn.Module, sc: StepCache, g: Tensor, msg: Message,
    scale: float, weight_blocks: bool, keep: bool, kfac_type: KFACType, products: bool, first: bool,
) -> tuple[dict[str, Any], Tensor | None]:
    """A layer's share of the batch means from the message and gradients g at its output, and the
    gradient at its input (a conv's comes from the same kernel call as its weight gradient; None when
    ``first``: the net's input needs none)."""
    if isinstance(rule, Conv2dRule):
        back, grad_w, grad_b = rule.backward(layer, g, sc.cache, need_input=not first)  # one call, as autograd's
        sums = _conv_tensors(rule, layer, sc, msg, scale, weight_blocks, kfac_type)
        sums["grad_weight"] = grad_w.flatten(1).mul_(scale)  # (C_out, J); scaling g would cost a pass over it
        sums["grad_bias"] = (rule.bias_grad(g) if grad_b is None else grad_b).mul_(scale)
    else:
        sums = _linear_tensors(rule, sc, g * scale, msg, scale, weight_blocks, keep)  # (b, n): small
        back = None
    if products:
        sums["products"] = [_block_product(rule, layer, sc, msg, scale)]  # a list: chunks add up by +=
    return sums, back


def _conv_tensors(
    rule: Conv2dRule, layer: nn.Module, sc: StepCache, msg: Message, scale: float, weight_blocks: bool,
    kfac_type: KFACType,
) -> dict[str, Any]:
    """A conv layer's bias block (the reduce G), expand G and, on request, exact weight block."""
    if kfac_type is KFACType.REDUCE and isinstance(msg, SampleFactors):  # G is the bias block: no expand G
        return {"block": rule.out_grams(msg.factors, msg.signs, scale, expand=False)[0]}
    bias, expand = msg.conv_grams(rule, layer, scale)  # type: ignore[attr-defined]
    sums = {"block": bias}
    if kfac_type is KFACType.EXPAND:
        sums["kron_out"] = expand
    if weight_blocks:
        assert isinstance(msg, PerSampleBlocks)
        sums["weight"] = rule.weight_block(layer, msg.blocks, sc.cache, scale)  # exact, W.flatten() order
    return sums


def _linear_tensors(
    rule: LayerRule, sc: StepCache, gs: Tensor, msg: Message, scale: float, weight_blocks: bool, keep: bool,
) -> dict[str, Any]:
    """The blocks and gradients of a Linear layer (``gs``: the scaled output gradients)."""
    sums = {"block": msg.total(scale), "grad_bias": gs.sum(0)}
    if keep:
        sums["samples"] = gs
    else:
        sums["grad_weight"] = rule.weight_grad(gs, sc.x)
    if weight_blocks:
        assert isinstance(msg, PerSampleBlocks)
        sums["weight"] = msg.weight_total(rule, sc.x, scale)  # Eq. (4c)
    return sums


def _pullbacks(m: nn.Module, rule: ModuleRule, sc: StepCache) -> tuple[TensorMap, TensorMap, TensorMap]:
    """A linear step's transposed-Jacobian products per sample: on vectors (b, *out) → (b, *in),
    blocks (b, n_out, n_out) → (b, n_in, n_in) and factors (b, r, *out) → (b, r, *in)."""
    in_shape = sc.x.shape[1:]
    if isinstance(rule, Conv2dRule):
        hw = (in_shape[1], in_shape[2])
        return (
            lambda v: rule.jac_t_vec(m, v, hw),
            lambda h: rule.jac_t_block(m, h, hw),
            lambda u: rule.jac_t_factors(m, u, hw),
        )
    if isinstance(rule, LayerRule):
        ones = sc.x.new_ones(sc.x.shape)  # (b, n_in): no element-wise map fused in, d = 1
        return (
            lambda v: rule.jac_t_vec(m, v),
            lambda h: rule.jac_t_blocks(m, h, ones, True),
            lambda u: rule.jac_t_factors(m, u, ones),
        )
    assert isinstance(rule, ParameterFreeRule)  # pooling, padding, Flatten, Identity (``chain`` made it so)
    return (
        lambda v: rule.jac_t_vec(m, v, sc.cache, in_shape),
        lambda h: rule.jac_t_blocks(m, h, sc.cache, in_shape),
        lambda u: rule.jac_t_factors(m, u, sc.cache, in_shape),
    )


def step_backward(
    view: Chain,
    cache: ForwardCache,
    y: Tensor,
    loss: Loss,
    pol: KindPolicy,
    options: CurvatureOptions,
    *,
    scale: float,
    weight_blocks: bool = False,
    generator: torch.Generator | None = None,
    keep_samples: Collection[int] = (),
    products: bool = False,
) -> list[dict[str, Any]]:
    """Per-layer sums over the samples of ``cache`` times ``scale``, input side first (as ``backward``).

    A conv layer's dict has ``block`` (C_out, C_out) (the reduce G: the exact bias block of the
    kind), ``kron_out`` (the expand G, with ``kfac_type=expand``), ``grad_bias`` (C_out,),
    ``grad_weight`` (C_out, J) (``W.flatten(1)``, J = C_in·k_h·k_w) and, with ``weight_blocks``,
    ``weight`` (C_out J, C_out J).
    With ``products`` every layer also has ``products``: a one-element list of its matrix-free block product.
    """
    assert cache.steps is not None, "a step net's cache comes from Chain.forward_cache"
    out = cache.output
    g = loss.grad(out, y)  # (b, C) ∇_{h^k} ξ_i
    msg = pol.output(loss, out, y, options, generator)
    residual = pol.residual is not Residual.DROP
    sums: list[dict[str, Any]] = [{} for _ in view.layers]
    t = view.depth - 1
    s = len(view.steps)
    while s > 0:
        s -= 1
        m, rule = view.steps[s]
        sc = cache.steps[s]
        back = None
        if t >= 0 and m is view.layers[t]:
            sums[t], back = _layer_sums(
                view.rules[t], m, sc, g, msg, scale, weight_blocks, t in keep_samples, options.kfac_type, products,
                first=s == 0,
            )
            t -= 1
        if s == 0:
            break
        if isinstance(rule, ElementwiseRule):
            fns = rule.bind(m)
            zero_residual = fns.d2f is torch.zeros_like  # ReLU, LeakyReLU: σ'' = 0 almost everywhere
            d1, d2 = fns.derivatives(sc.x) if residual and not zero_residual else (fns.df(sc.x), None)
            back, g = g, fns.jac_t_vec(d1, g)
            msg = msg.scale_diag(d1)  # type: ignore[attr-defined]
            if d2 is not None:
                sketch = (options.mc_samples, generator) if options.sketch else None
                msg = msg.add_residual(fns.residual(d2, back), pol.residual, sketch)
            continue
        fused = fused_max_pool(view, cache, s, residual) if isinstance(msg, SampleFactors) else None
        if fused is not None:  # pooling, padding and σ' in one scatter (``fused_pool``)
            s, pull = fused
            g, msg = pull(g[:, None])[:, 0], msg.through(None, pull)  # type: ignore[arg-type]
            continue
        vec, blocks, factors = _pullbacks(m, rule, sc)
        g = vec(g) if back is None else back
        msg = msg.through(blocks, factors)  # type: ignore[attr-defined]
    return sums


def step_chunk_size(cache: ForwardCache, weight_blocks: bool, view: Chain) -> int:
    """Samples per chunk for per-sample blocks on a step net: about 2^26 elements per chunk.

    Per sample, a step's pull-back holds its output block, its intermediate (n_in n_out) and its
    input block; the exact conv weight blocks add (C_out J)² per sample in their contraction.
    """
    assert cache.steps is not None
    sizes = [sc.x[0].numel() for sc in cache.steps] + [cache.output[0].numel()]
    per_sample = max(a * a + a * c + c * c for a, c in zip(sizes[:-1], sizes[1:]))
    if weight_blocks:
        per_sample = max(per_sample, max(lay.weight.numel() ** 2 for lay in view.layers))
    if per_sample > _SAMPLE_LIMIT:
        raise ValueError(
            f"kind=exact on this net needs per-sample blocks of {max(sizes):,} units ({per_sample:,} elements per "
            f"sample > {_SAMPLE_LIMIT:,}); exact blocks of conv nets are for small nets: use kind=gn, pch1, pch2 "
            "or fisher (their factors never form a block), or smaller inputs"
        )
    return max(1, _CHUNK_ELEMENTS // per_sample)
