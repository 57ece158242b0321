"""Curvature messages: what the backward recursion passes from layer t to layer t−1.

A message stands for the curvature with respect to the pre-activation ``z^t`` of one layer
(equal to the bias block, since ∂z/∂b = I). The recursion only ever asks a message to

* ``pull_back(w, dphi)``: the first ("Gauss-Newton") term of Eq. (4b) of Chen et al.,
  diag(h')·Wᵀ·H·W·diag(h'), under the message's own batch treatment;
* ``add_residual(r, residual)``: the second, diagonal term diag(h'' ⊙ Wᵀ∇_{b^t}ξ) of Eq. (4b),
  passed through the kind's residual policy;
* ``total(scale)``: ``scale`` times the sum of the per-sample blocks it stands for; with
  ``scale`` = 1/batch this is the message's share of the batch mean, so that chunks of a batch
  can be added up.

Three message types cover every kind:

``PerSampleBlocks``  one (n, n) block per sample: Eq. (4b) exactly (``exact``).
``PerSampleFactors`` per-sample factors U_i (m rows) with block U_iᵀ U_i: KFAC's E[g gᵀ] (``fisher``).
``MeanBlock``        the batch-mean block with averaged Jacobians: Eq. (6)/(8b) of Chen et al.
                     (per-sample Jacobians) or Eq. (7) of Dangel & Hennig (mean Jacobians).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from curvlab.curvature.options import JacobianAverage
from curvlab.symmetric import symmetric_product, symmetrized

__all__ = ["Residual", "Message", "PerSampleBlocks", "PerSampleFactors", "MeanBlock"]


class Residual(str, Enum):
    """How a kind treats the activation's second-order (residual) diagonal term of Eq. (4b)."""

    KEEP = "keep"  # exact Hessian
    DROP = "drop"  # Gauss-Newton, Fisher: module second-order information neglected
    ABS = "abs"  # PCH-1: Pos-Eig with γ = −1, |·| (Eq. 8b of Chen et al.)
    CLIP = "clip"  # PCH-2: Pos-Eig with γ = 0, max(·, 0)

    def apply(self, r: Tensor) -> Tensor:
        """Pos-Eig of diag(r) is element-wise on r, because the matrix is diagonal."""
        if self is Residual.ABS:
            return r.abs()
        if self is Residual.CLIP:
            return r.clamp_min(0)
        return r


class Message(ABC):
    """Interface of a curvature message (see the module docstring). The recursion consumes a
    message: ``add_residual`` may update it in place."""

    count: int  # number of samples this message stands for

    @abstractmethod
    def pull_back(self, w: Tensor, dphi: Tensor, average: JacobianAverage, per_sample: bool) -> Message:
        """Message for z^{t−1} from the one for z^t, without the residual term.

        Args:
            w: (n_t, n_{t−1}) weight W^t.
            dphi: (b, n_{t−1}) activation derivatives h^{(t−1)'}.
            average: how a batch-mean message averages the Jacobians.
            per_sample: whether the caller still needs per-sample blocks afterwards (the first
                layer's block is only summed, which is one large GEMM).
        """

    @abstractmethod
    def add_residual(self, r: Tensor, residual: Residual) -> Message:
        """Add diag(policy(r)); ``r`` (b, n) holds h'' ⊙ (Wᵀ ∇_{b^t} ξ_i) per sample."""

    @abstractmethod
    def total(self, scale: float) -> Tensor:
        """``scale`` · Σ_i H_i over the samples of this message, (n, n), exactly symmetric."""


@dataclass
class MeanBlock(Message):
    """The batch-mean block H̄ (n, n) of ``count`` samples."""

    block: Tensor  # (n, n), exactly symmetric (the output builders and pull-backs make it so)
    count: int

    def pull_back(self, w: Tensor, dphi: Tensor, average: JacobianAverage, per_sample: bool) -> MeanBlock:
        # Wᵀ H̄ W ∘ J, with J = E[h' h'ᵀ] (Eq. 6 of Chen et al.) or E[h'] E[h']ᵀ (Eq. 7 of
        # Dangel & Hennig), in one pass of panels: (n_{t-1}, n_{t-1}).
        if average is JacobianAverage.PER_SAMPLE:
            jac, scale = (dphi, dphi), 1.0 / dphi.shape[0]
        else:
            m = dphi.mean(0)[None]  # (1, n_{t-1})
            jac, scale = (m, m), 1.0
        return MeanBlock(symmetric_product(w, self.block @ w, times=jac, scale=scale), self.count)

    def add_residual(self, r: Tensor, residual: Residual) -> MeanBlock:
        # Eq. (6)/(8b): Pos-Eig acts on diag(E_i[h'' ⊙ Wᵀ∇ξ_i]), i.e. after the batch mean. The
        # mean is of the per-sample products under either Jacobian average (the option only
        # concerns the Gauss-Newton term).
        if residual is Residual.DROP:
            return self
        self.block.diagonal().add_(residual.apply(r.mean(0)))  # in place: the message owns its block
        return self

    def total(self, scale: float) -> Tensor:
        weight = scale * self.count
        return self.block if weight == 1 else self.block * weight


