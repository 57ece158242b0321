"""Rules of the parameter-free steps of a conv net: pooling, zero padding, flattening (HBP Table 1).

Each of these maps the per-sample input h_i (shape ``in_shape`` = (C, H, W), or (n,)) to
z_i = P_i h_i with a sparse 0/1 or averaging matrix P_i and no parameters:

* ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``ZeroPad2d``, ``Flatten``: z = P h with a fixed P, the
  same for every sample (z is linear in h), so J = P and there is no second-order residual;
* ``MaxPool2d``: P_i selects the argmax of every window of sample i (PyTorch's ``indices``),
  piecewise linear, so no residual almost everywhere (HBP Table 1, "max-pooling").

The verbs apply P and Pᵀ with the library's own kernels (``avg_pool2d``, ``conv_transpose2d``,
``gather``/``scatter_add``, ``F.pad``, reshapes), batched over samples b and rows r, never
forming P. They pull the recursion's quantities back through the step, Eq. (4b) of Chen et al.
without its second term: per-sample vectors (Jᵀ g), per-sample factors (U_i J_i) and per-sample
blocks (J_iᵀ H_i J_i). ``docs/module_rules.md`` ("The AvgPool2d walk-through") explains the
pattern. Flatten is not put in :data:`~curvlab.modules.base.RULES` (its identity rule there
keeps MLPs on today's path); :func:`parameter_free_rule` gives the step rule of any module.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from curvlab.modules.base import RULES, ModuleRule, Role, register

__all__ = [
    "ParameterFreeRule", "FixedLinearRule", "AvgPool2dRule", "AdaptiveAvgPool2dRule", "MaxPool2dRule",
    "ZeroPad2dRule", "FlattenRule", "IdentityStepRule", "AVG_POOL2D", "ADAPTIVE_AVG_POOL2D", "MAX_POOL2D",
    "ZERO_PAD2D", "FLATTEN", "IDENTITY_STEP", "parameter_free_rule",
]

Shape = tuple[int, ...]  # per-sample shape: (C, H, W) or (n,)


class ParameterFreeRule(ModuleRule):
    """A step z_i = P_i h_i without parameters or residual; shapes per sample, b samples, r rows.

    Subclasses give :meth:`jac_factors` and :meth:`jac_t_factors`; the other verbs follow.
    ``sample_independent``: P is the same for every sample (then a batch-mean block pulls back
    exactly as one sample, ``jac_t_blocks(m, H̄[None], None, in_shape)[0]``).
    """

    role: ClassVar[Role] = Role.PARAMETER_FREE
    sample_independent: ClassVar[bool] = False
    maps: ClassVar[bool] = True  # needs (C, H, W) per sample

    def out_shape(self, m: nn.Module, in_shape: Shape) -> Shape:
        """The per-sample output shape, PyTorch's own (the module on a ``meta`` tensor, no data)."""
        if self.maps and len(in_shape) != 3:
            raise ValueError(f"{m!r} needs feature maps (C, H, W) per sample, got {tuple(in_shape)}; "
                             "put it before the nn.Flatten")
        try:
            return tuple(m(torch.empty(1, *in_shape, device="meta")).shape[1:])
        except RuntimeError as e:  # e.g. "Output size is too small"
            raise ValueError(f"{m!r} does not fit per-sample input {tuple(in_shape)}: {e}") from None

    def forward(self, m: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(z, cache) of the input x (b, *in_shape): the module's own output; cache None (P fixed)."""
        return m(x), None

    @abstractmethod
    def jac_factors(self, m: nn.Module, V: Tensor, cache: Tensor | None) -> Tensor:
        """J_i V_i: rows (b, r, *in_shape) → (b, r, *out_shape), per sample i."""

    @abstractmethod
    def jac_t_factors(self, m: nn.Module, U: Tensor, cache: Tensor | None, in_shape: Shape) -> Tensor:
        """U_i J_i: factor rows (b, r, *out_shape) → (b, r, *in_shape), per sample i (KFAC's g rows)."""

    def jac_vec(self, m: nn.Module, v: Tensor, cache: Tensor | None) -> Tensor:
        """J_i v_i: (b, *in_shape) → (b, *out_shape)."""
        return self.jac_factors(m, v.unsqueeze(1), cache).squeeze(1)

    def jac_t_vec(self, m: nn.Module, g: Tensor, cache: Tensor | None, in_shape: Shape) -> Tensor:
        """J_iᵀ g_i: the per-sample gradients (b, *out_shape) → (b, *in_shape)."""
        return self.jac_t_factors(m, g.unsqueeze(1), cache, in_shape).squeeze(1)

    def jac_t_blocks(self, m: nn.Module, H: Tensor, cache: Tensor | None, in_shape: Shape) -> Tensor:
        """J_iᵀ H_i J_i of symmetric per-sample blocks (b, n_out, n_out) → (b, n_in, n_in), exactly
        symmetric: Eq. (4b) of Chen et al., first term. The rows of H_i through :meth:`jac_t_factors`
        give H_i J_i, then its columns (the rows of its transpose) give J_iᵀ H_i J_i."""
        b, n_out = H.shape[:2]
        out_shape = self.out_shape(m, in_shape)
        hj = self.jac_t_factors(m, H.reshape(b, n_out, *out_shape), cache, in_shape).flatten(2)  # (b, n_out, n_in)
        n_in = hj.shape[2]
        jhj = self.jac_t_factors(m, hj.transpose(1, 2).reshape(b, n_in, *out_shape), cache, in_shape).flatten(2)
        return 0.5 * (jhj + jhj.transpose(1, 2))


class FixedLinearRule(ParameterFreeRule):
    """z = P h with P the same for every sample: J V is the module applied to all b·r rows at once."""

    sample_independent: ClassVar[bool] = True

    def jac_factors(self, m: nn.Module, V: Tensor, cache: Tensor | None = None) -> Tensor:
        z = m(V.reshape(-1, *V.shape[2:]))  # (b r, *out_shape)
        return z.reshape(*V.shape[:2], *z.shape[1:])


class AvgPool2dRule(FixedLinearRule):
    """``nn.AvgPool2d``, every setting (kernel, stride, padding, ceil_mode, count_include_pad,
    divisor_override): z[o] = (1/d_o) Σ_{j ∈ window(o)} h[j], over the real (not padded) j.

    Pᵀ u spreads u[o]/d_o over window o: a transposed convolution with a ones kernel per channel,
    which drops the padding (``padding``) and restores the input size (``output_padding``, a crop
    for ceil_mode). The divisors d_o come from pooling a map of ones twice,
    once with the module (real count / d_o) and once summing (real count): so ceil_mode's clipped
    last windows and ``count_include_pad`` are PyTorch's by construction.
    """

    def check(self, m: nn.Module) -> None:
        if not isinstance(m, nn.AvgPool2d):
            raise TypeError(f"AvgPool2dRule needs an nn.AvgPool2d, got {type(m).__name__}")

    def inverse_divisors(self, m: nn.AvgPool2d, in_hw: tuple[int, int], like: Tensor) -> Tensor:
        """1/d_o per output position, (H_out, W_out)."""
        ones = like.new_ones(1, 1, *in_hw)
        mean = m(ones)  # (#real in window) / d_o
        real = F.avg_pool2d(ones, m.kernel_size, m.stride, m.padding, m.ceil_mode, True, divisor_override=1)
        return (mean / real)[0, 0]

    def jac_t_factors(self, m: nn.AvgPool2d, U: Tensor, cache: Tensor | None, in_shape: Shape) -> Tensor:
        (kh, kw), (sh, sw), (ph, pw) = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
        c, h, w = in_shape
        ho, wo = U.shape[-2:]
        u = U * self.inverse_divisors(m, (h, w), U)  # (b, r, C, H_out, W_out)
        ones = U.new_ones(c, 1, kh, kw)  # per channel (groups=C: 4x faster on CPU than C maps of one channel)
        # the transposed convolution drops the padding itself; the rows/columns the windows never reach
        # (at most stride − 1, floor mode) come as output_padding, those ceil_mode's last window adds
        # beyond the input are cut off below (a view)
        extra = (h - ((ho - 1) * sh - 2 * ph + kh), w - ((wo - 1) * sw - 2 * pw + kw))
        back = F.conv_transpose2d(u.reshape(-1, c, ho, wo), ones, stride=(sh, sw), padding=(ph, pw), groups=c,
                                  output_padding=(max(extra[0], 0), max(extra[1], 0)))
        return back[..., :h, :w].reshape(*U.shape[:2], *in_shape)


class AdaptiveAvgPool2dRule(FixedLinearRule):
    """``nn.AdaptiveAvgPool2d``: window o of a side of length n spans [⌊o n/m⌋, ⌈(o+1) n/m⌉) of the
    m outputs (PyTorch's rule; windows may overlap), so P = A_h ⊗ A_w with the small 1-D averaging
    matrices A (m, n) and Pᵀ u = A_hᵀ u A_w: two matrix products per map, P never formed."""

    def check(self, m: nn.Module) -> None:
        if not isinstance(m, nn.AdaptiveAvgPool2d):
            raise TypeError(f"AdaptiveAvgPool2dRule needs an nn.AdaptiveAvgPool2d, got {type(m).__name__}")

    @staticmethod
    def averaging(n_out: int, n: int, like: Tensor) -> Tensor:
        """A (n_out, n): row o averages window o of a side of length n."""
        o = torch.arange(n_out, device=like.device)
        start, end = (o * n) // n_out, ((o + 1) * n + n_out - 1) // n_out  # (n_out,) each
        j = torch.arange(n, device=like.device)
        inside = (j >= start[:, None]) & (j < end[:, None])  # (n_out, n)
        return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]

    def jac_t_factors(self, m: nn.AdaptiveAvgPool2d, U: Tensor, cache: Tensor | None, in_shape: Shape) -> Tensor:
        (ho, wo), (h, w) = U.shape[-2:], in_shape[1:]
        a_h, a_w = self.averaging(ho, h, U), self.averaging(wo, w, U)
        return a_h.T @ U @ a_w  # (b, r, C, H, W)


