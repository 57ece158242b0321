"""The rule of ``nn.Conv2d``: z = W ⋆ h + b (HBP Table 1 / BackPACK ``conv2d``; KFC of Grosse & Martens 2016).

With the unfolded input patches U_i = unfold(h_i) (C_in·k_h·k_w, L) of sample i, L = H_out·W_out
output positions, the convolution is a linear layer shared over positions,

    z_i[:, l] = W̃ u_{i,l} + b,   W̃ = W.flatten(1) (C_out, C_in·k_h·k_w),

so ∂z_i/∂h is a fixed sparse matrix (``conv2d`` forward, ``conv2d_input`` transposed), ∂z_i/∂b
broadcasts b over the positions, ∂z_i[c, l]/∂W̃[o, j] = δ_co u_{i,l}[j], and there is no
second-order term (z is linear in h and θ). Layouts: feature maps (…, C, H, W) and output-space
blocks over n_out = C_out·H_out·W_out in ``z.flatten()`` order (channel, then row, then column).

Why not a :class:`~curvlab.modules.base.LayerRule`: those verbs take (b, n) features and fuse the
diagonal Jacobian of the element-wise map in front of the layer into dense per-sample Jacobians
F_i (b, n, n_in), which for a convolution are mostly zeros (C_out H W × C_in H W); ``weight_grad``,
``weight_block`` and ``input_factors`` have no module argument because a Linear's weight
Jacobian is hᵀ ⊗ I, while a convolution's runs through the patches (stride, padding, dilation);
and the Riccati sweep's ``param_*`` verbs need that Kronecker form, which a convolution has only
per position (one row u_{i,l}ᵀ ⊗ I for each of the L positions). :class:`Conv2dRule` is a sibling with verbs
on (b, C, H, W) tensors; the step recursion (``curvature/steps.py``) calls them on "step nets"
(``docs/module_rules.md``, "Wiring convolutions").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_input

from curvlab.curvature.options import KFACType  # defined with the other curvature options
from curvlab.hugepages import scratch
from curvlab.modules.base import ModuleRule, Role, register
from curvlab.symmetric import symmetric_product

__all__ = ["KFACType", "ConvGeometry", "ConvCache", "Conv2dRule", "CONV2D", "block_matvec", "factors_matvec"]

OutMatvec = Callable[[Tensor], Tensor]  # (b, C_out, H_out, W_out) → (b, C_out, H_out, W_out)


@dataclass(frozen=True)
class ConvGeometry:
    """What places a convolution's windows on its input: kernel, stride, dilation, ``F.pad`` pads."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int, int, int]  # (left, right, top, bottom)


@dataclass(frozen=True)
class ConvCache:
    """A convolution's forward cache for one batch: the input only. The patches (KFC's ⟦h⟧, k_h·k_w
    times the input) are cut from it on demand, by the factor A alone; the gradients and block
    products run on the library's convolution kernels."""

    x: Tensor  # (b, C_in, H_in, W_in) the input h
    out_hw: tuple[int, int]  # (H_out, W_out), L = H_out·W_out
    geometry: ConvGeometry

    def windows(self, x: Tensor | None = None) -> Tensor:
        """The patches as a strided view of the padded input, no copy: (C_in, k_h, k_w, b, H_out, W_out);
        of ``x`` (b', C_in, H_in, W_in) in place of the input when given."""
        g = self.geometry
        x = self.x if x is None else x
        xp = F.pad(x, g.pads) if any(g.pads) else x.contiguous()
        sb, sc, sh, sw = xp.stride()
        (dh, dw), (th, tw) = g.dilation, g.stride
        shape = (xp.shape[1], *g.kernel, xp.shape[0], *self.out_hw)
        return xp.as_strided(shape, (sc, dh * sh, dw * sw, sb, th * sh, tw * sw))

    def patch_mean(self) -> Tensor:
        """E_{i,l}[u_{i,l}] (C_in·k_h·k_w,): the windows of the batch-summed input, summed over the positions.
        One pass over the input, not a strided one over the k_h·k_w times larger patches (conv2 of
        cifar10_3c3d: 0.8 ms against 8.8 ms); and closer to the exact mean (float64, against an 80-bit
        sum: ≤ 2.2e-16 of its largest entry, the strided mean 2.4e-15)."""
        w = self.windows(self.x.sum(0, keepdim=True))  # (C_in, k_h, k_w, 1, H_out, W_out)
        return w.sum((3, 4, 5)).flatten() / (self.x.shape[0] * self.out_hw[0] * self.out_hw[1])

    @property
    def patches(self) -> Tensor:
        """(b, C_in·k_h·k_w, L): ``F.unfold`` of the zero-padded input, ``W.flatten(1)`` column order."""
        w = self.windows()
        return w.permute(3, 0, 1, 2, 4, 5).reshape(w.shape[3], -1, self.out_hw[0] * self.out_hw[1])

    def patch_rows(self, slot: str | None = None) -> Tensor:
        """(C_in·k_h·k_w, b·L) contiguous: one strided copy, the layout of the Gram matrix A; with ``slot``
        into that kept work buffer (``hugepages.scratch``: its pages fault in once, not every pass)."""
        w = self.windows()
        shape = (w.shape[0] * w.shape[1] * w.shape[2], w.shape[3] * self.out_hw[0] * self.out_hw[1])
        if slot is None:
            return w.reshape(shape)
        out = scratch(slot, self.x, *shape)
        out.view(w.shape).copy_(w)
        return out


