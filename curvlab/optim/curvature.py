"""EA-CG, KFI and the exact Newton step as ``torch.optim`` optimizers (thin: the runner's solvers).

Each class builds the solver that ``curvlab train solver=...`` builds, with the same options
and defaults (``configs/solver/*.yaml``), so an optimizer loop and a run with the same
settings make the same iterates.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from curvlab.curvature.options import CurvatureOptions, FisherType, Kind
from curvlab.losses import CrossEntropy, Loss, NonConvex
from curvlab.optim.base import LossSpec, SolverOptimizer
from curvlab.solvers.base import Solver
from curvlab.solvers.blockwise import as_curvature_options, check_kind
from curvlab.solvers.eacg import EACG as EACGSolver
from curvlab.solvers.exact_inverse import ExactInverseNewton
from curvlab.solvers.kfi import KFI as KFISolver

__all__ = ["EACG", "KFI", "Newton"]

Curvature = CurvatureOptions | dict[str, Any] | str | None


class _BlockOptimizer(SolverOptimizer):
    """Shared by EA-CG and KFI: the curvature options, checked against the loss."""

    def __init__(self, model: nn.Module, lr: float, loss: LossSpec, curvature: Curvature, options: dict[str, Any]):
        self._curvature = as_curvature_options(curvature)
        self._options = options
        super().__init__(model, lr, loss)
        self._check_loss(self.loss)

    def _check_loss(self, loss: Loss) -> None:
        opts = self._curvature
        check_kind(opts.kind, loss, type(self).__name__, isinstance(self, KFI))
        softmax = isinstance(loss, (CrossEntropy, NonConvex))
        if opts.kind is Kind.FISHER and opts.fisher is not FisherType.EMPIRICAL and not softmax:
            raise ValueError(
                f"curvature fisher={opts.fisher.value} draws labels from softmax(logits), which only the "
                f"cross_entropy and nonconvex losses model; with {loss!r} use fisher='empirical' or "
                "another kind (pch1, pch2, gn)"
            )


class EACG(_BlockOptimizer):
    """EA-CG (Chen et al., Eqs. 9–11): block-wise truncated Newton with CG, ``θ ← θ + lr · d``.

    Args:
        model: the network, a feed-forward ``nn.Sequential`` of the supported modules
            (``curvlab.supported_modules()``) ending in a Linear.
        lr: step length (``lr=1`` is the full Newton step on the blocks).
        loss: ``cross_entropy``, ``nonconvex`` (Eq. 14), ``mse``, a :class:`~curvlab.losses.Loss`
            or any twice-differentiable ``fn(logits, targets)`` returning the batch mean.
        curvature: kind name (``pch1``, ``pch2``, ``gn``, ``fisher``, ``exact``), a dict of
            :class:`~curvlab.curvature.options.CurvatureOptions` fields, or the options.
        alpha, max_cg, eps_cg, split: as ``solver=eacg`` (damping, CG limit and tolerance,
            row-wise sub-blocks).
    """

    def __init__(
        self, model: nn.Module, lr: float = 0.1, loss: LossSpec = "cross_entropy", curvature: Curvature = "pch1",
        alpha: float = 0.02, max_cg: int = 50, eps_cg: float = 0.1, split: int = 1,
    ) -> None:
        options = {"alpha": alpha, "max_cg": max_cg, "eps_cg": eps_cg, "split": split}
        super().__init__(model, lr, loss, curvature, options)

    def _build_solver(self, lr: float) -> Solver:
        return EACGSolver(self.model, self.loss, lr, curvature=self._curvature, **self._options)


class KFI(_BlockOptimizer):
    """KFI (Chen et al., Eqs. 12–13): KFAC, KFRA or PCH-KFI by curvature kind, ``θ ← θ + lr · d``.

    Args:
        model, lr, loss: as :class:`EACG`.
        curvature: a PSD kind: ``fisher`` (KFAC), ``gn`` (KFRA; convex losses), ``pch1``, ``pch2``.
        alpha, rank_one_first_layer, max_input_width, update_every: as ``solver=kfi``.
    """

    def __init__(
        self, model: nn.Module, lr: float = 0.1, loss: LossSpec = "cross_entropy", curvature: Curvature = "pch1",
        alpha: float = 0.02, rank_one_first_layer: bool = False, max_input_width: int = 4096, update_every: int = 1,
    ) -> None:
        options = {
            "alpha": alpha, "rank_one_first_layer": rank_one_first_layer,
            "max_input_width": max_input_width, "update_every": update_every,
        }
        super().__init__(model, lr, loss, curvature, options)

    def _build_solver(self, lr: float) -> Solver:
        return KFISolver(self.model, self.loss, lr, curvature=self._curvature, **self._options)


class Newton(SolverOptimizer):
    """Damped Newton with the exact inverse (Rahimi 2025): ``d = −(H + λI)⁻¹ ∇f``, ``θ ← θ + lr · d``.

    ``H`` is the full Hessian (``curvature="exact"``) or Gauss-Newton matrix (``"gn"``) of the
    batch-mean loss, inverted exactly in time linear in depth (``docs/exact_inverse.md``).

    Args:
        model, lr, loss: as :class:`EACG`.
        damping: λ > 0.
        curvature: ``exact`` or ``gn``.
        refine: iterative-refinement steps of the solve.
    """

    def __init__(
        self, model: nn.Module, lr: float = 1.0, loss: LossSpec = "cross_entropy", damping: float = 1e-3,
        curvature: str = "exact", refine: int = 0,
    ) -> None:
        self._options = {"damping": damping, "curvature": curvature, "refine": refine}
        super().__init__(model, lr, loss)

    def _build_solver(self, lr: float) -> Solver:
        return ExactInverseNewton(self.model, self.loss, lr, **self._options)