class MaxPool2dRule(ParameterFreeRule):
    """``nn.MaxPool2d`` (kernel, stride, padding, dilation, ceil_mode): z_i[o] = h_i[idx_i[o]] with the
    forward's argmax indices (into H·W per channel; padding is −∞, never chosen). J_i V gathers at
    the indices, U J_i scatter-adds (overlapping windows can pick one input twice). Ties are broken
    as PyTorch's indices break them (on CPU: the first maximum in row-major window order), so the
    Jacobian is the one autograd uses. No residual almost everywhere (piecewise linear)."""

    def check(self, m: nn.Module) -> None:
        if not isinstance(m, nn.MaxPool2d):
            raise TypeError(f"MaxPool2dRule needs an nn.MaxPool2d, got {type(m).__name__}")
        if m.return_indices:
            raise ValueError(f"{m!r}: return_indices=True is not supported (the net must pass a tensor on); "
                             "use nn.MaxPool2d(..., return_indices=False)")

    def forward(self, m: nn.MaxPool2d, x: Tensor) -> tuple[Tensor, Tensor]:
        """(z, indices (b, C, H_out, W_out)): the argmax of every window, the Jacobian's cache."""
        return F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode,
                            return_indices=True)

    @staticmethod
    def _index(idx: Tensor | None, rows: Tensor) -> Tensor:
        """The indices (b, C, L) expanded over the r rows of ``rows`` (b, r, …): (b, r, C, L)."""
        if idx is None:
            raise ValueError("MaxPool2dRule needs the indices from its forward() as the cache")
        b, c = idx.shape[:2]
        return idx.reshape(b, 1, c, -1).expand(b, rows.shape[1], c, -1)

    def jac_factors(self, m: nn.MaxPool2d, V: Tensor, cache: Tensor | None) -> Tensor:
        idx = self._index(cache, V)
        z = V.flatten(-2).gather(-1, idx)  # (b, r, C, H_out·W_out)
        return z.view(*idx.shape[:3], *cache.shape[-2:])  # type: ignore[union-attr]

    def jac_t_factors(self, m: nn.MaxPool2d, U: Tensor, cache: Tensor | None, in_shape: Shape) -> Tensor:
        return self.scatter_back(U, cache, None, in_shape)

    def scatter_back(self, U: Tensor, idx: Tensor | None, weights: Tensor | None, in_shape: Shape) -> Tensor:
        """U_i J_i with every window's entry weighted: (U ⊙ w)[o] added at idx[o], (b, r, C, H_out, W_out)
        → (b, r, *in_shape); ``weights`` (b, C, H_out, W_out) or None (all 1). A diagonal map D in front
        of the step (U J D) is ``weights`` = D read at the indices: on the pooled map, 1/(stride²) the work."""
        index = self._index(idx, U)
        back = U.new_zeros(*index.shape[:3], in_shape[1] * in_shape[2])  # (b, r, C, H·W)
        src = U.flatten(-2) if weights is None else (U * weights[:, None]).flatten(-2)
        return back.scatter_add_(-1, index, src).view(*U.shape[:2], *in_shape)


