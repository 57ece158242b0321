"""The CR step size of Bakker et al. (Eq. 9) around any ``torch.optim`` optimizer.

The user's optimizer proposes the update; its update divided by its group's learning rate is
the search direction ``g``, and ``θ ← θ + α g`` with α from the cubic model along ``g``
(:func:`curvlab.solvers.cr.cr_step`, exact ``gᵀ∇f`` and ``gᵀHg`` by forward-over-forward AD).
The maths is the runner's ``solver=cr``: :class:`curvlab.solvers.cr.CR` on the wrapped optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from curvlab.losses import Loss
from curvlab.optim.base import LossSpec, SolverOptimizer
from curvlab.solvers.base import Solver
from curvlab.solvers.baselines import TorchOptimSolver
from curvlab.solvers.cr import CR as CRSolver

__all__ = ["CR", "OptimizerSolver"]


class OptimizerSolver(TorchOptimSolver):
    """A given ``torch.optim`` optimizer behind the solver interface; its groups keep their own lrs."""

    name = "optimizer"

    def __init__(self, net: nn.Module, loss: Loss, optimizer: torch.optim.Optimizer) -> None:
        Solver.__init__(self, net, loss, float(optimizer.param_groups[0]["lr"]))
        owned = {id(p) for p in net.parameters()}
        if any(id(p) not in owned for group in optimizer.param_groups for p in group["params"]):
            raise ValueError(
                "CR: the optimizer holds parameters that are not the model's; build it on model.parameters()"
            )
        self.opt = optimizer

    def _sync_lr(self) -> None:
        """The user's learning rates stay (the direction divides each group's update by its own)."""


class CR(SolverOptimizer):
    """Cubic-regularisation step size on a ``torch.optim`` optimizer: α replaces its learning rate.

    Args:
        optimizer: any ``torch.optim.Optimizer`` on (a subset of) ``model.parameters()`` that
            steps without a closure (SGD, Adam, Adagrad, Adadelta, RMSprop, your own…), or a
            ``curvlab.optim`` EA-CG, KFI or Newton optimizer on ``model`` (the runner's
            ``solver=cr solver.base=eacg``; CR's ``loss`` is used, and only CR is stepped).
        model: the network (any ``nn.Module``; ``torch.func`` differentiates it).
        loss: as :class:`curvlab.optim.EACG`.
        sigma: σ of the cubic term (Bakker et al.: 100 for SGD, 1000 for Adagrad/Adadelta/Adam).
        fallback: ``zero`` (do not move) or ``lr`` (step with ``lr``) when the cubic model gives α = 0.
        lr: the fallback step; defaults to the optimizer's first group's ``lr``.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, loss: LossSpec = "cross_entropy",
        sigma: float = 100.0, fallback: str = "zero", lr: float | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"CR wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.base_optimizer = optimizer
        self._options: dict[str, Any] = {"sigma": sigma, "fallback": fallback}
        super().__init__(model, float(optimizer.param_groups[0]["lr"]) if lr is None else lr, loss)

    def _build_solver(self, lr: float) -> Solver:
        if isinstance(self.base_optimizer, SolverOptimizer):  # CR on EA-CG, KFI or Newton: their solver
            if self.base_optimizer.model is not self.model:
                raise ValueError("CR: the curvlab.optim optimizer it wraps must be built on the same model")
            base: Solver = self.base_optimizer.solver
        else:
            base = OptimizerSolver(self.model, self.loss, self.base_optimizer)
        return CRSolver.around(base, lr, **self._options)
