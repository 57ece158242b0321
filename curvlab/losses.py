"""Loss functions ξ(h^k | y) = C(softmax(h^k) | y) with closed-form output derivatives.

Each loss gives per-sample values, gradients and Hessians with respect to the network
output ``h^k`` (the logits), batched over samples. ``y`` holds integer class labels.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from enum import Enum
from typing import Callable

import torch
from torch import Tensor

from curvlab.symmetric import symmetrized

__all__ = [
    "LossKind", "OwnLossKind", "Loss", "CrossEntropy", "NonConvex", "MSE", "FunctionLoss", "make_loss", "as_loss",
]


class LossKind(str, Enum):
    CROSS_ENTROPY = "cross_entropy"
    NONCONVEX = "nonconvex"


class OwnLossKind(str, Enum):
    """Losses of the optimizer API (:mod:`curvlab.optim`) that the runner's configs do not name."""

    MSE = "mse"
    FUNCTION = "function"  # any loss given as a function of the logits


def _one_hot(y: Tensor, like: Tensor) -> Tensor:
    """The one-hot rows e_y (B, C) in ``like``'s dtype: ``one_hot(y, C).to(dtype)`` bit for bit, without
    its label-range scan (a reduction and a host sync; an out-of-range label still raises in ``scatter_``)."""
    return torch.zeros_like(like).scatter_(-1, y[:, None], 1.0)


