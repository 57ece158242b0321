"""``newton_direction``: one damped Newton-type direction on a batch, by any block solver.

Every solver solves EA-CG's Eq. (9), ((1 − α) H̃ + α I) d = −g with g the gradient of the
batch-mean loss, for its own curvature H̃:

- ``eacg``: H̃ the block-diagonal curvature of ``kind``, solved block by block with CG
  (Eqs. 10–11), optionally split row-wise (``split=k``);
- ``kfi``: the Kronecker-factored inverse of Eq. (12) (an approximation of the same
  system with factored damping; ``kind`` must be PSD);
- ``exact_inverse``: H̃ the *full* Hessian (``kind="exact"``) or Gauss-Newton matrix
  (``kind="gn"``), i.e. d = −(H̃ + λ I)⁻¹ g / (1 − α) with λ = α / (1 − α), from
  :func:`curvlab.solvers.exact_inverse.hessian_inverse_product`.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from torch import Tensor

from curvlab.curvature.options import CurvatureOptions, Kind, parse_enum, reject_unknown
from curvlab.losses import Loss, make_loss
from curvlab.modules import Net
from curvlab.solvers.eacg import EACG
from curvlab.solvers.exact_inverse import hessian_inverse_product
from curvlab.solvers.kfi import KFI

__all__ = ["NewtonSolver", "newton_direction"]


class NewtonSolver(str, Enum):
    EACG = "eacg"
    KFI = "kfi"
    EXACT_INVERSE = "exact_inverse"


_CURVATURE_FIELDS = CurvatureOptions.field_names() - {"kind"}
_LOSS_FIELDS = {"delta", "eps"}  # options of the nonconvex loss, Eq. (14)
# The solvers' own options (the registry: their constructors), less those named in the signature.
_SOLVER_FIELDS = {
    NewtonSolver.EACG: set(EACG.option_types()) - {"alpha", "max_cg", "eps_cg"},
    NewtonSolver.KFI: set(KFI.option_types()) - {"alpha"},
    NewtonSolver.EXACT_INVERSE: set(),
}


def _exact_inverse_direction(net: Net, x: Tensor, y: Tensor, kind: Kind, loss: Loss, alpha: float) -> list[Tensor]:
    if kind not in (Kind.EXACT, Kind.GN):
        raise ValueError(
            f"solver=exact_inverse inverts the full matrix: kind must be 'exact' or 'gn', got {kind.value!r}"
        )
    params = list(net.parameters())
    value = loss(net(x), y)
    g = torch.autograd.grad(value, params)
    g_vec = torch.cat([gi.reshape(-1) for gi in g]).detach()
    # ((1−α) H + α I) d = −g  ⇔  d = −(H + λ I)⁻¹ g / (1 − α),  λ = α / (1 − α).
    v = hessian_inverse_product(net, x, y, g_vec, damping=alpha / (1 - alpha), loss=loss, curvature=kind.value)
    d_vec = -v / (1 - alpha)
    out, i = [], 0
    for p in params:
        out.append(d_vec[i : i + p.numel()].reshape(p.shape))
        i += p.numel()
    return out


def newton_direction(
    net: Net,
    x: Tensor,
    y: Tensor,
    kind: str | Kind = "pch1",
    solver: str | NewtonSolver = "eacg",
    loss: str | Loss = "cross_entropy",
    alpha: float = 0.02,
    max_cg: int = 50,
    eps_cg: float = 0.1,
    **options: Any,
) -> list[Tensor]:
    """The direction d of Eq. (9) on the batch ``(x, y)``, shaped like ``net.parameters()``.

    Args:
        net: a :class:`~curvlab.MLP` or a supported ``nn.Sequential`` (:mod:`curvlab.modules`);
            its parameters are not changed.
        x, y: the batch (inputs and integer labels).
        kind: curvature kind (``exact``, ``gn``, ``fisher``, ``pch1``, ``pch2``).
        solver: ``eacg``, ``kfi`` or ``exact_inverse``.
        loss: loss name (``cross_entropy``, ``nonconvex``) or a :class:`Loss`.
        alpha: identity weight of Eq. (9), 0 < α < 1.
        max_cg, eps_cg: EA-CG's stopping rule (ignored by the other solvers).
        **options: curvature options (``weight_factor``, ``jacobian_average``, ``fisher``,
            ``mc_samples``), nonconvex-loss options (``delta``, ``eps``) and solver options
            (``split`` for eacg; ``rank_one_first_layer``, ``max_input_width``, ``update_every`` for kfi).

    Returns:
        One tensor per parameter, in ``net.parameters()`` order.
    """
    which = parse_enum(NewtonSolver, solver, "solver")
    kind_ = parse_enum(Kind, kind, "kind")
    EACG.option_rules["alpha"].check("alpha", alpha)  # the solvers' own rule, for the exact inverse too
    allowed = _CURVATURE_FIELDS | _LOSS_FIELDS | _SOLVER_FIELDS[which]
    reject_unknown(options, allowed, f"newton_direction(solver={which.value})")
    loss_opts = {k: v for k, v in options.items() if k in _LOSS_FIELDS}
    loss_fn = make_loss(loss, **loss_opts)
    if which is NewtonSolver.EXACT_INVERSE:
        return _exact_inverse_direction(net, x, y, kind_, loss_fn, alpha)

    curv = CurvatureOptions(kind=kind_, **{k: v for k, v in options.items() if k in _CURVATURE_FIELDS})
    solver_opts = {k: v for k, v in options.items() if k in _SOLVER_FIELDS[which]}
    if which is NewtonSolver.EACG:
        s = EACG(net, loss_fn, 1.0, curvature=curv, alpha=alpha, max_cg=max_cg, eps_cg=eps_cg, **solver_opts)
    else:
        s = KFI(net, loss_fn, 1.0, curvature=curv, alpha=alpha, **solver_opts)
    return s.direction(x, y).d
