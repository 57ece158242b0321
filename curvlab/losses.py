"""Loss functions ξ(h^k | y) = C(softmax(h^k) | y) with closed-form output derivatives.

Each loss gives per-sample values, gradients and Hessians with respect to the network
output ``h^k`` (the logits), batched over samples. ``y`` holds integer class labels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum

import torch
from torch import Tensor

__all__ = ["LossKind", "Loss", "CrossEntropy", "NonConvex", "make_loss"]


class LossKind(str, Enum):
    CROSS_ENTROPY = "cross_entropy"
    NONCONVEX = "nonconvex"


class Loss(ABC):
    """A criterion on softmax outputs. Shapes: ``out`` (B, C), ``y`` (B,) integer labels."""

    kind: LossKind
    convex: bool  # convex in the logits, so that the Gauss-Newton matrix is PSD

    @abstractmethod
    def values(self, out: Tensor, y: Tensor) -> Tensor:
        """Per-sample losses, (B,)."""

    @abstractmethod
    def grad(self, out: Tensor, y: Tensor) -> Tensor:
        """Per-sample gradients ∇_{h^k} ξ_i, (B, C)."""

    @abstractmethod
    def hessian(self, out: Tensor, y: Tensor) -> Tensor:
        """Per-sample Hessians ∇²_{h^k} ξ_i, (B, C, C)."""

    def __call__(self, out: Tensor, y: Tensor) -> Tensor:
        """Batch-mean loss (differentiable)."""
        return self.values(out, y).mean()

    @staticmethod
    def probs(out: Tensor) -> Tensor:
        """The model's predictive distribution softmax(h^k), (B, C)."""
        return torch.softmax(out, dim=-1)

    def sample_labels(self, out: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` labels per sample from the predictive distribution, (n, B)."""
        draws = torch.multinomial(self.probs(out.detach()), n, replacement=True, generator=generator)
        return draws.T

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CrossEntropy(Loss):
    """ξ = −log softmax(h)_y; ∇ξ = p − e_y, ∇²ξ = diag(p) − p pᵀ."""

    kind = LossKind.CROSS_ENTROPY
    convex = True

    def values(self, out: Tensor, y: Tensor) -> Tensor:
        return -torch.log_softmax(out, dim=-1).gather(-1, y[:, None]).squeeze(-1)

    def grad(self, out: Tensor, y: Tensor) -> Tensor:
        p = self.probs(out)
        return p - torch.nn.functional.one_hot(y, p.shape[-1]).to(p.dtype)

    def hessian(self, out: Tensor, y: Tensor) -> Tensor:
        p = self.probs(out)
        return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


class NonConvex(Loss):
    """EA-CG Eq. (14): C(ŷ | y) = 1 / (1 + exp(δ (yᵀŷ − ε))), ŷ = softmax(h^k).

    With s = ŷ_y and C(s) = σ(−δ(s − ε)): C'(s) = −δ C (1 − C), C''(s) = δ² C (1 − C)(1 − 2C),
    ∇s = s (e_y − ŷ) and ∇²s = s [(e_y − ŷ)(e_y − ŷ)ᵀ − diag(ŷ) + ŷŷᵀ], so that
    ∇ξ = C'(s) ∇s and ∇²ξ = C''(s) ∇s ∇sᵀ + C'(s) ∇²s.
    """

    kind = LossKind.NONCONVEX
    convex = False

    def __init__(self, delta: float = 5.0, eps: float = 0.2) -> None:
        if not delta > 0:
            raise ValueError(f"nonconvex loss: delta must be > 0, got {delta}")
        self.delta = float(delta)
        self.eps = float(eps)

    def _parts(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p = self.probs(out)  # (B, C)
        s = p.gather(-1, y[:, None]).squeeze(-1)  # (B,)
        c = torch.sigmoid(-self.delta * (s - self.eps))  # (B,)
        e_minus_p = torch.nn.functional.one_hot(y, p.shape[-1]).to(p.dtype) - p  # (B, C)
        return p, s, c, e_minus_p

    def values(self, out: Tensor, y: Tensor) -> Tensor:
        p = self.probs(out)
        s = p.gather(-1, y[:, None]).squeeze(-1)
        return torch.sigmoid(-self.delta * (s - self.eps))

    def grad(self, out: Tensor, y: Tensor) -> Tensor:
        _, s, c, e_minus_p = self._parts(out, y)
        dc = -self.delta * c * (1 - c)  # (B,)
        return (dc * s)[:, None] * e_minus_p

    def hessian(self, out: Tensor, y: Tensor) -> Tensor:
        p, s, c, e_minus_p = self._parts(out, y)
        dc = -self.delta * c * (1 - c)  # (B,)
        d2c = self.delta**2 * c * (1 - c) * (1 - 2 * c)  # (B,)
        ds = s[:, None] * e_minus_p  # (B, C)
        outer = e_minus_p[:, :, None] * e_minus_p[:, None, :]
        d2s = s[:, None, None] * (outer - torch.diag_embed(p) + p[:, :, None] * p[:, None, :])
        return d2c[:, None, None] * ds[:, :, None] * ds[:, None, :] + dc[:, None, None] * d2s

    def __repr__(self) -> str:
        return f"NonConvex(delta={self.delta}, eps={self.eps})"


def make_loss(name: str | LossKind | Loss, **options: float) -> Loss:
    """Build a loss from its config name (``cross_entropy`` or ``nonconvex``)."""
    if isinstance(name, Loss):
        return name
    try:
        kind = LossKind(name)
    except ValueError:
        allowed = ", ".join(k.value for k in LossKind)
        raise ValueError(f"unknown loss {name!r}; allowed: {allowed}") from None
    if kind is LossKind.CROSS_ENTROPY:
        return CrossEntropy()
    return NonConvex(**options)
