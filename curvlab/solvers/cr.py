"""The cubic-regularisation (CR) step length of Bakker et al. (2018), Eq. (9) / (37).

Convention (Section 3.1): the update is ``θ ← θ + α g`` where ``g`` is the base optimiser's
*search direction* (e.g. ``−∇f`` for SGD; it need not be normalised). Along that line the
cubic model of Eq. (8) is ``m(α) = f + α gᵀ∇f + ½ α² gᵀHg + σ/6 α³ ‖g‖³``, and ``m'(α) = 0`` gives

    α = (−gᵀHg + √((gᵀHg)² − 2 (gᵀ∇f) σ‖g‖³)) / (σ‖g‖³).

``gᵀHg`` and ``gᵀ∇f`` are exact batch means (the paper's third averaging option), obtained from
one forward-over-forward pass (:func:`curvlab.hvp.directional_derivatives`), not with the
paper's cost quadratic in depth. Throughout, α is the minimiser of ``m`` over ``α ≥ 0``: Eq. (9)'s root when
it is positive and lowers the model, and the fallback ``α = 0`` (no move) otherwise.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from curvlab.hvp import directional_derivatives
from curvlab.losses import Loss
from curvlab.modules import Net
from curvlab.solvers.base import SOLVERS, Direction, Solver, StepResult, make_solver, register
from curvlab.solvers.options import POSITIVE, one_of

__all__ = ["CRStatus", "CRStep", "cr_alpha", "cr_step", "cr_step_size", "CR"]

log = logging.getLogger(__name__)


class CRStatus(str, Enum):
    """How α was chosen; ``code`` is the number logged in ``StepResult.stats["cr_status"]``."""

    OK = "ok"  # gᵀ∇f < 0: Eq. (9)'s root is real and positive
    NOT_DESCENT = "not_descent"  # gᵀ∇f ≥ 0, but negative curvature gives a positive root that lowers m
    NO_POSITIVE_ROOT = "no_positive_root"  # gᵀ∇f ≥ 0 and m does not decrease for α > 0: α = 0
    ZERO_DIRECTION = "zero_direction"  # ‖g‖ = 0: α = 0

    @property
    def code(self) -> int:
        return list(CRStatus).index(self)


@dataclass(frozen=True)
class CRStep:
    """α with the quantities of Eq. (9) it was computed from."""

    alpha: float
    status: CRStatus
    g_hess_g: float  # gᵀHg
    g_grad: float  # gᵀ∇f
    g_norm: float  # ‖g‖


def cr_alpha(g_hess_g: float, g_grad: float, g_norm: float, sigma: float) -> tuple[float, CRStatus]:
    """Eq. (9) with the positive root, and the fallbacks of :class:`CRStatus`."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (weight of the cubic term, Eq. (8)), got {sigma}")
    s = sigma * g_norm**3
    if g_norm == 0 or s == 0:
        return 0.0, CRStatus.ZERO_DIRECTION
    disc = g_hess_g**2 - 2.0 * g_grad * s
    if disc >= 0:
        root = math.sqrt(disc)
        # Two algebraically equal forms of the '+' root; pick the one without cancellation.
        alpha = (root - g_hess_g) / s if g_hess_g <= 0 else -2.0 * g_grad / (g_hess_g + root)
    else:
        alpha = float("nan")
    if g_grad < 0:
        return alpha, CRStatus.OK
    if disc >= 0 and alpha > 0:
        model_change = alpha * g_grad + 0.5 * alpha**2 * g_hess_g + s * alpha**3 / 6.0
        if model_change < 0:
            return alpha, CRStatus.NOT_DESCENT
    return 0.0, CRStatus.NO_POSITIVE_ROOT


def cr_step(
    net: Net, x: Tensor, y: Tensor, direction: Sequence[Tensor], sigma: float = 100.0, loss: str | Loss = "cross_entropy"
) -> CRStep:
    """Eq. (9) for the search direction ``direction`` (list shaped like ``net.parameters()``)."""
    _, g_grad_t, g_hess_g_t = directional_derivatives(net, x, y, direction, loss)
    g_hess_g, g_grad = float(g_hess_g_t), float(g_grad_t)
    g_norm = float(torch.sqrt(sum((d * d).sum() for d in direction)))
    alpha, status = cr_alpha(g_hess_g, g_grad, g_norm, sigma)
    if status is not CRStatus.OK:
        log.warning("CR step: %s (gᵀ∇f=%.3g, gᵀHg=%.3g, ‖g‖=%.3g), α=%.3g", status.value, g_grad, g_hess_g, g_norm, alpha)
    return CRStep(alpha, status, g_hess_g, g_grad, g_norm)


