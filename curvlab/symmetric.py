"""Products known to be symmetric, computed on their upper triangle and made exactly symmetric.

The curvature recursion (bias blocks W^T B W, Chen et al. Eq. 4b) and the exact inverse's Riccati
sweep (the cost-to-go downdate P − Nᵀ C⁻¹ N, ``docs/exact_inverse.md`` §4) both form symmetric
matrices as products aᵀc. Computing only the blocks on and above the diagonal saves up to 3/8 of
the flops, and writing each off-diagonal panel once as it is and once transposed makes the
result symmetric bit for bit, so that no later pass over the whole matrix is needed to
symmetrise it (a transposed pass over a 1024² block costs ≈ 10× an aligned one on a 2-core CPU).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["symmetrized", "symmetric_product"]


def symmetrized(a: Tensor, scale: float = 1.0) -> Tensor:
    """``scale`` · (a + aᵀ)/2, a new and exactly symmetric matrix (floating-point + commutes)."""
    return (a + a.T).mul_(0.5 * scale)


def symmetric_product(
    a: Tensor,
    c: Tensor,
    *,
    times: tuple[Tensor, Tensor] | None = None,
    scale: float = 1.0,
    base: Tensor | None = None,
    min_width: int = 256,
) -> Tensor:
    """``base + scale · aᵀ c`` (``∘ a₂ᵀ c₂`` with ``times=(a₂, c₂)``) for results known to be symmetric.

    ``a``, ``c`` are (K, n), ``a₂``, ``c₂`` (K₂, n), ``base`` (n, n) or None (zero). The result
    is computed in row panels of width ≥ ``min_width`` (at most 4): panel i holds columns i…
    only, so the GEMMs skip the blocks below the diagonal (5/8 of the flops for 4 panels) and
    only ``base``'s panels on and above the diagonal are read; the Hadamard factor and the
    scale act on the panel, and each panel is written once as it is and once transposed. The
    diagonal tiles are symmetrised, so the result is **exactly** symmetric.
    """
    if base is not None and times is not None:
        raise ValueError("symmetric_product: base and times cannot be combined")
    n = a.shape[1]
    parts = max(1, min(4, n // min_width)) if a.shape[0] >= 64 else 1

    def panel(lo: int, hi: int) -> Tensor:
        """Rows lo:hi, columns lo: of the result, (hi − lo, n − lo)."""
        if base is not None:
            return torch.addmm(base[lo:hi, lo:], a[:, lo:hi].T, c[:, lo:], alpha=scale)
        out = a[:, lo:hi].T @ c[:, lo:]
        if times is not None:
            out.mul_(times[0][:, lo:hi].T @ times[1][:, lo:])
        return out.mul_(scale) if scale != 1 else out

    if parts == 1:
        return symmetrized(panel(0, n))
    edges = [n * i // parts for i in range(parts + 1)]
    out = a.new_empty(n, n)
    for lo, hi in zip(edges, edges[1:]):
        p = panel(lo, hi)
        out[lo:hi, lo:hi] = symmetrized(p[:, : hi - lo])
        if hi < n:
            rest = p[:, hi - lo :]
            out[lo:hi, hi:] = rest
            out[hi:, lo:hi] = rest.T
    return out