class ZeroPad2dRule(FixedLinearRule):
    """``nn.ZeroPad2d`` (left, right, top, bottom; negative entries crop): P inserts zeros, Pᵀ crops
    them again, ``F.pad`` with the negated padding (and vice versa for crops). A pure crop is a view:
    the next step's pull-back (an element-wise σ' product, a scatter) reads it in place of a copy."""

    def check(self, m: nn.Module) -> None:
        if not isinstance(m, nn.ZeroPad2d):
            raise TypeError(f"ZeroPad2dRule needs an nn.ZeroPad2d, got {type(m).__name__}")

    def crop_indices(
        self, m: nn.ZeroPad2d, idx: Tensor, in_shape: Shape, mask: bool = True
    ) -> tuple[Tensor, Tensor | None] | None:
        """Flat indices into the padded map (…) → (indices into the input map, inside mask or None without
        ``mask``), or None for a crop (negative padding). An index in the padding maps to 0 with mask
        False: Pᵀ drops it. Both are looked up in tables over the H'·W' padded positions (one ``take``
        each; a floor division and a remainder per index cost ≈ 8× that on 1.6 M indices)."""
        left, right, top, bottom = m.padding
        if min(m.padding) < 0:
            return None
        h, w = in_shape[-2:]
        row = torch.arange(-top, h + bottom, device=idx.device)[:, None]  # (H', 1) rows of the input map
        col = torch.arange(-left, w + right, device=idx.device)  # (W',)
        inside = ((row >= 0) & (row < h) & (col >= 0) & (col < w)).flatten()  # (H' W',)
        table = torch.where(inside, (row * w + col).flatten(), 0)
        return table.take(idx), (inside.take(idx) if mask else None)

    def jac_t_factors(self, m: nn.ZeroPad2d, U: Tensor, cache: Tensor | None, in_shape: Shape) -> Tensor:
        left, right, top, bottom = m.padding
        if min(m.padding) >= 0:
            return U[..., top : U.shape[-2] - bottom, left : U.shape[-1] - right]
        return F.pad(U, tuple(-p for p in m.padding))


