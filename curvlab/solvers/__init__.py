"""Solvers: first-order baselines, KFI, EA-CG, the CR step size and the exact Hessian inverse.

Importing this package registers every solver in :data:`SOLVERS`.
"""

from curvlab.solvers import baselines  # noqa: F401  (registers sgd, adagrad, adadelta, adam)
from curvlab.solvers.base import SOLVERS, Direction, Solver, StepResult, make_solver, register
from curvlab.solvers.eacg import EACG, eacg_solve  # registers eacg
from curvlab.solvers.kfi import KFI, kfi_solve  # registers kfi
from curvlab.solvers.newton import newton_direction

__all__ = ["SOLVERS", "Direction", "Solver", "StepResult", "make_solver", "register"]
__all__ += ["EACG", "eacg_solve", "KFI", "kfi_solve", "newton_direction"]
from curvlab.solvers.cr import CR, cr_step_size  # registers cr
from curvlab.solvers.exact_inverse import ExactInverseNewton, hessian_inverse_product  # registers exact_inverse

__all__ += ["CR", "cr_step_size", "ExactInverseNewton", "hessian_inverse_product"]
