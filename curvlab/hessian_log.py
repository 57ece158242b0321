"""Layer-wise Hessian-error logging for the runner (EA-CG Tables 2–5).

At a logging step the true bias blocks are computed on the current batch, and for every
kind in ``log.hessian_kinds`` the error of that kind's blocks against them
(:func:`curvlab.metrics.layerwise_errors`), whatever kind the run trains with.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import Tensor

from curvlab.curvature import curvature
from curvlab.curvature.options import CurvatureOptions, Kind
from curvlab.losses import Loss
from curvlab.metrics import layerwise_errors
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

    def due(self, step: int) -> bool:
        """Whether to log before update ``step + 1`` (``step`` updates done so far)."""
        if not self.kinds:
            return False
        return step < self.first or (self.every > 0 and step % self.every == 0)

    def rows(self, net: MLP, x: Tensor, y: Tensor, step: int) -> list[dict[str, Any]]:
        """Errors of each kind on the batch ``(x, y)`` at the current parameters."""

        def blocks(kind: Kind) -> Any:
            return curvature(net, x, y, kind, self.loss, options=replace(self.options, kind=kind))

        exact = blocks(Kind.EXACT)
        out: list[dict[str, Any]] = []
        for kind in self.kinds:
            for layer, err in enumerate(layerwise_errors(blocks(kind), exact), start=1):
                out.append({"step": step, "layer": layer, "kind": kind.value, "error": float(err)})
        return out
