"""The one small interface that every solver shares, and the registry the runner uses.

A solver proposes a direction ``d`` (shaped like ``net.parameters()``) and, by default,
applies ``θ ← θ + lr · d``. The CR step size wraps any solver by replacing ``lr``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import Tensor

from curvlab.curvature.options import Kind
from curvlab.losses import Loss
from curvlab.modules import Net
from curvlab.solvers.options import OptionRule, keyword_options
from curvlab.typecheck import check_value

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

    ``lr`` is a plain attribute so that the runner's schedule can set it every step. The class
    attributes are the solver's entry in the registry (:data:`SOLVERS`): what the config check,
    the runner and the report know about it, declared once here.
    """

    name: ClassVar[str] = ""
    # The report's method label; ``{kind}`` is replaced by the curvature kind's label, ``{base}``
    # (wrappers) by the base solver's method label. "" means the registered name.
    label: ClassVar[str] = ""
    # Literature names of (this solver, kind) pairs, appended to the label: KFI · Fisher (KFAC).
    known_as: ClassVar[Mapping[str, str]] = {}
    # Fields of the `curvature` config group that the solver reads (the runner passes the group
    # as ``curvature=``); empty: it reads none, and runs that differ only there are the same run.
    curvature_fields: ClassVar[frozenset[str]] = frozenset()
    # Range checks of the constructor's options (:mod:`curvlab.solvers.options`).
    option_rules: ClassVar[Mapping[str, OptionRule]] = {}
    # Arguments the runner passes itself, never options of a config.
    _GIVEN: ClassVar[frozenset[str]] = frozenset({"self", "params", "net", "loss", "lr"})

    def __init__(self, net: Net, loss: Loss, lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"solver.lr must be > 0, got {lr}")
        self.net = net
        self.loss = loss
        self.lr = float(lr)

    # --- the registry entry: options and curvature, checked before any data is loaded -------------
    @classmethod
    def option_types(cls) -> dict[str, Any]:
        """The keyword options and their annotated types, read from the constructor, so that an
        option added there is accepted and type-checked without further code."""
        return keyword_options(cls.__init__, cls._GIVEN | ({"curvature"} if cls.curvature_fields else set()))

    @classmethod
    def check_ranges(cls, prefix: str = "solver", **values: Any) -> None:
        """Apply :attr:`option_rules` to ``values`` (``prefix.key`` names the field in the message)."""
        for key, value in values.items():
            rule = cls.option_rules.get(key)
            if rule is not None:
                rule.check(f"{prefix}.{key}", value)

    @classmethod
    def check_options(cls, options: Mapping[str, Any], prefix: str = "solver") -> dict[str, Any]:
        """``options`` checked against the constructor's names and types and :attr:`option_rules`.

        Raises:
            ValueError: naming ``prefix.key``, the bad value and what is allowed.
        """
        types_ = cls.option_types()
        for key in options:
            if key not in types_:
                hint = "; the curvature is chosen with curvature=NAME" if key == "curvature" else ""
                raise ValueError(
                    f"{prefix}.{key}: unknown option for solver {cls.name}; allowed: {', '.join(sorted(types_))}{hint}"
                )
        out = {k: check_value(v, types_[k], f"{prefix}.{k}") for k, v in options.items()}
        cls.check_ranges(prefix, **out)
        return out

    @classmethod
    def curvature_reader(cls, options: Mapping[str, Any]) -> type[Solver]:
        """The solver whose :attr:`curvature_fields` count for these options (a wrapper's base)."""
        return cls

    @classmethod
    def with_curvature(cls, options: Mapping[str, Any], curvature: Any) -> dict[str, Any]:
        """``options`` plus the run's ``curvature`` group where this solver reads it."""
        return {"curvature": curvature, **options} if cls.curvature_fields else dict(options)

    @classmethod
    def check_kind(cls, kind: Kind, loss: Loss) -> None:
        """Refuse a curvature kind that this solver cannot use with ``loss`` (default: any, or none read)."""

    _params: tuple[Net, list[Tensor]] | None = None

    @property
    def params(self) -> list[Tensor]:
        """``list(net.parameters())``, walked once per net (as ``torch.optim`` keeps its parameters):
        right after a curvature pass the module walk costs ≈ 50 µs, a third of :meth:`apply` on a
        784-128-128-10 net (issue 24)."""
        if self._params is None or self._params[0] is not self.net:
            self._params = (self.net, list(self.net.parameters()))
        return self._params[1]

    @abstractmethod
    def direction(self, x: Tensor, y: Tensor) -> Direction:
        """The direction ``d`` this solver would step along with step length ``lr``."""

    @torch.no_grad()
    def apply(self, d: list[Tensor], step_size: float) -> None:
        """θ ← θ + step_size · d, in one dispatch for all parameters (the same ``add_`` per tensor)."""
        params = self.params
        if len(params) != len(d):
            raise ValueError(f"{type(self).__name__}.apply: {len(d)} direction tensors for {len(params)} parameters")
        torch._foreach_add_(params, d, alpha=step_size)

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


# The solver registry: config name -> solver class (whose class attributes are its entry).
SOLVERS: dict[str, type[Solver]] = {}


def register(name: str) -> Callable[[type[Solver]], type[Solver]]:
    """Class decorator: make a solver available to configs, the runner and the report under ``name``."""

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
