"""First-order baselines from ``torch.optim`` behind the solver interface."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from curvlab.losses import Loss
from curvlab.modules import Net
from curvlab.solvers.base import Direction, Solver, StepResult, register

__all__ = ["TorchOptimSolver", "SGD", "Adagrad", "Adadelta", "Adam"]


class TorchOptimSolver(Solver):
    """Wraps a ``torch.optim`` optimizer; ``options`` go to its constructor."""

    optim_cls: type[torch.optim.Optimizer]

    def __init__(self, net: Net, loss: Loss, lr: float, **options: Any) -> None:
        super().__init__(net, loss, lr)
        try:
            self.opt = self.optim_cls(net.parameters(), lr=self.lr, **options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"solver {self.name}: bad option ({err})") from None

    def _loss_backward(self, x: Tensor, y: Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.net(x), y)
        loss.backward()
        return loss.item()

    def _sync_lr(self) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.lr

    def step(self, x: Tensor, y: Tensor) -> StepResult:
        self._sync_lr()
        loss = self._loss_backward(x, y)
        self.opt.step()
        return StepResult(loss, self.lr)

    def direction(self, x: Tensor, y: Tensor) -> Direction:
        """The optimizer's update divided by ``lr``; its state advances, the parameters do not."""
        self._sync_lr()
        loss = self._loss_backward(x, y)
        before = [p.detach().clone() for p in self.params]
        self.opt.step()
        with torch.no_grad():
            d = [(p - b) / self.lr for p, b in zip(self.params, before)]
            for p, b in zip(self.params, before):
                p.copy_(b)
        return Direction(loss, d)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "optim": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.opt.load_state_dict(state["optim"])


@register("sgd")
class SGD(TorchOptimSolver):
    """SGD with (optional) momentum; EA-CG's baseline uses momentum 0.9."""

    optim_cls = torch.optim.SGD


@register("adagrad")
class Adagrad(TorchOptimSolver):
    optim_cls = torch.optim.Adagrad


@register("adadelta")
class Adadelta(TorchOptimSolver):
    optim_cls = torch.optim.Adadelta


@register("adam")
class Adam(TorchOptimSolver):
    optim_cls = torch.optim.Adam