class Loss(ABC):
    """A criterion on softmax outputs. Shapes: ``out`` (B, C), ``y`` (B,) integer labels."""

    kind: LossKind | OwnLossKind
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

    def mean_hessian(self, out: Tensor, y: Tensor) -> Tensor:
        """The batch-mean Hessian E_i[∇²_{h^k} ξ_i], (C, C), exactly symmetric: the output block of the
        batch-mean kinds (Eq. 6 and, before Pos-Eig, Eq. 8a of Chen et al.)."""
        return symmetrized(self.hessian(out, y).mean(0))

    def __call__(self, out: Tensor, y: Tensor) -> Tensor:
        """Batch-mean loss (differentiable)."""
        return self.values(out, y).mean()

    _shared: tuple[Tensor, list[Tensor]] | None = None  # set by at(): (h^k, [softmax(h^k)] once computed)

    def probs(self, out: Tensor) -> Tensor:
        """The model's predictive distribution softmax(h^k), (B, C); shared at the output of :meth:`at`."""
        shared = self._shared
        if shared is None or out is not shared[0]:
            return torch.softmax(out, dim=-1)
        if not shared[1]:
            shared[1].append(torch.softmax(out, dim=-1))
        return shared[1][0]  # read only: every caller makes new tensors from it

    def at(self, out: Tensor) -> Loss:
        """This loss for several derivatives at one output ``out`` (the curvature recursion asks the
        gradient and the output block): a copy that computes softmax(``out``) once for all of them
        (≈ 30 µs a softmax of 128 × 10 on one CPU thread). ``out`` must not change while it is in use."""
        bound = copy.copy(self)
        bound._shared = (out, [])
        return bound

    def sample_labels(self, out: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` labels per sample from the predictive distribution, (n, B)."""
        p = self.probs(out.detach() if out.requires_grad else out)
        return torch.multinomial(p, n, replacement=True, generator=generator).T

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
        # p − e_y: p + (−1) at y is p − 1 bit for bit, and p elsewhere (no one-hot matrix, no label scan)
        return p.scatter_add(-1, y[:, None], p.new_full((p.shape[0], 1), -1.0))

    def hessian(self, out: Tensor, y: Tensor) -> Tensor:
        p = self.probs(out)
        return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]

    def mean_hessian(self, out: Tensor, y: Tensor) -> Tensor:
        """E_i[diag(p_i) − p_i p_iᵀ] in one pass: −pᵀp / B, one (C, B) × (B, C) GEMM instead of B outer
        products, with the diagonal E_i[p_i ⊙ (1 − p_i)] (diag(p̄) − E[p²] would cancel where p → 1)."""
        p = self.probs(out)  # (B, C)
        h = torch.mm(p.T, p).mul_(-1.0 / p.shape[0])  # (C, C) off the diagonal: −E_i[p_ia p_ib]
        h.diagonal().copy_((p * (1 - p)).mean(0))
        return symmetrized(h)


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
        e_minus_p = _one_hot(y, p) - p  # (B, C)
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


class MSE(Loss):
    """Mean squared error as ``torch.nn.functional.mse_loss``: ξ_i = ‖h_i − t_i‖² / C.

    ∇ξ_i = 2 (h_i − t_i) / C and ∇²ξ_i = (2 / C) I, so that the batch mean is
    ``mse_loss(out, t)``. Targets ``y`` are (B, C) values, or (B,) class labels (one-hot targets).
    """

    kind = OwnLossKind.MSE
    convex = True

    @staticmethod
    def _target(out: Tensor, y: Tensor) -> Tensor:
        if y.dim() == 1 and not y.is_floating_point():
            return torch.nn.functional.one_hot(y, out.shape[-1]).to(out.dtype)
        if y.shape != out.shape:
            raise ValueError(
                f"mse loss: targets must be (B, C) = {tuple(out.shape)} or (B,) labels, got {tuple(y.shape)}"
            )
        return y.to(out.dtype)

    def values(self, out: Tensor, y: Tensor) -> Tensor:
        return (out - self._target(out, y)).pow(2).mean(-1)

    def grad(self, out: Tensor, y: Tensor) -> Tensor:
        return 2 * (out - self._target(out, y)) / out.shape[-1]

    def hessian(self, out: Tensor, y: Tensor) -> Tensor:
        b, c = out.shape
        return (2.0 / c) * torch.eye(c, dtype=out.dtype, device=out.device).expand(b, c, c)


class FunctionLoss(Loss):
    """Any twice-differentiable loss ``fn(out, y)`` of the logits, derivatives by ``torch.func``.

    ``fn`` takes a batch (``out`` (B, C), ``y`` (B, …)) and returns the batch *mean* of
    per-sample terms, as torch's losses with ``reduction="mean"`` over the batch do; sample
    i's term is then ``ξ_i = fn(out[i:i+1], y[i:i+1])``. Values, gradients and Hessians are
    that function of one sample, vmapped over the batch (``torch.func.vmap`` of ``grad`` /
    ``hessian``), so ``fn`` must be vmappable (no ``.item()``, no data-dependent Python control flow).

    Args:
        fn: the loss function, e.g. ``torch.nn.functional.cross_entropy`` or an ``nn.Module`` loss.
        convex: whether ``fn`` is convex in the logits (then the Gauss-Newton matrix is PSD, and
            ``curvature="gn"`` is allowed).
    """

    kind = OwnLossKind.FUNCTION

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], convex: bool = False) -> None:
        if not callable(fn):
            raise ValueError(f"loss must be a callable fn(logits, targets), got {type(fn).__name__}")
        self.fn = fn
        self.convex = bool(convex)

    def _one(self, out: Tensor, y: Tensor) -> Tensor:
        return self.fn(out[None], y[None]).reshape(())  # ξ_i: fn on a batch of one

    def _vmapped(self, f: Callable[[Tensor, Tensor], Tensor], out: Tensor, y: Tensor) -> Tensor:
        try:
            return torch.func.vmap(f)(out, y)
        except RuntimeError as err:
            if "vmap" not in str(err):
                raise
            raise ValueError(
                f"loss {self!r} cannot be vmapped over samples ({str(err).splitlines()[0][:120]}); write it without "
                ".item(), data-dependent branches or F.one_hot (index with torch.eye(C)[y] or gather instead)"
            ) from None

    def values(self, out: Tensor, y: Tensor) -> Tensor:
        return self._vmapped(self._one, out, y)  # (B,)

    def grad(self, out: Tensor, y: Tensor) -> Tensor:
        return self._vmapped(torch.func.grad(self._one), out, y)  # (B, C)

    def hessian(self, out: Tensor, y: Tensor) -> Tensor:
        return self._vmapped(torch.func.hessian(self._one), out, y)  # (B, C, C)

    def __repr__(self) -> str:
        return f"FunctionLoss({getattr(self.fn, '__name__', type(self.fn).__name__)}, convex={self.convex})"


def as_loss(loss: str | LossKind | Loss | Callable[[Tensor, Tensor], Tensor]) -> Loss:
    """A :class:`Loss` from a loss, a name (``cross_entropy``, ``nonconvex``, ``mse``) or a function."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        if loss == OwnLossKind.MSE.value:
            return MSE()
        if loss not in {k.value for k in LossKind}:
            allowed = ", ".join([*(k.value for k in LossKind), OwnLossKind.MSE.value])
            raise ValueError(f"loss: unknown name {loss!r}; allowed: {allowed}, or a function fn(logits, targets)")
        return make_loss(loss)
    return FunctionLoss(loss)


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
