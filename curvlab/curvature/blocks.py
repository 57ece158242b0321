"""What the curvature recursion returns for each linear layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch import Tensor

__all__ = ["LayerCurvature", "drop_absent_biases", "shape_weights"]


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
        kron_out: the output-side Kronecker factor G of the weight block G ⊗ A where it differs from
            ``bias`` (a conv layer with ``kfac_type=expand``: KFC's Σ over positions); None: use ``bias``.
        weight_shape: the weight's shape, to reshape a (n_t, n_in) direction back; None: (n_t, n_in).
        block_product: (nets with convolutions, on request) (dW, db or None) ↦ (weight part, bias part
            or None) of the kind's block of (W, b) times (dW, db), matrix-free; None otherwise.

    A conv layer (``nn.Conv2d``) is read as a linear layer over its input patches (J = C_in·k_h·k_w
    inputs, C_out outputs): ``bias`` (C_out, C_out) is the exact bias block of the kind (Σ over both
    positions), ``grad_weight`` (C_out, J) in ``W.flatten(1)`` order, ``input_mean`` (J,) the patch
    mean and ``input_cov`` (J, J) the factor A of ``CurvatureOptions.kfac_type`` (expand: KFC;
    reduce: Eschenhagen et al. 2023), so that the solvers use G ⊗ A as for ``nn.Linear``.
    """

    bias: Tensor
    input_mean: Tensor
    input_cov: Tensor | None
    grad_bias: Tensor
    grad_weight: Tensor | None
    weight: Tensor | None = None
    has_bias: bool = True
    grad_samples: Tensor | None = None
    kron_out: Tensor | None = None
    weight_shape: tuple[int, ...] | None = None
    block_product: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor | None]] | None = None

    @property
    def n_out(self) -> int:
        return self.bias.shape[0]

    @property
    def n_in(self) -> int:
        return self.input_mean.shape[0]

    @property
    def out_factor(self) -> Tensor:
        """G of the weight block G ⊗ A: ``kron_out`` where set, else the bias block."""
        return self.bias if self.kron_out is None else self.kron_out


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


def shape_weights(d: list[Tensor], blocks: Sequence[LayerCurvature]) -> list[Tensor]:
    """A direction ``[d_W1, d_b1, …]`` (bias entries for every layer or for none) with each weight
    entry in its parameter's shape (a conv layer's (C_out, J) entry back to (C_out, C_in, k_h, k_w))."""
    per = len(d) // len(blocks)  # 2 with bias entries, 1 without
    shapes = [blocks[i // per].weight_shape if i % per == 0 else None for i in range(len(d))]
    return [e if shape is None else e.reshape(shape) for e, shape in zip(d, shapes)]