def cr_step_size(
    net: Net, x: Tensor, y: Tensor, direction: Sequence[Tensor], sigma: float = 100.0, loss: str | Loss = "cross_entropy"
) -> float:
    """α of Bakker et al. Eq. (9) for the update ``θ ← θ + α · direction``.

    ``direction`` is the search direction itself (``−∇f`` for plain gradient descent), a list
    shaped like ``net.parameters()``; ``H`` and ``∇f`` are the exact full Hessian and gradient
    of the batch-mean loss. Returns 0.0 when the cubic model does not decrease along
    ``direction`` (see :class:`CRStatus`; :func:`cr_step` also returns the status).
    """
    return cr_step(net, x, y, direction, sigma, loss).alpha


@register("cr")
class CR(Solver):
    """CR as a metamethod (Bakker et al., Section 3.1): the base solver's direction, α from Eq. (9).

    The base solver's ``direction()`` is its update divided by its ``lr`` (the convention of
    :class:`~curvlab.solvers.base.Solver`), so its ``lr`` cancels and the step is
    ``θ ← θ + α d_base``: α *replaces* the learning rate, as in the paper's Eqs. (42)–(43).
    ``lr`` only reaches the base solver's constructor and, with ``fallback="lr"``, is the step
    taken when the model gives α = 0 (statuses ``no_positive_root``/``zero_direction``).

    Args:
        net, loss, lr: as for every solver.
        base: name of the base solver in ``SOLVERS`` (``sgd``, ``adagrad``, ``adadelta``, ``adam``, …).
        base_options: keyword options of the base solver (momentum, betas, …).
        sigma: σ of the cubic term (the paper uses 100 for SGD and 1000 for Adagrad/Adadelta).
        fallback: ``zero`` (do not move) or ``lr`` when the model gives no positive step.
    """

    FALLBACKS = ("zero", "lr")
    label = "{base} + CR"
    option_rules = {"sigma": POSITIVE, "fallback": one_of(*FALLBACKS)}

    def __init__(
        self,
        net: Net,
        loss: Loss,
        lr: float,
        base: str = "sgd",
        base_options: dict[str, Any] | None = None,
        sigma: float = 100.0,
        fallback: str = "zero",
    ) -> None:
        super().__init__(net, loss, lr)
        self._base_class(base)
        self.check_ranges(sigma=sigma, fallback=fallback)
        self.base = make_solver(base, net, loss, lr=lr, **(base_options or {}))
        self.sigma = float(sigma)
        self.fallback = fallback

    @classmethod
    def _base_class(cls, base: str, prefix: str = "solver") -> type[Solver]:
        """The registered solver ``base`` (any but CR itself)."""
        if base == cls.name or base not in SOLVERS:
            allowed = ", ".join(n for n in SOLVERS if n != cls.name)
            raise ValueError(f"{prefix}.base: unknown base solver {base!r} for cr; allowed: {allowed}")
        return SOLVERS[base]

    @classmethod
    def check_options(cls, options: Mapping[str, Any], prefix: str = "solver") -> dict[str, Any]:
        """CR's own options, then ``base_options`` by the base solver's rules."""
        out = super().check_options(options, prefix)
        base = cls._base_class(out.get("base", "sgd"), prefix)
        if out.get("base_options") is not None:
            out["base_options"] = base.check_options(out["base_options"], f"{prefix}.base_options")
        return out

    @classmethod
    def curvature_reader(cls, options: Mapping[str, Any]) -> type[Solver]:
        """The base solver: CR's direction is the base's, so the base reads the curvature group."""
        return cls._base_class(options.get("base", "sgd")).curvature_reader(options.get("base_options") or {})

    @classmethod
    def with_curvature(cls, options: Mapping[str, Any], curvature: Any) -> dict[str, Any]:
        base = cls._base_class(options.get("base", "sgd"))
        base_options = base.with_curvature(options.get("base_options") or {}, curvature)
        return {**options, "base_options": base_options} if base_options else dict(options)

    @classmethod
    def around(cls, base: Solver, lr: float, sigma: float = 100.0, fallback: str = "zero") -> CR:
        """CR on an already built solver (:class:`curvlab.optim.CR` passes the user's optimizer)."""
        cr = cls(base.net, base.loss, lr, sigma=sigma, fallback=fallback)
        cr.base = base  # replaces the default SGD base, which holds no state yet
        return cr

    def direction(self, x: Tensor, y: Tensor) -> Direction:
        """The base solver's direction (its state advances)."""
        return self.base.direction(x, y)

    def step(self, x: Tensor, y: Tensor) -> StepResult:
        self.base.lr = self.lr  # the runner's schedule sets lr on this solver
        dr = self.direction(x, y)
        cr = cr_step(self.net, x, y, dr.d, self.sigma, self.loss)
        alpha = cr.alpha
        if alpha == 0.0 and self.fallback == "lr" and cr.status is not CRStatus.OK:
            alpha = self.lr
        self.apply(dr.d, alpha)
        stats = {
            **dr.stats,
            "cr_status": float(cr.status.code),
            "cr_g_hess_g": cr.g_hess_g,
            "cr_g_grad": cr.g_grad,
            "cr_g_norm": cr.g_norm,
        }
        return StepResult(dr.loss, alpha, stats)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "base": self.base.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.base.load_state_dict(state["base"])
