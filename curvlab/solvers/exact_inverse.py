"""The exact damped Hessian inverse of Rahimi (2025), in time and memory linear in depth.

:func:`hessian_inverse_product` computes ``(H + λI)⁻¹ v`` for the *full* Hessian (or the full
Gauss-Newton matrix) of the batch-mean loss over all parameters, exactly up to round-off. It
solves the block-banded augmented system behind Rahimi's Eqs. (24)–(28) by a layer-by-layer
(Riccati) elimination rather than by his Woodbury route, which needs the non-square ``D_x`` to
be invertible; the damping λ > 0 is what makes every pivot of this elimination solvable.
Derivation, elimination order and cost: ``docs/exact_inverse.md``; the sweep: :mod:`.riccati`.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from torch import Tensor

from curvlab.curvature.options import CurvatureOptions, Kind
from curvlab.hvp import flatten, gnvp, hvp, unflatten
from curvlab.losses import Loss, make_loss
from curvlab.modules import Net, chain
from curvlab.solvers.base import Direction, Solver, register
from curvlab.solvers.options import NON_NEGATIVE_COUNT, POSITIVE
from curvlab.solvers.riccati import PivotForm, layer_terms, riccati_solve

__all__ = ["HessianKind", "hessian_inverse_product", "ExactInverseNewton"]


class HessianKind(str, Enum):
    """Which full curvature matrix to invert."""

    EXACT = "exact"  # the Hessian ∇²f (indefinite in general)
    GN = "gn"  # the Gauss-Newton matrix Σ_i J_iᵀ ∇²ξ_i J_i / B (PSD for convex losses)


def _parse_kind(curvature: str | HessianKind | Kind | CurvatureOptions) -> HessianKind:
    if isinstance(curvature, CurvatureOptions):  # the runner's `curvature` group: only its kind counts
        curvature = curvature.kind
    try:
        return HessianKind(curvature.value if isinstance(curvature, Kind) else curvature)
    except ValueError:
        allowed = ", ".join(k.value for k in HessianKind)
        raise ValueError(f"unknown curvature {curvature!r} for the exact inverse; allowed: {allowed}") from None


_DAMPING = POSITIVE.with_hint("it makes H + damping·I invertible layer by layer")


def _check_damping(damping: float) -> float:
    _DAMPING.check("damping", damping)
    return float(damping)


def _parse_pivot(pivot: str | PivotForm) -> PivotForm | None:
    if pivot == "auto":
        return None
    try:
        return PivotForm(pivot)
    except ValueError:
        allowed = ", ".join(["auto"] + [f.value for f in PivotForm])
        raise ValueError(f"unknown pivot {pivot!r} for the exact inverse; allowed: {allowed}") from None


def _refuse_steps(net: Net) -> None:
    """One line for a net with convolutions, which the Riccati sweep cannot take."""
    if chain(net).has_steps:
        raise ValueError(
            "the exact inverse (hessian_inverse_product) does not support nets with convolutions: a conv's "
            "parameter Jacobian is a sum over its output positions, so the Riccati sweep would need one input "
            "row per sample and position instead of one per sample; use solver=eacg or solver=kfi"
        )


def _layer_sizes(net: Net) -> list[int]:
    """``p_t`` per layer: how ``vec.split`` cuts (P, m) in ``parameters_to_vector`` order into the
    per-layer (p_t, m) blocks with rows (vec(W) row-major, b)."""
    return [sum(p.numel() for p in layer.parameters()) for layer in chain(net).layers]


def hessian_inverse_product(
    net: Net,
    x: Tensor,
    y: Tensor,
    vec: Tensor,
    damping: float = 1e-3,
    loss: str | Loss = "cross_entropy",
    curvature: str | HessianKind = "exact",
    refine: int = 0,
    pivot: str | PivotForm = "auto",
) -> Tensor:
    """``(H + λI)⁻¹ vec`` for the full Hessian (or Gauss-Newton matrix) of the batch-mean loss.

    Rahimi (2025), Section 6, computed by the block elimination of ``docs/exact_inverse.md``:
    one forward pass, one backward sweep that factorises one (p_t × p_t) pivot per layer, and
    one forward sweep. Each layer's pivot is eliminated in the cheaper of two forms: the
    (p_t × p_t) parameter block, or by the push-through identity a (B n_t × B n_t) state block.
    Cost O(k min(p, B n)³) and memory O(k p B n) for a net of depth k, p parameters and width
    n per layer and batch size B: linear in depth.

    Args:
        net: the network (its parameter dtype is used; float64 for exactness checks).
        x: inputs (B, …); y: integer labels (B,).
        vec: (P,) or (P, m) in ``torch.nn.utils.parameters_to_vector`` order.
        damping: λ > 0.
        loss: ``cross_entropy``, ``nonconvex`` or a :class:`~curvlab.losses.Loss`.
        curvature: ``exact`` (the Hessian) or ``gn`` (the Gauss-Newton matrix).
        refine: steps of iterative refinement, each one exact matrix-vector product per column
            and one more sweep on the residual. The layer-block elimination is not backward
            stable on an indefinite ``H + λI``; one step brings residuals of ~1e-10 down to
            round-off (``docs/exact_inverse.md``, Section 9).
        pivot: ``auto`` (the cheaper form per layer by flop count), or ``param`` / ``state`` to
            force one form on every layer (for checks and benchmarks; same result up to round-off).

    Returns:
        The solution, shaped like ``vec``.
    """
    _refuse_steps(net)
    kind = _parse_kind(curvature)
    form = _parse_pivot(pivot)
    damping = _check_damping(damping)
    crit = make_loss(loss)
    n_params = sum(p.numel() for p in net.parameters())
    if vec.dim() not in (1, 2) or vec.shape[0] != n_params:
        raise ValueError(
            f"vec must have shape ({n_params},) or ({n_params}, m): one entry per parameter in "
            f"parameters_to_vector order; got {tuple(vec.shape)}"
        )
    if not vec.is_floating_point():
        raise ValueError(f"vec must be a floating-point tensor, got dtype {vec.dtype}")
    if int(refine) != refine or refine < 0:
        raise ValueError(f"refine must be a non-negative integer (refinement steps), got {refine}")
    dtype = next(net.parameters()).dtype
    cols = vec.to(dtype).reshape(n_params, -1)  # (P, m)
    terms = layer_terms(net, x, y, crit, exact=kind is HessianKind.EXACT)
    psd = kind is HessianKind.GN and crit.convex
    product = hvp if kind is HessianKind.EXACT else gnvp
    sizes, biases = _layer_sizes(net), chain(net).biases

    def solve(rhs: Tensor) -> Tensor:
        with torch.no_grad():  # a linear solve: no graph through the factorisations
            return torch.cat(riccati_solve(terms, list(rhs.split(sizes)), damping, biases, psd, form))

    u = solve(cols)  # (P, m)
    for _ in range(int(refine)):
        applied = torch.stack([flatten(product(net, x, y, c, crit)) for c in u.T], 1) + damping * u
        u = u + solve(cols - applied)
    return u.reshape(vec.shape)


@register("exact_inverse")
class ExactInverseNewton(Solver):
    """Damped Newton with the exact inverse: ``d = −(H + λI)⁻¹ ∇f`` (Rahimi 2025, Section 6).

    Rahimi reports that damped Newton on the indefinite Hessian stalls training, so
    ``curvature="gn"`` offers the same step on the full Gauss-Newton matrix. In the runner the
    matrix is the run's ``curvature=exact|gn`` (the one place a run's curvature is set, and what
    ``summary.json`` records); the solver has no curvature option of its own there.

    Args:
        net, loss, lr: as for every solver; the update is ``θ ← θ + lr · d``.
        damping: λ > 0.
        curvature: ``exact`` or ``gn`` (or the runner's curvature options, of which only the kind counts).
        refine: iterative-refinement steps of :func:`hessian_inverse_product`.
    """

    label = "Newton ({kind})"
    curvature_fields = frozenset({"kind"})  # the full matrix: no block or Kronecker options apply
    option_rules = {"damping": _DAMPING, "refine": NON_NEGATIVE_COUNT}

    def __init__(
        self,
        net: Net,
        loss: Loss,
        lr: float,
        damping: float = 1e-3,
        curvature: str | CurvatureOptions = "exact",
        refine: int = 0,
    ) -> None:
        super().__init__(net, loss, lr)
        _refuse_steps(net)
        self.check_ranges(damping=damping, refine=refine)
        self.damping = float(damping)
        self.curvature = _parse_kind(curvature)
        self.check_kind(Kind(self.curvature.value), loss)
        self.refine = int(refine)

    @classmethod
    def check_kind(cls, kind: Kind, loss: Loss) -> None:
        allowed = [k.value for k in HessianKind if loss.convex or k is not HessianKind.GN]
        if kind.value in allowed:
            return
        why = (f"GN is not PSD for the {loss.kind.value} loss; use exact (or loss=cross_entropy)" if kind is Kind.GN
               else "it inverts the full Hessian (exact) or the full Gauss-Newton matrix (gn)")
        raise ValueError(f"curvature.kind={kind.value} with solver {cls.name}: {why}; allowed: {', '.join(allowed)}")

    def direction(self, x: Tensor, y: Tensor) -> Direction:
        params = self.params
        loss = self.loss(self.net(x), y)
        grads = torch.autograd.grad(loss, params)
        g = flatten([gr.detach() for gr in grads])
        step = hessian_inverse_product(self.net, x, y, g, self.damping, self.loss, self.curvature, self.refine)
        d = [-t for t in unflatten(step, self.net)]
        decrease = float(-(g @ step))  # gᵀd < 0 iff d is a descent direction
        return Direction(loss.item(), d, {"grad_dot_dir": decrease})

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "damping": self.damping, "curvature": self.curvature.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.damping = float(state.get("damping", self.damping))
        self.curvature = _parse_kind(state.get("curvature", self.curvature))
