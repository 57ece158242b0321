"""First-order baselines from ``torch.optim`` behind the solver interface."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from curvlab.losses import Loss
from curvlab.modules import Net
from curvlab.solvers.base import Direction, Solver, StepResult, register
from curvlab.solvers.options import NON_NEGATIVE, keyword_options, number_rule

__all__ = ["TorchOptimSolver", "SGD", "Adagrad", "Adadelta", "Adam"]


# how torch.optim's messages name an option ("Invalid beta parameter", "Invalid epsilon value")
_TORCH_WORDS = {"betas": "beta", "eps": "epsilon"}


class TorchOptimSolver(Solver):
    """Wraps a ``torch.optim`` optimizer; ``options`` go to its constructor."""

    optim_cls: type[torch.optim.Optimizer]

    def __init__(self, net: Net, loss: Loss, lr: float, **options: Any) -> None:
        super().__init__(net, loss, lr)
        self.check_ranges(**options)
        self.opt = self._optimizer(net.parameters(), self.lr, options, f"solver {self.name}")

    @classmethod
    def _optimizer(cls, params: Any, lr: float, options: Mapping[str, Any], where: str) -> torch.optim.Optimizer:
        try:
            return cls.optim_cls(params, lr=lr, **options)
        except (TypeError, ValueError) as err:  # torch's words ("Invalid beta parameter at index 0"): name the field
            text = str(err).lower().replace("_", " ")
            named = [k for k in options if _TORCH_WORDS.get(k, k).replace("_", " ") in text]
            fields = ", ".join(f"{where.split()[0]}.{k}={options[k]!r}" for k in named) or where
            raise ValueError(f"{fields}: bad option for torch.optim.{cls.optim_cls.__name__} ({err})") from None

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        """The options of the ``torch.optim`` optimizer's constructor (``**options`` go there)."""
        return keyword_options(cls.optim_cls.__init__, cls._GIVEN)

    @classmethod
    def check_options(cls, options: Mapping[str, Any], prefix: str = "solver") -> dict[str, Any]:
        """Names, types and ranges, then torch's own checks on a dummy parameter (no data needed)."""
        out = super().check_options(options, prefix)
        device_bound = {"fused", "capturable"}  # checked against the real parameters' device only
        cls._optimizer([torch.zeros(1, requires_grad=True)], 1.0, {k: v for k, v in out.items()
                                                                  if k not in device_bound}, prefix)
        return out

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
        """The optimizer's update divided by its group's ``lr``; its state advances, the parameters do not."""
        self._sync_lr()
        loss = self._loss_backward(x, y)
        before = [p.detach().clone() for p in self.params]
        self.opt.step()
        lrs = {id(p): group["lr"] for group in self.opt.param_groups for p in group["params"]}
        with torch.no_grad():  # parameters the optimizer does not hold do not move: lr 1 keeps d = 0
            d = [(p - b) / lrs.get(id(p), 1.0) for p, b in zip(self.params, before)]
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
    label = "SGD"
    # torch.optim.SGD takes any dampening; outside [0, 1] it is no longer a moving average
    option_rules = {"momentum": NON_NEGATIVE, "dampening": number_rule(lambda x: 0 <= x <= 1, "in [0, 1]")}


@register("adagrad")
class Adagrad(TorchOptimSolver):
    optim_cls = torch.optim.Adagrad
    label = "Adagrad"


@register("adadelta")
class Adadelta(TorchOptimSolver):
    optim_cls = torch.optim.Adadelta
    label = "Adadelta"


@register("adam")
class Adam(TorchOptimSolver):
    optim_cls = torch.optim.Adam
    label = "Adam"
