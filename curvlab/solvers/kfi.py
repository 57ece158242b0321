"""KFI: Kronecker-factored inverse with factored Tikhonov damping (Chen et al., Eqs. 12–13).

For layer t, with ``B`` the bias block of the chosen curvature kind, the weight update is

    d_W = −G⁻¹ ∇_W A⁻¹,   A = E[h hᵀ] + π √α I,   G = B + (√α / π) I,

the inverse of ``A ⊗ G`` applied to vec(∇_W) (Eq. 12). ``π`` is the factored-Tikhonov
trace ratio of Martens & Grosse (2015, Section 6.3), π² = (tr A₀ / dim A₀) / (tr B / dim B)
with A₀ the undamped input factor; it is 1 when either trace is not positive (for example
a layer whose curvature vanishes). The kind picks the method: ``fisher`` gives KFAC,
``gn`` KFRA and ``pch1``/``pch2`` PCH-KFI.

**Biases.** The bias is its own block, as in EA-CG's Eq. (10a), with the same damped
factor as the weights: ``d_b = −G⁻¹ ∇_b``. This is Eq. (12) for a weight whose input is the
constant 1 and whose A-factor damping is dropped, so it reuses G's Cholesky factor.

**Wide inputs (Eq. 13).** With ``rank_one_first_layer`` the first layer uses
A = E[h] E[h]ᵀ + π√α I (π from tr A₀ = ‖E[h]‖²), applied with Sherman–Morrison,

    (μμᵀ + c I)⁻¹ = (I − μμᵀ / (c + μᵀμ)) / c,   c = π √α,

so it costs O(n_out n_in) and never forms an (n_in, n_in) matrix. Every other factor is
solved with a Cholesky factorisation (no explicit inverse).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from curvlab.curvature.blocks import LayerCurvature
from curvlab.curvature.options import CurvatureOptions
from curvlab.losses import Loss
from curvlab.nets import MLP
from curvlab.solvers.base import register
from curvlab.solvers.blockwise import BlockSolver

__all__ = ["trace_ratio", "kfi_solve", "KFI"]


def trace_ratio(trace_a: float, dim_a: int, trace_g: float, dim_g: int) -> float:
    """Martens & Grosse's π = sqrt((tr A / dim A) / (tr G / dim G)); 1 if undefined."""
    num, den = trace_a / dim_a, trace_g / dim_g
    if not (num > 0 and den > 0 and math.isfinite(num) and math.isfinite(den)):
        return 1.0
    return math.sqrt(num / den)


def _cholesky(mat: Tensor, what: str) -> Tensor:
    """Lower Cholesky factor; retries in float64 before giving up with a clear message."""
    chol, info = torch.linalg.cholesky_ex(mat)
    if int(info) == 0:
        return chol
    chol, info = torch.linalg.cholesky_ex(mat.double())
    if int(info) != 0:
        raise ValueError(
            f"KFI: the damped factor {what} is not positive definite (Cholesky failed); "
            "use a PSD curvature kind or a larger solver.alpha"
        )
    return chol.to(mat.dtype)


