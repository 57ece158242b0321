"""A ``torch.optim.Optimizer`` around one curvlab solver: the runner's solver in the user's loop.

The runner calls ``solver.step(x, y)``; :class:`SolverOptimizer` makes the same call from
``optimizer.step(...)``, so that both run one implementation. A step takes either the batch
(``step(x=..., y=...)``, with the optimizer's ``loss``) or a closure in torch's convention
(``step(closure)``, any loss of the logits). The curvature recursion (Chen et al. Eqs. 4–8)
runs its own forward pass, so it needs the model's input, and each sample's output gradient
and Hessian of the loss: from the loss function, or by autograd on the logits the closure's
model call produced, which a forward hook hands over (as BackPACK's ``extend`` does).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from curvlab.losses import Loss, as_loss
from curvlab.optim.step_loss import IndexedTargets, closure_loss, sample_indices
from curvlab.solvers.base import Solver, StepResult

__all__ = ["LossSpec", "SolverOptimizer"]

# A loss: a curvlab Loss, a name (cross_entropy, nonconvex, mse) or any fn(logits, targets).
LossSpec = Loss | str | Callable[[Tensor, Tensor], Tensor]


@contextmanager
def _solver_loss(solver: Solver, loss: Loss) -> Iterator[None]:
    """Let ``solver`` (and a CR solver's base) differentiate ``loss`` for one step."""
    solvers = [solver] + ([solver.base] if isinstance(getattr(solver, "base", None), Solver) else [])
    saved = [s.loss for s in solvers]
    for s in solvers:
        s.loss = loss
    try:
        yield
    finally:
        for s, old in zip(solvers, saved):
            s.loss = old


class SolverOptimizer(torch.optim.Optimizer):
    """Base class: one parameter group (all of ``model``'s parameters) and a curvlab solver.

    ``param_groups[0]["lr"]`` is the solver's learning rate at every step, so
    ``torch.optim.lr_scheduler`` schedules work. Device and dtype follow the model: the batch
    is moved to the parameters' device, floating inputs and targets to their dtype.

    Attributes:
        model: the network.
        loss: the :class:`~curvlab.losses.Loss` the solver differentiates.
        solver: the runner's solver object doing the maths.
        last: the :class:`~curvlab.solvers.base.StepResult` of the latest step (step size,
            statistics such as ``cg_iters``), None before the first step.
    """

    def __init__(self, model: nn.Module, lr: float, loss: LossSpec) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module (the network to train), got {type(model).__name__}")
        params = list(model.parameters())
        if not params:
            raise ValueError("model has no parameters to optimize")
        if not float(lr) > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, {"lr": float(lr)})
        self.model = model
        self.loss = as_loss(loss)
        self.solver: Solver = self._build_solver(float(lr))
        self.last: StepResult | None = None

    def _build_solver(self, lr: float) -> Solver:
        """The solver doing the maths (subclasses)."""
        raise NotImplementedError

    def _batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        p = next(self.model.parameters())
        x = x.to(p.device, p.dtype) if x.is_floating_point() else x.to(p.device)
        y = y.to(p.device, p.dtype) if y.is_floating_point() else y.to(p.device)
        return x, y

    def _check_loss(self, loss: Loss) -> None:
        """Refuse a curvature setting that the loss makes ill-posed (subclasses)."""

    def _step_inputs(
        self, closure: Callable[[], Tensor] | None, x: Tensor | None, y: Tensor | None
    ) -> tuple[Tensor, Tensor, Loss]:
        """The batch, the labels and the loss the solver sees this step."""
        if closure is not None:
            if x is not None or y is not None:
                raise ValueError(f"{type(self).__name__}.step: pass either a closure or the batch (x=, y=), not both")
            x, recorded = closure_loss(self.model, closure)
            self._check_loss(recorded)
            return x, sample_indices(x.shape[0], x.device), recorded
        if x is None or y is None:
            raise ValueError(
                f"{type(self).__name__}.step needs the batch, step(x=inputs, y=targets), or a closure that "
                "calls the model once and returns the loss"
            )
        x, y = self._batch(x, y)
        if y.dim() == 1 and not y.is_floating_point():  # class labels: the runner's call, unchanged
            return x, y, self.loss
        return x, sample_indices(x.shape[0], x.device), IndexedTargets(self.loss, y)

    def step(  # type: ignore[override]
        self, closure: Callable[[], Tensor] | None = None, *, x: Tensor | None = None, y: Tensor | None = None
    ) -> Tensor:
        """One update; returns the batch-mean loss before it.

        Either the batch: ``x`` (B, …) inputs, ``y`` (B,) class labels or (B, …) targets as the
        optimizer's ``loss`` takes them; or a ``closure`` in torch's convention that calls the
        model once on the batch and returns the loss (any loss of the logits; the optimizer's
        ``loss`` is not used): the solver then sees the model's input and, by autograd on the
        logits, the loss's per-sample gradients and Hessians (:mod:`curvlab.optim.step_loss`).
        """
        x, labels, loss = self._step_inputs(closure, x, y)
        self.solver.lr = float(self.param_groups[0]["lr"])
        with _solver_loss(self.solver, loss):
            self.last = self.solver.step(x, labels)
        p = next(self.model.parameters())
        return torch.tensor(self.last.loss, dtype=p.dtype, device=p.device)

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state plus the solver's (KFI's stored factors, a base optimizer's moments…)."""
        return {**super().state_dict(), "solver": self.solver.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        if "solver" not in state:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: no 'solver' entry; pass a state_dict() of this class"
            )
        solver = state.pop("solver")
        super().load_state_dict(state)
        self.solver.load_state_dict(solver)
