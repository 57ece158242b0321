"""The loss a solver sees in one step, with the batch's "labels" replaced by sample indices.

The curvature recursion takes ``y`` as (B,) integer labels and cuts the batch into chunks, so
a loss whose targets are anything else (regression values (B, C), or no targets at all: a
closure's loss) is given to the solvers keyed by sample index ``i`` instead:

* :class:`IndexedTargets`: any :class:`~curvlab.losses.Loss` on the stored targets ``y[i]``.
* :class:`RecordedLoss`: a closure's loss through its second-order Taylor model in the logits
  at the current point. A Newton-type step depends on the loss only through its value,
  gradient and Hessian there (Chen et al. Eq. 4a, Bakker et al. Eq. 8), so every solver's
  direction and step size are those of the loss itself.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from curvlab.losses import Loss, OwnLossKind

__all__ = ["IndexedTargets", "RecordedLoss", "closure_loss", "sample_indices"]


def sample_indices(batch: int, device: torch.device) -> Tensor:
    """The stand-in labels: sample i has label i, (B,)."""
    return torch.arange(batch, device=device)


class IndexedTargets(Loss):
    """``loss`` on targets ``y`` (B, …), called with sample indices in place of the targets."""

    def __init__(self, loss: Loss, y: Tensor) -> None:
        self.inner, self.y = loss, y
        self.kind, self.convex = loss.kind, loss.convex

    def values(self, out: Tensor, idx: Tensor) -> Tensor:
        return self.inner.values(out, self.y[idx])

    def grad(self, out: Tensor, idx: Tensor) -> Tensor:
        return self.inner.grad(out, self.y[idx])

    def hessian(self, out: Tensor, idx: Tensor) -> Tensor:
        return self.inner.hessian(out, self.y[idx])

    def __repr__(self) -> str:
        return repr(self.inner)


class RecordedLoss(Loss):
    """ξ_i(o) = f + B [g_iᵀ(o − o_i) + ½ (o − o_i)ᵀ H_i (o − o_i)] from a batch-mean loss f.

    Shapes: ``out0`` (B, C) the logits, ``grad`` (B, C) ∂f/∂o_i, ``hess`` (B, C, C) ∂²f/∂o_i²
    (so ∇ξ_i = B g_i, ∇²ξ_i = B H_i, and the batch mean of ξ_i has f's value, gradient and Hessian).
    ``convex`` holds when every H_i is PSD, i.e. when the Gauss-Newton matrix is.
    """

    kind = OwnLossKind.FUNCTION

    def __init__(self, value: Tensor, out0: Tensor, grad: Tensor, hess: Tensor) -> None:
        self.value, self.out0, self.g, self.h = value.detach(), out0.detach(), grad.detach(), hess.detach()
        self.batch = out0.shape[0]
        tol = 1e-12 * float(hess.abs().max().clamp(min=1.0))
        self.convex = bool((torch.linalg.eigvalsh(self.h) >= -tol).all())

    def _delta(self, out: Tensor, idx: Tensor) -> Tensor:
        return out - self.out0[idx]  # (b, C)

    def values(self, out: Tensor, idx: Tensor) -> Tensor:
        d = self._delta(out, idx)
        quad = torch.einsum("bi,bij,bj->b", d, self.h[idx], d)
        return self.value + self.batch * ((self.g[idx] * d).sum(-1) + 0.5 * quad)

    def grad(self, out: Tensor, idx: Tensor) -> Tensor:
        d = self._delta(out, idx)
        return self.batch * (self.g[idx] + torch.einsum("bij,bj->bi", self.h[idx], d))

    def hessian(self, out: Tensor, idx: Tensor) -> Tensor:
        return self.batch * self.h[idx]

    def __repr__(self) -> str:
        return "the closure's loss"


def _derivatives(loss: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    """∂loss/∂out (B, C) and the per-sample diagonal blocks of ∂²loss/∂out² (B, C, C).

    One backward pass per logit column c: Σ_i ∂g_ic/∂o_i; a loss that is a sum or mean of
    per-sample terms has no cross-sample second derivatives, so row c of every H_i comes out.
    """
    (g,) = torch.autograd.grad(loss, out, create_graph=True)
    rows = []
    for c in range(out.shape[1]):
        (row,) = torch.autograd.grad(g[:, c].sum(), out, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(out) if row is None else row)  # None: linear in that logit
    return g.detach(), torch.stack(rows, 1)  # (B, C), (B, C, C)


def closure_loss(model: nn.Module, closure: Callable[[], Tensor]) -> tuple[Tensor, RecordedLoss]:
    """Run ``closure`` once, seeing ``model``'s input and logits: the batch ``x`` and its loss.

    The closure must call ``model`` once, on the batch, and return the scalar loss computed from
    its output only (no extra parameter terms such as a weight penalty; add those as ``weight_decay``
    of a base optimizer under :class:`~curvlab.optim.CR`). It need not call ``zero_grad``/``backward``.
    """
    inputs: list[Tensor] = []
    outputs: list[Tensor] = []

    def pre(_: nn.Module, args: tuple) -> None:
        inputs.append(args[0])

    def post(_: nn.Module, args: tuple, out: Tensor) -> Tensor:
        leaf = out.detach().requires_grad_(True)  # the loss's graph starts at the logits
        outputs.append(leaf)
        return leaf

    handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    try:
        with torch.enable_grad():
            loss = closure()
    finally:
        for h in handles:
            h.remove()
    if len(inputs) != 1:
        raise ValueError(
            f"closure: call the model exactly once (on the batch) and return its loss; "
            f"it was called {len(inputs)} times"
        )
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(f"closure must return the scalar loss tensor, got {type(loss).__name__}")
    out = outputs[0]
    if out.dim() != 2:
        raise ValueError(f"closure: the model's output must be logits (B, C), got shape {tuple(out.shape)}")
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        with torch.enable_grad():
            direct = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) if params else []
            if any(g is not None for g in direct):
                raise ValueError(
                    "closure: the loss depends on the parameters other than through the model's output "
                    "(e.g. a weight penalty); return the loss of the logits only"
                )
            grad, hess = _derivatives(loss.reshape(()), out)
    except RuntimeError as err:  # the graph was freed by a backward() in the closure
        if "second time" not in str(err):
            raise
        raise ValueError(
            "closure: return the loss without calling backward() on it; curvlab.optim differentiates it itself"
        ) from None
    return inputs[0].detach(), RecordedLoss(loss.reshape(()), out, grad, hess)