class FlattenRule(FixedLinearRule):
    """``nn.Flatten(start_dim=1, end_dim=-1)`` of maps: a reshape, P = I in ``z.flatten()`` order;
    on (n,) features the identity."""

    maps: ClassVar[bool] = False

    def check(self, m: nn.Module) -> None:
        if not isinstance(m, nn.Flatten):
            raise TypeError(f"FlattenRule needs an nn.Flatten, got {type(m).__name__}")
        if (m.start_dim, m.end_dim) != (1, -1):
            raise ValueError(f"{m!r}: only nn.Flatten(start_dim=1, end_dim=-1) is supported on feature maps "
                             "(it keeps the batch dimension and flattens the rest)")

    def out_shape(self, m: nn.Module, in_shape: Shape) -> Shape:
        return (int(torch.Size(in_shape).numel()),)

    def jac_factors(self, m: nn.Module, V: Tensor, cache: Tensor | None = None) -> Tensor:
        return V.flatten(2)

    def jac_t_factors(self, m: nn.Module, U: Tensor, cache: Tensor | None, in_shape: Shape) -> Tensor:
        return U.reshape(*U.shape[:2], *in_shape)


class IdentityStepRule(FixedLinearRule):
    """The identity-like modules of ``identity.py`` (Identity, eval Dropout) as a step of a conv net."""

    maps: ClassVar[bool] = False

    def out_shape(self, m: nn.Module, in_shape: Shape) -> Shape:
        return tuple(in_shape)

    def jac_factors(self, m: nn.Module, V: Tensor, cache: Tensor | None = None) -> Tensor:
        return V

    def jac_t_factors(self, m: nn.Module, U: Tensor, cache: Tensor | None, in_shape: Shape) -> Tensor:
        return U


AVG_POOL2D, ADAPTIVE_AVG_POOL2D, MAX_POOL2D = AvgPool2dRule(), AdaptiveAvgPool2dRule(), MaxPool2dRule()
ZERO_PAD2D, FLATTEN, IDENTITY_STEP = ZeroPad2dRule(), FlattenRule(), IdentityStepRule()

register(nn.AvgPool2d, AVG_POOL2D)
register(nn.AdaptiveAvgPool2d, ADAPTIVE_AVG_POOL2D)
register(nn.MaxPool2d, MAX_POOL2D)
register(nn.ZeroPad2d, ZERO_PAD2D)


def parameter_free_rule(m: nn.Module) -> ParameterFreeRule | None:
    """The step rule of ``m`` in a conv net, after its instance check, or None for a module with
    parameters or an element-wise one (their rules are in :data:`RULES`).

    ``nn.Flatten`` gets :data:`FLATTEN` (in :data:`RULES` it keeps its identity rule, which MLPs use),
    ``nn.Identity`` and eval ``nn.Dropout`` get :data:`IDENTITY_STEP`.
    """
    if type(m) is nn.Flatten:
        rule: ModuleRule | None = FLATTEN
    else:
        rule = RULES.get(type(m))
        if rule is not None and rule.role is Role.IDENTITY:
            rule.check(m)  # e.g. Dropout in training mode
            rule = IDENTITY_STEP
    if not isinstance(rule, ParameterFreeRule):
        return None
    rule.check(m)
    return rule
