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
    in_shape, weights, j = tuple(cache.steps[s].x.shape[1:]), None, s - 1
    pad, pad_rule = view.steps[j]
    if isinstance(pad_rule, ZeroPad2dRule):
        cropped = pad_rule.crop_indices(pad, idx, tuple(cache.steps[j].x.shape[1:]))
        if cropped is not None:
            idx, inside = cropped
            weights, in_shape, j = inside.to(cache.output.dtype), tuple(cache.steps[j].x.shape[1:]), j - 1
    act, act_rule = view.steps[j]
    if j > 0 and isinstance(act_rule, ElementwiseRule):
        fns = act_rule.bind(act)
        x = cache.steps[j].x  # (b, C, H, W): the activation's input, σ' read at the indices only
        if not keep_residual or fns.d2f is torch.zeros_like:  # as ``step_backward`` tells it
            d1 = fns.df(x.flatten(-2).gather(-1, idx.flatten(-2))).view_as(idx)
            weights, j = (d1 if weights is None else weights * d1), j - 1
    if j == s - 1:
        return None

    def pull(u: Tensor) -> Tensor:
        return rule.scatter_back(u, idx, weights, in_shape)

    return j + 1, pull
