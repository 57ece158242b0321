"""What the curvature recursion returns for each linear layer."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["LayerCurvature"]


@dataclass
class LayerCurvature:
    """Curvature of one linear layer t (input side first in the returned list).

    Attributes:
        bias: (n_t, n_t) batch-mean curvature block for b^t (for ``exact``: the true Hessian
            block; the block of the pre-activation z^t when the net has no biases).
        input_mean: (n_{t-1},) E[h^{t-1}], the rank-one weight factor of Eq. (11b).
        input_cov: (n_{t-1}, n_{t-1}) E[h^{t-1} h^{t-1}ᵀ] (Eq. 11a), or None when not requested.
        grad_bias: (n_t,) batch-mean gradient with respect to b^t (z^t without biases).
        grad_weight: (n_t, n_{t-1}) batch-mean gradient with respect to W^t.
        weight: (n_t n_{t-1}, n_t n_{t-1}) exact weight block E_i[(h hᵀ) ⊗ H_i] in
            ``W.flatten()`` (row-major) order, only on request for small nets; else None.
        has_bias: whether the layer has a bias (without one, ``bias`` and ``grad_bias`` are those of z^t).
    """

    bias: Tensor
    input_mean: Tensor
    input_cov: Tensor | None
    grad_bias: Tensor
    grad_weight: Tensor
    weight: Tensor | None = None
    has_bias: bool = True

    @property
    def n_out(self) -> int:
        return self.bias.shape[0]

    @property
    def n_in(self) -> int:
        return self.input_mean.shape[0]
