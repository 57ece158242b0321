"""Solvers: first-order baselines, KFI, EA-CG, the CR step size and the exact Hessian inverse.

Importing this package registers every solver in :data:`SOLVERS`.
"""

from curvlab.solvers import baselines  # noqa: F401  (registers sgd, adagrad, adadelta, adam)
from curvlab.solvers.base import SOLVERS, Direction, Solver, StepResult, make_solver, register

__all__ = ["SOLVERS", "Direction", "Solver", "StepResult", "make_solver", "register"]