class Conv2dRule(ModuleRule):
    """``nn.Conv2d`` with any stride, padding (int, tuple, "valid", "same"), dilation, bias or not;
    ``groups`` = 1 and ``padding_mode="zeros"`` only."""

    role = Role.LINEAR  # linear in its input, parameters, no residual term

    def check(self, m: nn.Module) -> None:
        if not isinstance(m, nn.Conv2d):
            raise TypeError(f"Conv2dRule needs an nn.Conv2d, got {type(m).__name__}")
        if m.groups != 1:
            raise ValueError(f"{m!r}: groups={m.groups} is not supported; use groups=1 (grouped convolutions are not)")
        if m.padding_mode != "zeros":
            raise ValueError(f"{m!r}: padding_mode={m.padding_mode!r} is not supported; use padding_mode='zeros'")

    def has_bias(self, m: nn.Conv2d) -> bool:
        return m.bias is not None

    # --- geometry -------------------------------------------------------------------------------

    def pads(self, m: nn.Conv2d) -> tuple[int, int, int, int]:
        """Zero padding (left, right, top, bottom) in ``F.pad`` order; "same" pads the odd extra
        element on the right/bottom, as PyTorch does."""
        if isinstance(m.padding, str):
            if m.padding == "valid":
                return 0, 0, 0, 0
            (th, tw) = (d * (k - 1) for d, k in zip(m.dilation, m.kernel_size))  # total padding per dim
            return tw // 2, tw - tw // 2, th // 2, th - th // 2
        ph, pw = m.padding
        return pw, pw, ph, ph

    def out_hw(self, m: nn.Conv2d, in_hw: tuple[int, int]) -> tuple[int, int]:
        """(H_out, W_out) of an input of spatial size ``in_hw``."""
        left, right, top, bottom = self.pads(m)
        padded = (in_hw[0] + top + bottom, in_hw[1] + left + right)
        return tuple(  # type: ignore[return-value]
            (p - d * (k - 1) - 1) // s + 1 for p, d, k, s in zip(padded, m.dilation, m.kernel_size, m.stride)
        )

    def widths(self, m: nn.Conv2d, in_hw: tuple[int, int]) -> tuple[int, int]:
        """(n_in, n_out) = (C_in·H_in·W_in, C_out·H_out·W_out): the flat widths of input and output."""
        ho, wo = self.out_hw(m, in_hw)
        return m.in_channels * in_hw[0] * in_hw[1], m.out_channels * ho * wo

    # --- forward --------------------------------------------------------------------------------

    def forward(self, m: nn.Conv2d, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """z (b, C_out, H_out, W_out) of x (b, C_in, H_in, W_in), with ``weight``/``bias`` in place of
        the module's when given (the reference differentiates through them)."""
        w = m.weight if weight is None else weight
        bb = m.bias if bias is None else bias
        left, right, top, bottom = self.pads(m)
        if left == right and top == bottom:  # the library pads (bit for bit the same z): no padded copy
            return F.conv2d(x, w, bb, m.stride, (top, left), m.dilation)
        return F.conv2d(F.pad(x, self.pads(m)), w, bb, m.stride, 0, m.dilation)

    def forward_cache(self, m: nn.Conv2d, x: Tensor) -> tuple[Tensor, ConvCache]:
        """z and the cache (input, output size, geometry) every backward verb reads."""
        z = self.forward(m, x)  # the library's convolution: ~2x faster than W̃ @ patches on CPU
        geometry = ConvGeometry(tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation), self.pads(m))
        return z, ConvCache(x, (z.shape[2], z.shape[3]), geometry)

    # --- Jacobian products on feature maps (any leading dims) -----------------------------------

    def jac_vec(self, m: nn.Conv2d, v: Tensor) -> Tensor:
        """J v = W ⋆ v for input perturbations v (…, C_in, H_in, W_in) → (…, C_out, H_out, W_out)."""
        lead = v.shape[:-3]
        out = F.conv2d(F.pad(v.reshape(-1, *v.shape[-3:]), self.pads(m)), m.weight, None, m.stride, 0, m.dilation)
        return out.view(*lead, *out.shape[1:])

    def jac_t_vec(self, m: nn.Conv2d, g: Tensor, in_hw: tuple[int, int]) -> Tensor:
        """Jᵀ g (the transposed convolution, ``conv2d_input``): output gradients (…, C_out, H_out, W_out)
        → input gradients (…, C_in, H_in, W_in); ∇_h ξ_i of ∇_z ξ_i (Chen et al., "Layer-wise
        Equations", with W⋆ in place of W)."""
        lead = g.shape[:-3]
        g2 = g.reshape(-1, *g.shape[-3:])
        left, right, top, bottom = self.pads(m)
        if left == right and top == bottom:  # symmetric pads: the library drops them (no copy of a crop)
            size = (g2.shape[0], m.in_channels, *in_hw)
            back = conv2d_input(size, m.weight, g2, m.stride, (top, left), m.dilation)
        else:  # "same" with an odd total: into the padded input, then crop (the pads are constants)
            size = (g2.shape[0], m.in_channels, in_hw[0] + top + bottom, in_hw[1] + left + right)
            back = conv2d_input(size, m.weight, g2, m.stride, 0, m.dilation)
            back = back[:, :, top : top + in_hw[0], left : left + in_hw[1]]
        return back.reshape(*lead, *back.shape[1:])

    def backward(
        self, m: nn.Conv2d, g: Tensor, cache: ConvCache, need_input: bool = True
    ) -> tuple[Tensor | None, Tensor, Tensor | None]:
        """(Jᵀ g or None, Σ_i ∇_W ξ_i, Σ_i ∇_b ξ_i or None) of output gradients g (b, C_out, H_out, W_out)
        in one call of the library's convolution backward, as autograd makes it for a gradient step
        (the weight part without the patches: ``weight_grad``)."""
        left, right, top, bottom = cache.geometry.pads
        symmetric = left == right and top == bottom
        x = cache.x if symmetric else F.pad(cache.x, cache.geometry.pads)
        bias = [m.out_channels] if m.bias is not None else None
        mask = (need_input, True, m.bias is not None)
        back, gw, gb = torch.ops.aten.convolution_backward(
            g, x, m.weight, bias, m.stride, (top, left) if symmetric else (0, 0), m.dilation, False, (0, 0), 1, mask
        )
        if back is not None and not symmetric:  # "same" with an odd total: crop the pads (constants)
            back = back[:, :, top : top + cache.x.shape[2], left : left + cache.x.shape[3]]
        return back, gw, gb

    def jac_t_factors(self, m: nn.Conv2d, factors: Tensor, in_hw: tuple[int, int]) -> Tensor:
        """Per-sample factors U_i (b, r, C_out, H_out, W_out) ↦ U_i J (b, r, C_in, H_in, W_in): the
        Fisher/GN factor message (``SampleFactors``), one transposed convolution for all b·r rows."""
        return self.jac_t_vec(m, factors, in_hw)

    def jac_t_block(self, m: nn.Conv2d, block: Tensor, in_hw: tuple[int, int]) -> Tensor:
        """Jᵀ H J of output-space blocks (…, n_out, n_out) → (…, n_in, n_in), exactly symmetric:
        Eq. (4b) of Chen et al., first term, for per-sample blocks (b, n, n) or a batch mean (n, n)
        (the Jacobian is the same for every sample, so both are exact)."""
        lead, n_out = block.shape[:-2], block.shape[-1]
        ho, wo = self.out_hw(m, in_hw)
        fmap = (m.out_channels, ho, wo)
        hj = self.jac_t_vec(m, block.reshape(*lead, n_out, *fmap), in_hw)  # (…, n_out, C_in, H, W): rows of H J
        hj = hj.flatten(-3).transpose(-1, -2)  # (…, n_in, n_out) = (H J)ᵀ = Jᵀ H
        out = self.jac_t_vec(m, hj.reshape(*hj.shape[:-1], *fmap), in_hw).flatten(-3)  # (…, n_in, n_in)
        return 0.5 * (out + out.transpose(-1, -2))

    # --- the parameters: gradients, Jacobian products --------------------------------------------

    def param_jvp(self, m: nn.Conv2d, cache: ConvCache, dw: Tensor, db: Tensor | None = None) -> Tensor:
        """J_θ,i (dW, db) per sample: (b, C_out, H_out, W_out) = dW ⋆ h_i + db."""
        geo = cache.geometry
        left, right, top, bottom = geo.pads
        if left == right and top == bottom:  # the library pads (no copy of the input)
            return F.conv2d(cache.x, dw.view_as(m.weight), db, geo.stride, (top, left), geo.dilation)
        return F.conv2d(F.pad(cache.x, geo.pads), dw.view_as(m.weight), db, geo.stride, 0, geo.dilation)

    def weight_grad(self, m: nn.Conv2d, g: Tensor, cache: ConvCache) -> Tensor:
        """Σ_i ∇_W ξ_i = Σ_i Σ_l g_{i,l} u_{i,l}ᵀ of output gradients g (b, C_out, H_out, W_out), in W's shape
        (the transposed-Jacobian product of the weight, J_θᵀ g): the library's weight gradient kernel,
        which never forms the patches."""
        return self.backward(m, g, cache, need_input=False)[1]

    def bias_grad(self, g: Tensor) -> Tensor:
        """Σ_i ∇_b ξ_i = Σ_i Σ_l g_{i,l} (C_out,): ∂z/∂b broadcasts b over the positions."""
        return g.sum((0, 2, 3))

    # --- exact blocks (small layers: tests and the Hessian-error logger) --------------------------

    def bias_block(self, m: nn.Conv2d, blocks: Tensor, scale: float = 1.0) -> Tensor:
        """``scale`` · Σ_i Sᵀ H_i S of per-sample output blocks (b, n_out, n_out) in ``z.flatten()`` order,
        S = ∂z/∂b: the sums over both positions, Σ_l Σ_l' H_i[(c, l), (c', l')], (C_out, C_out)."""
        hv = self._split(m, blocks)  # (b, C_out, L, C_out, L)
        return self._sym(torch.einsum("bcldm->cd", hv) * scale)

    def weight_block(
        self, m: nn.Conv2d, blocks: Tensor, cache: ConvCache, scale: float = 1.0, bias: bool = False
    ) -> Tensor:
        """``scale`` · Σ_i J_θ,iᵀ H_i J_θ,i (exact: z is linear in θ) in row-major ``W.flatten()`` order:
        [(o, j), (p, k)] = Σ_i Σ_{l,l'} H_i[(o, l), (p, l')] u_{i,l}[j] u_{i,l'}[k]. With ``bias`` the
        joint block of W̃ = [W.flatten(1), b] (patches with a ones row), row-major."""
        u = self._augmented(cache.patches, bias)  # (b, J, L)
        hv = self._split(m, blocks)  # (b, C_out, L, C_out, L)
        w = torch.einsum("bolpm,bjl,bkm->ojpk", hv, u, u * scale)  # (C_out, J, C_out, J)
        p = m.out_channels * u.shape[1]
        return self._sym(w.reshape(p, p))

    # --- Kronecker factors of the weight block (Fisher / GN) --------------------------------------

    def kron_factors(
        self, cache: ConvCache, factors: Tensor, approx: KFACType | str = KFACType.EXPAND,
        bias: bool = True, scale: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(A, G) with G ⊗ A ≈ the block of W̃ = [W.flatten(1), b] (row-major; ``bias`` False: W only).

        ``factors`` (b, r, C_out, H_out, W_out) are the per-sample output-gradient factors U_i of the
        recursion's ``SampleFactors`` (U_iᵀ U_i the sample's GN/Fisher output block; rows g_r).
        ``scale`` defaults to 1/b (batch means, ``KFACType`` for the formulas): A (J, J) with J =
        C_in·k_h·k_w (+1 with ``bias``), G (C_out, C_out). The reduce G is exactly the KFLR/KFAC bias
        block; so is the expand G when the positions' gradients are uncorrelated (KFC's SUD).
        """
        approx = KFACType(approx)
        s = 1.0 / factors.shape[0] if scale is None else scale
        reduce_g, expand_g = self.out_grams(factors, None, s)
        a = self._input_gram(cache, approx, s, bias)
        return a, (expand_g if approx is KFACType.EXPAND else reduce_g)

    def input_factors(
        self, cache: ConvCache, approx: KFACType | str, cov: bool
    ) -> tuple[Tensor, Tensor | None]:
        """The input side of the weight block W.flatten(1) (no ones row: the bias system is separate):
        the patch mean E_{i,l}[u] (J,), the conv analogue of E[h] in Eq. (11b) (the same in both
        conventions), and with ``cov`` the factor A (J, J) of ``approx`` (the analogue of Eq. 11a)."""
        a = self._input_gram(cache, KFACType(approx), 1.0 / cache.x.shape[0], False) if cov else None
        return cache.patch_mean(), a

    def out_grams(
        self, factors: Tensor, signs: Tensor | None, scale: float, expand: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """(reduce G, expand G) of per-sample factors U_i (b, r, C_out, H, W) with row signs s (b, r)
        or None (all +1): ``scale`` · Σ_i Σ_r s_ir (Σ_l g_{r,l})(Σ_l g_{r,l})ᵀ, the exact bias block of
        the factors' kind, and ``scale`` · Σ_i Σ_r s_ir Σ_l g_{r,l} g_{r,l}ᵀ (KFC's G), (C_out, C_out);
        ``expand`` False: None for the latter (its b·r·L-row product skipped)."""
        g = factors.flatten(3).flatten(0, 1)  # (b r, C_out, L): no copy
        w = g if signs is None else g * signs.reshape(-1, 1, 1)
        gs = g.sum(2)  # (b r, C_out) summed over positions
        ws = gs if signs is None else w.sum(2)
        reduce_g = ws.T @ gs * scale
        if not expand:
            return self._sym(reduce_g), None
        if g.shape[2] < g.shape[1]:  # few positions (L < C_out): one GEMM over (b r L) rows beats b·r tiny ones
            rows = g.transpose(1, 2).reshape(-1, g.shape[1])  # (b r L, C_out): a permuted copy
            signed = rows if signs is None else w.transpose(1, 2).reshape(-1, g.shape[1])
            expand_g = signed.T @ rows * scale
        else:
            expand_g = torch.bmm(w, g.transpose(1, 2)).sum(0) * scale  # (b r) products, no permuted copy
        return self._sym(reduce_g), self._sym(expand_g)

    def position_block(self, m: nn.Conv2d, blocks: Tensor, scale: float = 1.0) -> Tensor:
        """KFC's (expand) G of per-sample output blocks (b, n_out, n_out): ``scale`` · Σ_i Σ_l
        H_i[(c, l), (c', l)], the same position on both sides, (C_out, C_out)."""
        hv = self._split(m, blocks).diagonal(dim1=2, dim2=4)  # (b, C_out, C_out, L)
        return self._sym(hv.sum((0, 3)) * scale)

    @staticmethod
    def _input_gram(cache: ConvCache, approx: KFACType, s: float, bias: bool) -> Tensor:
        """A of the patches u_{i,l} (with a ones row if ``bias``): expand E_i[(1/L) Σ_l u_l u_lᵀ], reduce
        E_i[ū ūᵀ] (times ``s`` b); on its upper triangle (``symmetric_product``), exactly symmetric."""
        if approx is KFACType.EXPAND:
            u = cache.patch_rows("conv_patches")  # (J, b L): one GEMM over all positions; a temporary
            scale = s / (cache.out_hw[0] * cache.out_hw[1])
        else:
            w = cache.windows()
            u, scale = w.mean((4, 5)).reshape(-1, w.shape[3]), s  # (J, b) patches averaged over positions
        if bias:
            u = torch.cat([u, u.new_ones(1, u.shape[1])])
        return symmetric_product(u.T, u.T, scale=scale)

    # --- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _augmented(patches: Tensor, bias: bool) -> Tensor:
        """Patches with a ones row for the bias (ũ = (u, 1)), or as they are."""
        if not bias:
            return patches
        return torch.cat([patches, patches.new_ones(patches.shape[0], 1, patches.shape[2])], 1)

    @staticmethod
    def _split(m: nn.Conv2d, blocks: Tensor) -> Tensor:
        """(b, n_out, n_out) → (b, C_out, L, C_out, L)."""
        b, n = blocks.shape[:2]
        c = m.out_channels
        return blocks.view(b, c, n // c, c, n // c)

    @staticmethod
    def _sym(a: Tensor) -> Tensor:
        return 0.5 * (a + a.T)


CONV2D = Conv2dRule()
register(nn.Conv2d, CONV2D)


def factors_matvec(factors: Tensor, signs: Tensor | None = None) -> OutMatvec:
    """The per-sample output blocks H_i = U_iᵀ diag(s_i) U_i of factors U (b, r, *shape) with row signs
    s (b, r) (None: all +1) as a product v_i ↦ U_iᵀ (s_i ⊙ U_i v_i) on (b, *shape), without forming them."""
    u = factors.flatten(2)  # (b, r, n)

    def mv(v: Tensor) -> Tensor:
        proj = torch.einsum("brn,bn->br", u, v.flatten(1))
        if signs is not None:
            proj = proj * signs
        return torch.einsum("brn,br->bn", u, proj).view_as(v)

    return mv


def block_matvec(
    rule: Conv2dRule, m: nn.Conv2d, cache: ConvCache, out_matvec: OutMatvec, dw: Tensor, db: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The parameter block times (dW, db) without forming the block: ``scale`` · Σ_i J_θ,iᵀ H_i J_θ,i.

    ``out_matvec`` applies the output-space blocks per sample, (b, C_out, H_out, W_out) → same: the
    exact H_i, factors (:func:`factors_matvec`), or one batch-mean H̄ (GN, PCH-1/2) applied to every
    sample, which gives E_i[J_θ,iᵀ H̄ J_θ,i] (HBP's matrix-free curvature products, BackPACK's
    ``curvmatprod``; for ``nn.Linear`` this is H̄ ⊗ E[h hᵀ], Eq. 11a of Chen et al.). What EA-CG's CG
    multiplies with. ``scale`` defaults to 1/b. Returns (weight part in W's shape, bias part or None).
    """
    s = 1.0 / cache.x.shape[0] if scale is None else scale
    hv = out_matvec(rule.param_jvp(m, cache, dw, db))  # (b, C_out, H_out, W_out); s goes on the small results
    _, gw, gb = rule.backward(m, hv, cache, need_input=False)
    if db is not None and gb is None:  # a bias part asked of a conv without bias: J_bᵀ sums the positions
        gb = rule.bias_grad(hv)
    return gw.mul_(s), (None if db is None else gb.mul_(s))
