"""Curvature messages: what the backward recursion passes from layer t to layer t−1.

A message stands for the curvature with respect to the pre-activation ``z^t`` of one layer
(equal to the bias block, since ∂z/∂b = I). The recursion only ever asks a message to

* ``pull_back(w, dphi)``: the first ("Gauss-Newton") term of Eq. (4b) of Chen et al.,
  diag(h')·Wᵀ·H·W·diag(h'), under the message's own batch treatment;
* ``add_residual(r, residual)``: the second, diagonal term diag(h'' ⊙ Wᵀ∇_{b^t}ξ) of Eq. (4b),
  passed through the kind's residual policy;
* ``total()``: the sum of the per-sample blocks it stands for (the batch mean times the
  sample count), so that chunks of a batch can be added up.

Three message types cover every kind:

``PerSampleBlocks``  one (n, n) block per sample: Eq. (4b) exactly (``exact``).
``PerSampleFactors`` per-sample square roots U_i with block U_i U_iᵀ: KFAC's E[g gᵀ] (``fisher``).
``MeanBlock``        the batch-mean block with averaged Jacobians: Eq. (6)/(8b) of Chen et al.
                     (per-sample Jacobians) or Eq. (7) of Dangel & Hennig (mean Jacobians).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from curvlab.curvature.options import JacobianAverage

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


class Message:
    """Interface of a curvature message (see the module docstring)."""

    count: int  # number of samples this message averages over

    def pull_back(self, w: Tensor, dphi: Tensor, average: JacobianAverage, per_sample: bool) -> Message:
        """Message for z^{t−1} from the one for z^t, without the residual term.

        Args:
            w: (n_t, n_{t−1}) weight W^t.
            dphi: (b, n_{t−1}) activation derivatives h^{(t−1)'}.
            average: how a batch-mean message averages the Jacobians.
            per_sample: whether the caller still needs per-sample blocks afterwards (the last
                layer and the output only need the sum, which is one large GEMM).
        """
        raise NotImplementedError

    def add_residual(self, r: Tensor, residual: Residual) -> Message:
        """Add diag(policy(r)); ``r`` (b, n) holds h'' ⊙ (Wᵀ ∇_{b^t} ξ_i) per sample."""
        raise NotImplementedError

    def total(self) -> Tensor:
        """Sum over samples of the blocks, (n, n)."""
        raise NotImplementedError


@dataclass
class MeanBlock(Message):
    """The batch-mean block H̄ (n, n) of ``count`` samples."""

    block: Tensor  # (n, n)
    count: int

    def pull_back(self, w: Tensor, dphi: Tensor, average: JacobianAverage, per_sample: bool) -> MeanBlock:
        gn = w.T @ (self.block @ w)  # (n_{t-1}, n_{t-1}) = Wᵀ H̄ W
        if average is JacobianAverage.PER_SAMPLE:
            jac = dphi.T @ dphi / dphi.shape[0]  # E[h' h'ᵀ], Eq. (6) of Chen et al.
        else:
            m = dphi.mean(0)
            jac = m[:, None] * m[None, :]  # E[h'] E[h']ᵀ, Eq. (7) of Dangel & Hennig
        return MeanBlock(gn * jac, self.count)

    def add_residual(self, r: Tensor, residual: Residual) -> MeanBlock:
        # Eq. (8b): Pos-Eig acts on diag(E_i[h'' ⊙ Wᵀ∇ξ_i]), i.e. after the batch mean.
        if residual is Residual.DROP:
            return self
        return MeanBlock(self.block + torch.diag(residual.apply(r.mean(0))), self.count)

    def total(self) -> Tensor:
        return self.block * self.count


@dataclass
class PerSampleBlocks(Message):
    """Per-sample blocks H_i, (b, n, n): the exact recursion Eq. (4b), batched over samples."""

    blocks: Tensor  # (b, n, n)

    @property
    def count(self) -> int:  # type: ignore[override]
        return self.blocks.shape[0]

    def pull_back(self, w: Tensor, dphi: Tensor, average: JacobianAverage, per_sample: bool) -> Message:
        f = w[None] * dphi[:, None, :]  # (b, n_t, n_{t-1}) = W diag(h'_i)
        x = torch.bmm(self.blocks, f)  # (b, n_t, n_{t-1})
        if per_sample:
            return PerSampleBlocks(torch.bmm(f.transpose(1, 2), x))  # (b, n_{t-1}, n_{t-1})
        # Only the sum is needed: Σ_i F_iᵀ X_i is one GEMM over the stacked rows, which runs at
        # full BLAS speed and never holds b blocks of the (usually largest) first layer.
        b, n_t, n_prev = f.shape
        total = f.reshape(b * n_t, n_prev).T @ x.reshape(b * n_t, n_prev)  # (n_{t-1}, n_{t-1})
        return MeanBlock(total / b, b)

    def add_residual(self, r: Tensor, residual: Residual) -> PerSampleBlocks:
        if residual is Residual.DROP:
            return self
        if residual is not Residual.KEEP:
            raise ValueError(f"per-sample blocks support residual keep/drop, not {residual.value!r}")
        blocks = self.blocks.clone()
        blocks.diagonal(dim1=1, dim2=2).add_(r)
        return PerSampleBlocks(blocks)

    def total(self) -> Tensor:
        return self.blocks.sum(0)

    def weight_total(self, h: Tensor) -> Tensor:
        """Σ_i H_i ⊗ (h_i h_iᵀ): the exact weight block (Eq. 4c) in row-major ``W.flatten()`` order."""
        b, n = self.blocks.shape[:2]
        m = h.shape[1]
        w = torch.einsum("iac,ib,id->abcd", self.blocks, h, h)  # (n, m, n, m)
        return w.reshape(n * m, n * m)


@dataclass
class PerSampleFactors(Message):
    """Per-sample factors U_i (b, n, m) of the blocks U_i U_iᵀ (Fisher: columns are gradients).

    Pulling back U through the Jacobian is the Gauss-Newton term for U Uᵀ, at the cost of m
    gradient back-propagations instead of a sandwich of n × n matrices.
    """

    factors: Tensor  # (b, n, m)

    @property
    def count(self) -> int:  # type: ignore[override]
        return self.factors.shape[0]

    def pull_back(self, w: Tensor, dphi: Tensor, average: JacobianAverage, per_sample: bool) -> PerSampleFactors:
        return PerSampleFactors(dphi[:, :, None] * torch.matmul(w.T, self.factors))  # (b, n_{t-1}, m)

    def add_residual(self, r: Tensor, residual: Residual) -> PerSampleFactors:
        if residual is not Residual.DROP:
            raise ValueError(f"factor messages support residual drop only, not {residual.value!r}")
        return self

    def total(self) -> Tensor:
        u = self.factors.transpose(1, 2).reshape(-1, self.factors.shape[1])  # (b m, n)
        return u.T @ u
