"""What the curvature recursion returns for each linear layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

__all__ = ["LayerCurvature", "drop_absent_biases"]


@dataclass
class LayerCurvature:
    """Curvature of one linear layer t (input side first in the returned list).

    Attributes:
        bias: (n_t, n_t) batch-mean curvature block for b^t (for ``exact``: the true Hessian
            block; the block of the pre-activation z^t when the net has no biases).
        input_mean: (n_{t-1},) E[h^{t-1}], the rank-one weight factor of Eq. (11b).
        input_cov: (n_{t-1}, n_{t-1}) E[h^{t-1} h^{t-1}ᵀ] (Eq. 11a), or None when not requested.
        grad_bias: (n_t,) batch-mean gradient with respect to b^t (z^t without biases).
        grad_weight: (n_t, n_{t-1}) batch-mean gradient with respect to W^t; None where
            ``grad_samples`` was requested instead (then it is ``grad_samplesᵀ h``).
        weight: (n_t n_{t-1}, n_t n_{t-1}) exact weight block E_i[(h hᵀ) ⊗ H_i] in
            ``W.flatten()`` (row-major) order, only on request for small nets; else None.
        has_bias: whether the layer has a bias (without one, ``bias`` and ``grad_bias`` are those of z^t).
        grad_samples: (B, n_t) the samples' shares ∇_{b^t} ξ_i / B of ``grad_bias`` (their sum), on
            request only (``curvature(..., grad_samples=...)``); else None.
    """

    bias: Tensor
    input_mean: Tensor
    input_cov: Tensor | None
    grad_bias: Tensor
    grad_weight: Tensor | None
    weight: Tensor | None = None
    has_bias: bool = True
    grad_samples: Tensor | None = None

    @property
    def n_out(self) -> int:
        return self.bias.shape[0]

    @property
    def n_in(self) -> int:
        return self.input_mean.shape[0]


def drop_absent_biases(d: list[Tensor], blocks: Sequence[LayerCurvature]) -> list[Tensor]:
    """A direction ``[d_W1, d_b1, d_W2, d_b2, …]`` with a bias entry for every layer, without the
    entries of layers that have no bias (so it is in ``net.parameters()`` order again).

    Block solvers solve the bias (z^t) system of every layer when any layer has a bias; their
    bias and weight systems are separate (EA-CG Eq. 10, KFI Eq. 12), so the weight entries do
    not depend on it. A direction without bias entries (no layer has one) is returned as is.
    """
    if len(d) != 2 * len(blocks) or all(b.has_bias for b in blocks):
        return d
    return [e for blk, w, b in zip(blocks, d[0::2], d[1::2]) for e in ((w, b) if blk.has_bias else (w,))]
