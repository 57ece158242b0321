"""The CR step length (Bakker et al. Eq. 9) against the closed form with a dense torch.func Hessian."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from conftest import ACTIVATIONS, LOSSES, make_problem

import curvlab
from curvlab.hvp import dense_hessian, flatten, unflatten
from curvlab.solvers import make_solver
from curvlab.solvers.cr import CRStatus, cr_alpha, cr_step


def _grad(pb) -> torch.Tensor:  # type: ignore[no-untyped-def]
    pb.net.zero_grad()
    pb.loss(pb.net(pb.x), pb.y).backward()
    return flatten([p.grad for p in pb.net.parameters()])


def _model(alpha: float, gHg: float, g_grad: float, g_norm: float, sigma: float) -> float:
    """Eq. (8) along the line, minus f: α gᵀ∇f + ½ α² gᵀHg + σ/6 |α|³ ‖g‖³."""
    return alpha * g_grad + 0.5 * alpha**2 * gHg + sigma / 6 * abs(alpha) ** 3 * g_norm**3


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_cr_step_size_equals_closed_form(activation: str, loss: str) -> None:
    pb = make_problem(activation, loss, widths=(4, 3, 3, 3), batch=5)
    H = dense_hessian(pb.net, pb.x, pb.y, loss)
    grad = _grad(pb)
    g = -grad + 0.3 * grad.norm() * torch.randn_like(grad) / math.sqrt(grad.numel())
    assert g @ grad < 0  # a descent direction, as the paper assumes
    sigma = 100.0
    gHg, g_grad, norm3 = float(g @ H @ g), float(g @ grad), float(g.norm()) ** 3
    expected = (-gHg + math.sqrt(gHg**2 - 2 * g_grad * sigma * norm3)) / (sigma * norm3)
    alpha = curvlab.cr_step_size(pb.net, pb.x, pb.y, unflatten(g, pb.net), sigma=sigma, loss=loss)
    assert alpha > 0
    assert alpha == pytest.approx(expected, rel=1e-10)
    step = cr_step(pb.net, pb.x, pb.y, unflatten(g, pb.net), sigma, loss)
    assert step.status is CRStatus.OK
    assert step.g_hess_g == pytest.approx(gHg, rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("gHg", [-3.0, -1e-3, 0.0, 1e-6, 2.0, 1e4])
def test_alpha_is_the_stationary_point_that_minimises_the_model(gHg: float) -> None:
    g_grad, g_norm, sigma = -0.7, 1.3, 10.0
    alpha, status = cr_alpha(gHg, g_grad, g_norm, sigma)
    assert status is CRStatus.OK and alpha > 0
    slope = g_grad + alpha * gHg + 0.5 * sigma * alpha**2 * g_norm**3  # m'(α)
    assert abs(slope) < 1e-12 * max(1.0, abs(gHg) * alpha)
    grid = torch.linspace(0, 10 * alpha, 2001, dtype=torch.float64).tolist()
    assert _model(alpha, gHg, g_grad, g_norm, sigma) <= min(_model(a, gHg, g_grad, g_norm, sigma) for a in grid) + 1e-15


def test_non_descent_and_no_positive_root() -> None:
    # Ascent with positive curvature: m increases for every α > 0 → α = 0.
    assert cr_alpha(2.0, 0.5, 1.0, 1.0) == (0.0, CRStatus.NO_POSITIVE_ROOT)
    # Ascent with mild negative curvature: the discriminant is negative → no real root.
    assert cr_alpha(-0.1, 0.5, 1.0, 1.0) == (0.0, CRStatus.NO_POSITIVE_ROOT)
    # Ascent with strong negative curvature: a positive local minimum that lowers the model.
    alpha, status = cr_alpha(-10.0, 0.5, 1.0, 1.0)
    assert status is CRStatus.NOT_DESCENT and alpha > 0
    assert _model(alpha, -10.0, 0.5, 1.0, 1.0) < 0
    assert cr_alpha(1.0, 0.0, 0.0, 1.0) == (0.0, CRStatus.ZERO_DIRECTION)
    with pytest.raises(ValueError, match="sigma"):
        cr_alpha(1.0, -1.0, 1.0, 0.0)


def test_ascent_direction_on_a_net_is_handled_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    pb = make_problem("sigmoid", widths=(4, 3, 3), batch=4)
    grad = _grad(pb)
    with caplog.at_level(logging.WARNING, logger="curvlab.solvers.cr"):
        step = cr_step(pb.net, pb.x, pb.y, unflatten(grad, pb.net), sigma=100.0)
    assert step.g_grad > 0
    assert step.status in (CRStatus.NO_POSITIVE_ROOT, CRStatus.NOT_DESCENT)
    assert step.alpha == cr_alpha(step.g_hess_g, step.g_grad, step.g_norm, 100.0)[0]
    assert step.status.value in caplog.text


def test_cr_solver_steps_sgd_direction_with_alpha() -> None:
    pb = make_problem("tanh", widths=(4, 3, 3), batch=6)
    solver = make_solver("cr", pb.net, pb.loss, lr=0.01, base="sgd", sigma=100.0)
    grad = _grad(pb)
    expected = curvlab.cr_step_size(pb.net, pb.x, pb.y, unflatten(-grad, pb.net), sigma=100.0)
    before = flatten([p.detach().clone() for p in pb.net.parameters()])
    res = solver.step(pb.x, pb.y)
    assert res.step_size == pytest.approx(expected, rel=1e-10)
    assert res.stats["cr_status"] == CRStatus.OK.code
    after = flatten([p.detach() for p in pb.net.parameters()])
    assert torch.allclose(after, before - expected * grad, atol=1e-14)


def test_cr_solver_wraps_adam_and_checks_options() -> None:
    pb = make_problem("relu", widths=(4, 3, 3), batch=6)
    solver = make_solver("cr", pb.net, pb.loss, lr=0.1, base="adam", base_options={"betas": (0.5, 0.9)}, fallback="lr")
    steps = [solver.step(pb.x, pb.y) for _ in range(3)]
    assert all(math.isfinite(s.step_size) and s.step_size > 0 for s in steps)
    state = solver.state_dict()
    assert "base" in state and "optim" in state["base"]
    with pytest.raises(ValueError, match="unknown base"):
        make_solver("cr", pb.net, pb.loss, lr=0.1, base="lbfgs")
    with pytest.raises(ValueError, match="fallback"):
        make_solver("cr", pb.net, pb.loss, lr=0.1, fallback="skip")
    with pytest.raises(ValueError, match="bad option"):
        make_solver("cr", pb.net, pb.loss, lr=0.1, base_options={"nesterov_typo": True})
