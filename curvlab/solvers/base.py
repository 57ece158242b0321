"""The one small interface that every solver shares, and the registry the runner uses.

A solver proposes a direction ``d`` (shaped like ``net.parameters()``) and, by default,
applies ``θ ← θ + lr · d``. The CR step size wraps any solver by replacing ``lr``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from curvlab.losses import Loss
from curvlab.modules import Net

__all__ = ["Direction", "StepResult", "Solver", "SOLVERS", "register", "make_solver"]


@dataclass
class Direction:
    """A proposed update: ``θ ← θ + step · d``.

    Attributes:
        loss: batch-mean loss at the current parameters (before the update).
        d: tensors shaped like ``net.parameters()``.
        stats: scalars worth logging (CG iterations, negative-curvature hits, …).
    """

    loss: float
    d: list[Tensor]
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class StepResult:
    """What one update did: the loss before it, the step length applied, and solver stats."""

    loss: float
    step_size: float
    stats: dict[str, float] = field(default_factory=dict)


class Solver(ABC):
    """Base class: subclasses implement :meth:`direction`; the runner calls :meth:`step`.

    ``lr`` is a plain attribute so that the runner's schedule can set it every step.
    """

    name: ClassVar[str] = ""

    def __init__(self, net: Net, loss: Loss, lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"solver.lr must be > 0, got {lr}")
        self.net = net
        self.loss = loss
        self.lr = float(lr)

    @property
    def params(self) -> list[Tensor]:
        return list(self.net.parameters())

    @abstractmethod
    def direction(self, x: Tensor, y: Tensor) -> Direction:
        """The direction ``d`` this solver would step along with step length ``lr``."""

    @torch.no_grad()
    def apply(self, d: list[Tensor], step_size: float) -> None:
        """θ ← θ + step_size · d."""
        for p, dp in zip(self.params, d):
            p.add_(dp, alpha=step_size)

    def step(self, x: Tensor, y: Tensor) -> StepResult:
        """One update on the batch ``(x, y)``."""
        dr = self.direction(x, y)
        self.apply(dr.d, self.lr)
        return StepResult(dr.loss, self.lr, dr.stats)

    def state_dict(self) -> dict[str, Any]:
        """Internal state needed to resume bit for bit (momentum buffers, counters…)."""
        return {"lr": self.lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = float(state["lr"])


SOLVERS: dict[str, Callable[..., Solver]] = {}


def register(name: str) -> Callable[[type[Solver]], type[Solver]]:
    """Class decorator: make a solver available to configs under ``name``."""

    def deco(cls: type[Solver]) -> type[Solver]:
        cls.name = name
        SOLVERS[name] = cls
        return cls

    return deco


def make_solver(name: str, net: Net, loss: Loss, **options: Any) -> Solver:
    """Build the solver registered as ``name`` with its keyword options."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; allowed: {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name](net, loss, **options)
