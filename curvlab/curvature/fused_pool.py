"""A max-pooling step pulled back together with the padding and element-wise steps in front of it.

DeepOBS's conv nets pool as conv → ReLU → (ZeroPad2d →) MaxPool2d. Step by step, the factor rows U
(b, r, C, H_out, W_out) of the pooled map go back as a scatter into the padded map, a crop of the
padding and a product with σ'(z) on the full map, three passes over r rows of the conv output. The
three Jacobians compose to one scatter (Eq. 4b of Chen et al., first term, per sample):

    U J_pool J_pad diag(σ') = scatter over the windows of (U ⊙ w), w[o] = σ'(z)[idx'[o]] · [idx[o] ∉ pad],

with idx' the pooling's argmax indices moved from the padded map to the unpadded one: σ' and the pad
mask are read at the b·C·H_out·W_out pooled positions, never multiplied into the r rows of the full map.
It is the same product (σ' ∈ {0, 1} for ReLU: bit for bit); it applies where the element-wise step
has no residual term for the kind (ReLU-like σ'' = 0, or a kind that drops it: fisher, gn).

Where σ has ``df_out`` (ReLU, sigmoid, tanh), σ'(z)[idx'] comes from the pooled output h[idx] = σ(z)[idx']
the forward made, the same formula on the same σ(z) (bit for bit), read at idx (no crop needed); a pad entry
reads the pad's 0 there, and where σ'(0) = 0 (ReLU) that zeroes it already, so the mask is not
formed. idx' itself is looked up in a table over the padded positions (``ZeroPad2dRule.crop_indices``).
On cifar10_3c3d at batch 128 this set-up went from ≈ 128 ms to ≈ 15 ms a pass (1 thread).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from curvlab.modules import ElementwiseRule
from curvlab.modules.canonical import Chain
from curvlab.modules.pooling import MaxPool2dRule, ZeroPad2dRule
from curvlab.nets import ForwardCache

__all__ = ["fused_max_pool"]


def fused_max_pool(
    view: Chain, cache: ForwardCache, s: int, keep_residual: bool
) -> tuple[int, Callable[[Tensor], Tensor]] | None:
    """(first fused step, the pull-back of factor rows (b, r, *out_shape) → (b, r, *in_shape)) for a
    ``MaxPool2d`` at step ``s`` with a ``ZeroPad2d`` and/or an element-wise step right in front of it;
    None when nothing fuses. ``keep_residual``: the kind keeps the element-wise residual (PCH, exact),
    so only an activation without one (σ'' = 0: ReLU) fuses."""
    assert cache.steps is not None
    pool, rule = view.steps[s]
    if not isinstance(rule, MaxPool2dRule) or s < 2:
        return None
    idx: Tensor = cache.steps[s].cache  # (b, C, H_out, W_out) into the pool's input map
    in_shape, j = tuple(cache.steps[s].x.shape[1:]), s - 1
    pad, pad_rule = view.steps[j]
    padded = isinstance(pad_rule, ZeroPad2dRule) and min(pad.padding) >= 0  # a crop does not fuse
    act, act_rule = view.steps[j - 1 if padded else j]
    fns = act_rule.bind(act) if isinstance(act_rule, ElementwiseRule) and j - padded > 0 else None
    if fns is not None and keep_residual and fns.d2f is not torch.zeros_like:  # as ``step_backward`` tells it
        fns = None
    if not padded and fns is None:
        return None
    weights, inside = None, None
    if fns is not None and fns.df_out is not None:
        # σ' from the pooled output h[idx] = σ(z)[idx'] (a pad entry reads the pad's 0), gathered from the
        # pool's input (the next step's input could be changed by an in-place module after the pool)
        pooled = cache.steps[s].x.flatten(-2).gather(-1, idx.flatten(-2)).view_as(idx)
        weights = fns.df_out(pooled)
    if padded:
        # σ'(0) = 0 (ReLU) zeroes the pad entries already: the mask would multiply by 1 or 0 again
        mask = weights is None or bool(fns.df_out(weights.new_zeros(())) != 0)  # type: ignore[union-attr,misc]
        idx, inside = pad_rule.crop_indices(pad, idx, tuple(cache.steps[j].x.shape[1:]), mask)  # type: ignore[misc]
        in_shape, j = tuple(cache.steps[j].x.shape[1:]), j - 1
    if fns is not None:
        if weights is None:  # σ' read at the argmaxes moved to the unpadded map
            x = cache.steps[j].x  # (b, C, H, W): the activation's input
            weights = fns.df(x.flatten(-2).gather(-1, idx.flatten(-2))).view_as(idx)
        j -= 1
    if inside is not None:
        weights = inside.to(cache.output.dtype) if weights is None else inside.to(weights.dtype) * weights

    def pull(u: Tensor) -> Tensor:
        return rule.scatter_back(u, idx, weights, in_shape)

    return j + 1, pull
