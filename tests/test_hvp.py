"""HVP helpers against the dense torch.func Hessian and Gauss-Newton matrix (float64)."""

from __future__ import annotations

import pytest
import torch
from conftest import ACTIVATIONS, LOSSES, make_problem

from curvlab.hvp import (
    dense_gauss_newton,
    dense_hessian,
    directional_derivatives,
    flatten,
    gnvp,
    grad_and_hvp,
    hvp,
    unflatten,
)
from curvlab.losses import make_loss
from curvlab.nets import MLP


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_hvp_matches_dense_hessian(activation: str, loss: str) -> None:
    pb = make_problem(activation, loss, widths=(5, 4, 4, 3), batch=4)
    H = dense_hessian(pb.net, pb.x, pb.y, loss)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    ref = H @ v
    assert _rel(flatten(hvp(pb.net, pb.x, pb.y, v, loss)), ref) < 1e-12
    g, hv = grad_and_hvp(pb.net, pb.x, pb.y, unflatten(v, pb.net), loss)
    assert _rel(flatten(hv), ref) < 1e-12
    pb.net.zero_grad()
    pb.loss(pb.net(pb.x), pb.y).backward()
    assert _rel(flatten(g), flatten([p.grad for p in pb.net.parameters()])) < 1e-12


def test_dense_hessian_is_the_autograd_hessian() -> None:
    """The flat-vector reference against a column-by-column double backward."""
    pb = make_problem("tanh", widths=(3, 3, 2), batch=3)
    H = dense_hessian(pb.net, pb.x, pb.y)
    cols = [flatten(hvp(pb.net, pb.x, pb.y, e)) for e in torch.eye(H.shape[0], dtype=torch.float64)]
    assert torch.allclose(H, torch.stack(cols, 1), atol=1e-12)
    assert torch.allclose(H, H.T, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
def test_gnvp_matches_dense_gauss_newton(loss: str) -> None:
    pb = make_problem("sigmoid", loss, widths=(4, 3, 3), batch=5, bias=False)
    G = dense_gauss_newton(pb.net, pb.x, pb.y, loss)
    v = torch.randn(G.shape[0], dtype=torch.float64)
    assert _rel(flatten(gnvp(pb.net, pb.x, pb.y, v, loss)), G @ v) < 1e-12
    # For a net with one linear layer the residual term vanishes: GN equals the Hessian.
    lin = make_problem("sigmoid", loss, widths=(4, 3), batch=5)
    assert torch.allclose(dense_gauss_newton(lin.net, lin.x, lin.y, loss), dense_hessian(lin.net, lin.x, lin.y, loss))


def test_bad_vector_shapes_are_rejected() -> None:
    pb = make_problem()
    n = sum(p.numel() for p in pb.net.parameters())
    with pytest.raises(ValueError, match="length"):
        hvp(pb.net, pb.x, pb.y, torch.zeros(n + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="shaped like net.parameters"):
        hvp(pb.net, pb.x, pb.y, [torch.zeros(2)])


@pytest.mark.parametrize("loss", ["cross_entropy", "nonconvex"])
def test_directional_derivatives_match_the_dense_hessian(loss: str) -> None:
    """Forward-over-forward (f, vᵀ∇f, vᵀHv) equals the loss, the gradient and the dense Hessian."""
    torch.manual_seed(3)
    net = MLP([5, 4, 3, 3], "tanh").double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    v = torch.randn(sum(p.numel() for p in net.parameters()), dtype=torch.float64)
    f, d1, d2 = directional_derivatives(net, x, y, v, loss)
    H = dense_hessian(net, x, y, loss)
    params = list(net.parameters())
    g = flatten(torch.autograd.grad(make_loss(loss)(net(x), y), params))
    assert torch.allclose(f, make_loss(loss)(net(x), y).detach(), rtol=1e-12)
    assert torch.allclose(d1, g @ v, rtol=1e-10)
    assert torch.allclose(d2, v @ H @ v, rtol=1e-10)
