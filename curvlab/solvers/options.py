"""A solver's option ranges, declared once on the solver and read by its constructor and the config.

Each solver class lists an :class:`OptionRule` per option in ``option_rules``; its constructor
calls :meth:`~curvlab.solvers.base.Solver.check_ranges` and the config check calls
:meth:`~curvlab.solvers.base.Solver.check_options`, so that the two can never disagree
(``damping=0`` used to pass the config and fail after the data had loaded).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from curvlab.curvature.options import CurvatureOptions, WeightFactor
from curvlab.typecheck import type_hints

__all__ = ["OptionRule", "UNIT_INTERVAL", "POSITIVE", "NON_NEGATIVE", "COUNT", "NON_NEGATIVE_COUNT", "number_rule",
           "one_of", "keyword_options", "check_step_options"]


@dataclass(frozen=True)
class OptionRule:
    """``test(value)`` must hold; ``allowed`` says in words what does (it follows "must be")."""

    test: Callable[[Any], bool]
    allowed: str

    def check(self, field: str, value: Any) -> None:
        """Raise ``ValueError`` naming ``field``, the rule and ``value`` unless it passes (None passes)."""
        if value is None:
            return
        try:
            ok = bool(self.test(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{field} must be {self.allowed}, got {value!r}")

    def with_hint(self, hint: str) -> OptionRule:
        """The same test with ``hint`` added to the message (e.g. the values the papers use)."""
        return OptionRule(self.test, f"{self.allowed} ({hint})")


def _number(v: Any) -> float | None:
    """``v`` as a finite float, or None (booleans and strings are not numbers here)."""
    if isinstance(v, (bool, str, bytes)):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def number_rule(test: Callable[[float], bool], allowed: str, integer: bool = False) -> OptionRule:
    """A rule on finite numbers (integers only with ``integer``) that ``test`` accepts."""

    def ok(v: Any) -> bool:
        x = _number(v)
        return x is not None and (not integer or x == int(x)) and test(x)

    return OptionRule(ok, allowed)


UNIT_INTERVAL = number_rule(lambda x: 0 < x < 1, "in (0, 1)")
POSITIVE = number_rule(lambda x: x > 0, "> 0")
NON_NEGATIVE = number_rule(lambda x: x >= 0, ">= 0")
COUNT = number_rule(lambda x: x >= 1, "an integer >= 1", integer=True)
NON_NEGATIVE_COUNT = number_rule(lambda x: x >= 0, "an integer >= 0", integer=True)


def one_of(*values: str) -> OptionRule:
    """A rule that accepts exactly ``values``."""
    return OptionRule(lambda v: v in values, f"one of {', '.join(values)}")


def keyword_options(init: Callable[..., Any], given: Iterable[str]) -> dict[str, Any]:
    """The keyword parameters of ``init`` and their annotated types (``Any`` when unannotated), less ``given``."""
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    hints, given = type_hints(init), set(given)
    return {k: hints.get(k, Any) for k, p in inspect.signature(init).parameters.items()
            if k not in given and p.kind in keyword}


def check_step_options(curvature: CurvatureOptions, steps: bool) -> None:
    """Refuse the ``curvature`` options that only nets with convolutions or pooling (step nets) have:
    ``weight_factor=block`` multiplies with each layer's matrix-free block (``LayerCurvature.block_product``)
    and ``sketch`` replaces the per-sample output factors, which an MLP's batch-mean recursion never forms."""
    if steps:
        return
    if curvature.weight_factor is WeightFactor.BLOCK:
        raise ValueError("curvature.weight_factor=block needs a net with convolutions (net.layers with conv(...)); "
                         "on an MLP use rank_one or full")
    if curvature.sketch:
        raise ValueError("curvature.sketch=true needs a net with convolutions (net.layers with conv(...)); an MLP's "
                         "gn/pch blocks are exact batch means: set curvature.sketch=false")