@dataclass
class PerSampleBlocks(Message):
    """Per-sample blocks H_i, (b, n, n): the exact recursion Eq. (4b), batched over samples."""

    blocks: Tensor  # (b, n, n)

    @property
    def count(self) -> int:  # type: ignore[override]
        return self.blocks.shape[0]

    def pull_back(self, w: Tensor, dphi: Tensor, average: JacobianAverage, per_sample: bool) -> Message:
        b, n_t, _ = self.blocks.shape
        n_prev = w.shape[1]
        f = w[None] * dphi[:, None, :]  # (b, n_t, n_{t-1}) F_i = W diag(h'_i)
        x = torch.bmm(self.blocks, f)  # (b, n_t, n_{t-1}) H_i F_i
        if per_sample:
            return PerSampleBlocks(torch.bmm(f.transpose(1, 2), x))  # (b, n_{t-1}, n_{t-1}) F_iᵀ H_i F_i
        # Only the sum is needed: Σ_i F_iᵀ X_i is one GEMM over the stacked rows, which runs at
        # full BLAS speed, skips half the work by symmetry, and never holds b blocks of the
        # (usually largest) first layer.
        return MeanBlock(symmetric_product(f.view(b * n_t, n_prev), x.view(b * n_t, n_prev), scale=1.0 / b), b)

    def add_residual(self, r: Tensor, residual: Residual) -> PerSampleBlocks:
        if residual is Residual.DROP:
            return self
        if residual is not Residual.KEEP:
            raise ValueError(f"per-sample blocks support residual keep/drop, not {residual.value!r}")
        # In place: a message owns its blocks and is consumed by the recursion.
        self.blocks.diagonal(dim1=1, dim2=2).add_(r)
        return self

    def total(self, scale: float) -> Tensor:
        return symmetrized(self.blocks.sum(0), scale)  # the per-sample products round apart

    def weight_total(self, h: Tensor, scale: float) -> Tensor:
        """scale · Σ_i H_i ⊗ (h_i h_iᵀ): the exact weight block (Eq. 4c), row-major ``W.flatten()`` order."""
        n, m = self.blocks.shape[1], h.shape[1]
        w = torch.einsum("iac,ib,id->abcd", self.blocks, h, h * scale)  # (n, m, n, m)
        return w.reshape(n * m, n * m)


@dataclass
class PerSampleFactors(Message):
    """Per-sample factors U_i (b, m, n) of the blocks U_iᵀ U_i (Fisher: the rows are gradients).

    Pulling back U through the Jacobian is the Gauss-Newton term for Uᵀ U, at the cost of m
    gradient back-propagations instead of a sandwich of n × n matrices.
    """

    factors: Tensor  # (b, m, n)

    @property
    def count(self) -> int:  # type: ignore[override]
        return self.factors.shape[0]

    def pull_back(self, w: Tensor, dphi: Tensor, average: JacobianAverage, per_sample: bool) -> PerSampleFactors:
        b, m, n = self.factors.shape
        back = (self.factors.reshape(b * m, n) @ w).reshape(b, m, -1)  # one GEMM for all rows
        return PerSampleFactors(back * dphi[:, None, :])  # (b, m, n_{t-1})

    def add_residual(self, r: Tensor, residual: Residual) -> PerSampleFactors:
        if residual is not Residual.DROP:
            raise ValueError(f"factor messages support residual drop only, not {residual.value!r}")
        return self

    def total(self, scale: float) -> Tensor:
        u = self.factors.reshape(-1, self.factors.shape[2])  # (b m, n)
        return symmetric_product(u, u, scale=scale)
