"""Layer-wise Hessian-error logging for the runner (EA-CG Tables 2–5).

At a logging step the true bias blocks are computed on the current batch, and for every
kind in ``log.hessian_kinds`` the error of that kind's blocks against them, whatever kind
the run trains with. The curvature core and the error metric live in
:mod:`curvlab.curvature` and :mod:`curvlab.metrics`; they are imported lazily so that the
runner works (without this logging, with a note) while they are missing.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import replace
from typing import Any

from torch import Tensor

from curvlab.curvature.options import CurvatureOptions, Kind
from curvlab.losses import Loss
from curvlab.nets import MLP

__all__ = ["HessianLogger"]


class HessianLogger:
    """Computes ``step, layer, kind, error`` rows; ``notes`` says what was skipped and why.

    Args:
        kinds: curvature kinds to compare with the exact blocks.
        options: the run's curvature options (averaging, Fisher type, …); only ``kind`` varies.
        loss: the criterion; GN is skipped when it is not convex (GN is not PSD there).
        every: log when ``step % every == 0`` (0: never) ...
        first: ... and at each of the first ``first`` updates.
    """

    def __init__(self, kinds: list[Kind], options: CurvatureOptions, loss: Loss, every: int, first: int) -> None:
        self.options = options
        self.loss = loss
        self.every = int(every)
        self.first = int(first)
        self.notes: list[str] = []
        self.kinds = []
        for kind in kinds:
            if kind is Kind.GN and not loss.convex:
                self.notes.append(f"hessian_kinds: skipped gn, GN is not PSD for the {loss.kind.value} loss")
            else:
                self.kinds.append(kind)
        self._fns: tuple[Any, Any] | None = None
        if self.enabled:
            try:
                curvature = importlib.import_module("curvlab.curvature").curvature
                errors = importlib.import_module("curvlab.metrics").layerwise_errors
                self._fns = (curvature, errors)
            except (ImportError, AttributeError) as err:
                self.notes.append(f"hessian errors not logged: the curvature core is unavailable ({err})")

    @property
    def enabled(self) -> bool:
        return bool(self.kinds) and (self.every > 0 or self.first > 0)

    def due(self, step: int) -> bool:
        """Whether to log before update ``step + 1`` (``step`` updates done so far)."""
        if self._fns is None or not self.kinds:
            return False
        return step < self.first or (self.every > 0 and step % self.every == 0)

    def rows(self, net: MLP, x: Tensor, y: Tensor, step: int) -> list[dict[str, Any]]:
        """Errors of each kind on the batch ``(x, y)`` at the current parameters."""
        assert self._fns is not None
        curvature, errors = self._fns
        accepts_options = "options" in inspect.signature(curvature).parameters

        def blocks(kind: Kind) -> Any:
            if accepts_options:
                return curvature(net, x, y, kind, self.loss, options=replace(self.options, kind=kind))
            return curvature(net, x, y, kind, self.loss)

        exact = blocks(Kind.EXACT)
        out: list[dict[str, Any]] = []
        for kind in self.kinds:
            errs = errors(blocks(kind), exact)
            for layer, err in enumerate(_as_list(errs), start=1):
                out.append({"step": step, "layer": layer, "kind": kind.value, "error": float(err)})
        return out


def _as_list(errs: Any) -> list[float]:
    """``layerwise_errors`` may return a list, a tensor, or an object with ``.layers``."""
    if hasattr(errs, "layers"):
        errs = errs.layers
    if isinstance(errs, Tensor):
        return [float(e) for e in errs.flatten()]
    return [float(e) for e in errs]
