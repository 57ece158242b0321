"""EA-CG, KFI and CR on a tiny conv net (float64): one step lowers the loss on a fixed batch, and the
directions equal a dense solve with the same blocks; the exact inverse refuses conv nets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import curvlab
from curvlab.curvature import CurvatureOptions
from curvlab.losses import make_loss
from curvlab.solvers import make_solver
from curvlab.curvature.reference import pch_sample_blocks
from curvlab.solvers.kfi import trace_ratio

DT = torch.float64
ALPHA = 0.05


def _problem() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 2), nn.Tanh(),
        nn.Flatten(), nn.Linear(4 * 2 * 2, 3),
    ).to(DT)
    return net, torch.randn(8, 2, 6, 6, dtype=DT), torch.randint(0, 3, (8,))


@torch.no_grad()
def _value(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(make_loss("cross_entropy")(net(x), y))


def _dense_eacg(blk, weight_factor: str) -> tuple[torch.Tensor, torch.Tensor]:
    """((1 − α) G ⊗ M + α I) vec(D) = −vec(∇_W) (row-major), ((1 − α) B + α I) d_b = −∇_b, by LU."""
    m = torch.outer(blk.input_mean, blk.input_mean) if weight_factor == "rank_one" else blk.input_cov
    a_w = (1 - ALPHA) * torch.kron(blk.out_factor, m) + ALPHA * torch.eye(blk.grad_weight.numel(), dtype=DT)
    d_w = torch.linalg.solve(a_w, -blk.grad_weight.flatten()).view_as(blk.grad_weight)
    a_b = (1 - ALPHA) * blk.bias + ALPHA * torch.eye(blk.n_out, dtype=DT)
    return d_w, torch.linalg.solve(a_b, -blk.grad_bias)


def _dense_kfi(blk) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (12) by explicit inverses: d_W = −(G + √α/π I)⁻¹ ∇_W (A + π√α I)⁻¹, d_b = −(B + √α/π I)⁻¹ ∇_b."""
    g, a = blk.out_factor, blk.input_cov
    pi = trace_ratio(float(a.trace()), blk.n_in, float(g.trace()), blk.n_out)
    eye_g, eye_a = torch.eye(blk.n_out, dtype=DT), torch.eye(blk.n_in, dtype=DT)
    inv_a = torch.linalg.inv(a + pi * math.sqrt(ALPHA) * eye_a)
    d_w = -torch.linalg.inv(g + math.sqrt(ALPHA) / pi * eye_g) @ blk.grad_weight @ inv_a
    return d_w, -torch.linalg.solve(blk.bias + math.sqrt(ALPHA) / pi * eye_g, blk.grad_bias)


def _check_direction_and_step(solver, net: nn.Sequential, x, y, dense: list) -> None:
    """The solver's direction equals the dense one per layer (in W's shape), and its step lowers the loss."""
    d = solver.direction(x, y).d
    layers = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    for t, ((d_w, d_b), lay) in enumerate(zip(dense, layers, strict=True)):
        assert d[2 * t].shape == lay.weight.shape
        torch.testing.assert_close(d[2 * t].flatten(1), d_w, rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(d[2 * t + 1], d_b, rtol=1e-7, atol=1e-10)
    before = _value(net, x, y)
    solver.step(x, y)
    assert _value(net, x, y) < before


@pytest.mark.parametrize("kfac_type", ["expand", "reduce"])
@pytest.mark.parametrize("weight_factor", ["rank_one", "full"])
def test_eacg_step_is_the_dense_solve_and_lowers_the_loss(kfac_type: str, weight_factor: str) -> None:
    net, x, y = _problem()
    curv = {"kind": "pch1", "kfac_type": kfac_type, "weight_factor": weight_factor}
    blocks = curvlab.curvature(net, x, y, options=CurvatureOptions(**curv), input_cov=True)
    solver = make_solver(
        "eacg", net, make_loss("cross_entropy"), lr=0.5, curvature=curv, alpha=ALPHA, max_cg=500, eps_cg=1e-12
    )
    _check_direction_and_step(solver, net, x, y, [_dense_eacg(blk, weight_factor) for blk in blocks])


@pytest.mark.parametrize("kind", ["fisher", "gn", "pch2"])
def test_kfi_step_is_the_dense_kronecker_inverse_and_lowers_the_loss(kind: str) -> None:
    net, x, y = _problem()
    curv = {"kind": kind, "fisher": "exact"}
    blocks = curvlab.curvature(net, x, y, options=CurvatureOptions(**curv), input_cov=True)
    assert blocks[0].kron_out is not None  # expand (default): G of the weight is not the bias block
    solver = make_solver("kfi", net, make_loss("cross_entropy"), lr=0.5, curvature=curv, alpha=ALPHA)
    assert solver.input_needs(x.shape[0]) == ({0, 1}, {2})  # the Linear layer in the Woodbury form
    _check_direction_and_step(solver, net, x, y, [_dense_kfi(blk) for blk in blocks])
    assert [inv.mode for inv in solver._inverses] == ["cholesky", "cholesky", "gram"]


@pytest.mark.parametrize("base", ["sgd", "eacg", "kfi"])
def test_cr_step_size_on_every_base_lowers_the_loss(base: str) -> None:
    net, x, y = _problem()
    loss = make_loss("cross_entropy")
    solver = make_solver("cr", net, loss, lr=0.1, base=base, sigma=10.0)
    before = _value(net, x, y)
    res = solver.step(x, y)
    assert res.stats["cr_status"] == 0.0 and res.step_size > 0  # CRStatus.OK: Eq. (9)'s positive root
    assert _value(net, x, y) < before


def test_exact_inverse_refuses_conv_nets_with_the_reason() -> None:
    net, x, y = _problem()
    with pytest.raises(ValueError, match=r"does not support nets with convolutions: a conv's parameter Jacobian"):
        curvlab.hessian_inverse_product(net, x, y, torch.ones(sum(p.numel() for p in net.parameters()), dtype=DT))
    with pytest.raises(ValueError, match=r"sum over its output positions"):
        make_solver("exact_inverse", net, make_loss("cross_entropy"), lr=1.0)


def test_eacg_on_the_matrix_free_weight_blocks_is_the_dense_solve() -> None:
    net, x, y = _problem()
    loss = make_loss("cross_entropy")
    refs = pch_sample_blocks(net, x, y, loss, "abs")  # the per-sample-chain PCH-1 blocks, formed
    blocks = curvlab.curvature(net, x, y, kind="pch1")
    dense = []
    for blk, ref in zip(blocks, refs):
        a_w = (1 - ALPHA) * ref.weight + ALPHA * torch.eye(len(ref.weight), dtype=DT)
        d_w = torch.linalg.solve(a_w, -blk.grad_weight.flatten()).view_as(blk.grad_weight)
        dense.append((d_w, torch.linalg.solve((1 - ALPHA) * ref.bias + ALPHA * torch.eye(blk.n_out, dtype=DT),
                                              -blk.grad_bias)))
    curv = {"kind": "pch1", "weight_factor": "block"}
    solver = make_solver("eacg", net, loss, lr=0.5, curvature=curv, alpha=ALPHA, max_cg=500, eps_cg=1e-12)
    _check_direction_and_step(solver, net, x, y, dense)
    mlp = nn.Sequential(nn.Linear(3, 2)).to(DT)
    with pytest.raises(ValueError, match=r"weight_factor=block needs a net with convolutions"):
        make_solver("eacg", mlp, loss, lr=0.5, curvature=curv).direction(x[:, 0, 0, :3], y % 2)