def kfi_solve(
    blocks: Sequence[LayerCurvature], alpha: float, rank_one_first_layer: bool = False, bias: bool = True
) -> tuple[list[Tensor], dict[str, float]]:
    """The KFI direction of Eq. (12) for every layer.

    Args:
        blocks: per-layer curvature, input side first; ``input_cov`` is needed for every
            layer except the first when ``rank_one_first_layer`` is set.
        alpha: damping α > 0 (the damping of each factor is √α scaled by π).
        rank_one_first_layer: use Eq. (13) with Sherman–Morrison for layer 1.
        bias: whether the net has biases (otherwise no bias entries are returned).

    Returns:
        ``[d_W1, d_b1, d_W2, …]`` in ``net.parameters()`` order, and the range of π.
    """
    sqrt_alpha = math.sqrt(alpha)
    d: list[Tensor] = []
    pis: list[float] = []
    for t, blk in enumerate(blocks):
        rank_one = rank_one_first_layer and t == 0
        g0 = blk.bias  # (n_out, n_out)
        if rank_one:
            mu = blk.input_mean  # (n_in,)
            trace_a = float(mu @ mu)
        else:
            if blk.input_cov is None:
                raise ValueError(f"KFI needs input_cov (E[h hᵀ]) for layer {t + 1}")
            trace_a = float(torch.diagonal(blk.input_cov).sum())
        pi = trace_ratio(trace_a, blk.n_in, float(torch.diagonal(g0).sum()), blk.n_out)
        pis.append(pi)

        eye_g = torch.eye(blk.n_out, dtype=g0.dtype, device=g0.device)
        chol_g = _cholesky(g0 + (sqrt_alpha / pi) * eye_g, f"G of layer {t + 1}")
        x = torch.cholesky_solve(blk.grad_weight, chol_g)  # G⁻¹ ∇_W, (n_out, n_in)
        c = pi * sqrt_alpha
        if rank_one:
            # Sherman–Morrison: X (μμᵀ + cI)⁻¹ = (X − (X μ) μᵀ / (c + μᵀμ)) / c.
            xmu = x @ mu  # (n_out,)
            d_w = -(x - torch.outer(xmu, mu) / (c + trace_a)) / c
        else:
            a0 = blk.input_cov
            eye_a = torch.eye(blk.n_in, dtype=a0.dtype, device=a0.device)
            chol_a = _cholesky(a0 + c * eye_a, f"A of layer {t + 1}")
            d_w = -torch.cholesky_solve(x.T, chol_a).T  # X A⁻¹ = (A⁻¹ Xᵀ)ᵀ as A is symmetric
        d.append(d_w)
        if bias:
            d.append(-torch.cholesky_solve(blk.grad_bias[:, None], chol_g)[:, 0])
    return d, {"kfi_pi_min": min(pis), "kfi_pi_max": max(pis)}


@register("kfi")
class KFI(BlockSolver):
    """KFI solver (KFAC / KFRA / PCH-KFI by curvature kind): ``θ ← θ + lr · d``.

    Args:
        net, loss, lr: as every solver.
        curvature: curvature options or their dict; the kind must be PSD (not ``exact``;
            ``gn`` only with a convex loss).
        alpha: damping, 0 < α < 1.
        rank_one_first_layer: Eq. (13) for the first layer (very wide inputs).
        max_input_width: the widest layer input whose (n, n) factor KFI will form.
    """

    psd_required = True

    def __init__(
        self,
        net: MLP,
        loss: Loss,
        lr: float,
        curvature: CurvatureOptions | dict[str, Any] | None = None,
        alpha: float = 0.02,
        rank_one_first_layer: bool = False,
        max_input_width: int = 4096,
    ) -> None:
        super().__init__(net, loss, lr, curvature, alpha)
        if int(max_input_width) != max_input_width or max_input_width < 1:
            raise ValueError(f"solver.max_input_width must be an integer >= 1, got {max_input_width}")
        self.rank_one_first_layer = bool(rank_one_first_layer)
        self.max_input_width = int(max_input_width)
        for t, n_in in enumerate(net.widths[:-1]):
            if n_in <= self.max_input_width or not self.needs_input_cov(t):
                continue
            hint = (
                "set solver.rank_one_first_layer=true (Eq. 13, Sherman–Morrison) or raise solver.max_input_width"
                if t == 0
                else "raise solver.max_input_width or use solver=eacg"
            )
            raise ValueError(
                f"KFI: layer {t + 1} has {n_in} inputs > solver.max_input_width={self.max_input_width}, "
                f"so its ({n_in}, {n_in}) factor E[h hᵀ] is too large; {hint}"
            )

    def needs_input_cov(self, t: int) -> bool:
        return not (self.rank_one_first_layer and t == 0)

    def solve(self, blocks: list[LayerCurvature]) -> tuple[list[Tensor], dict[str, float]]:
        return kfi_solve(blocks, self.alpha, self.rank_one_first_layer, bias=self.net.has_bias)
