"""``hessian_inverse_product`` against dense float64 solves of torch.func matrices."""

from __future__ import annotations

import pytest
import torch
from conftest import ACTIVATIONS, LOSSES, make_problem

import curvlab
from curvlab.hvp import dense_gauss_newton, dense_hessian, flatten, hvp
from curvlab.solvers import make_solver
from curvlab.solvers.exact_inverse import hessian_inverse_product
from curvlab.solvers.riccati import STATE_OVERHEAD_FLOPS, PivotForm, layer_terms, pivot_flops, pivot_forms

TOL = 1e-8


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _dense_solve(M: torch.Tensor, v: torch.Tensor, damping: float) -> torch.Tensor:
    return torch.linalg.solve(M + damping * torch.eye(M.shape[0], dtype=M.dtype), v)


def _widths(depth: int, width: int = 3, n_in: int = 4, n_out: int = 3) -> tuple[int, ...]:
    return (n_in,) + (width,) * (depth - 1) + (n_out,)


@pytest.mark.parametrize("depth", [2, 3, 5, 8, 12])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_exact_hessian_inverse(activation: str, loss: str, depth: int) -> None:
    pb = make_problem(activation, loss, widths=_widths(depth), batch=3, seed=depth)
    H = dense_hessian(pb.net, pb.x, pb.y, loss)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    got = curvlab.hessian_inverse_product(pb.net, pb.x, pb.y, v, damping=1e-2, loss=loss)
    assert _rel(got, _dense_solve(H, v, 1e-2)) < TOL


@pytest.mark.parametrize("depth", [2, 5])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gauss_newton_inverse(activation: str, loss: str, depth: int) -> None:
    pb = make_problem(activation, loss, widths=_widths(depth), batch=3, seed=depth)
    G = dense_gauss_newton(pb.net, pb.x, pb.y, loss)
    v = torch.randn(G.shape[0], dtype=torch.float64)
    got = hessian_inverse_product(pb.net, pb.x, pb.y, v, damping=1e-3, loss=loss, curvature="gn")
    assert _rel(got, _dense_solve(G, v, 1e-3)) < TOL


@pytest.mark.parametrize("batch", [1, 2, 7])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("curvature", ["exact", "gn"])
def test_batch_sizes_and_no_bias(batch: int, bias: bool, curvature: str) -> None:
    """Batches below and above the layer input size (the pivot reduction switches on and off)."""
    pb = make_problem("tanh", "nonconvex", widths=(5, 4, 4, 3), batch=batch, bias=bias)
    M = (dense_hessian if curvature == "exact" else dense_gauss_newton)(pb.net, pb.x, pb.y, "nonconvex")
    v = torch.randn(M.shape[0], 2, dtype=torch.float64)  # two right-hand sides at once
    got = hessian_inverse_product(pb.net, pb.x, pb.y, v, 1e-2, "nonconvex", curvature)
    assert got.shape == v.shape
    assert _rel(got, _dense_solve(M, v, 1e-2)) < TOL


def test_tall_skinny_width4_depth30() -> None:
    """Width 4, depth 30: the residual ‖(H + λI) u − v‖ with exact HVPs, and the dense solve."""
    pb = make_problem("tanh", "cross_entropy", widths=_widths(30, width=4), batch=3)
    v = torch.randn(sum(p.numel() for p in pb.net.parameters()), dtype=torch.float64)
    u = hessian_inverse_product(pb.net, pb.x, pb.y, v, damping=1e-2)
    residual = flatten(hvp(pb.net, pb.x, pb.y, u)) + 1e-2 * u - v
    assert residual.norm() / v.norm() < 1e-10
    H = dense_hessian(pb.net, pb.x, pb.y)
    assert _rel(u, _dense_solve(H, v, 1e-2)) < TOL


def test_inverse_of_the_last_layer_only_net() -> None:
    """A net with one linear layer: H is Σ_i (h_i h_iᵀ ⊗ ∇²ξ_i)/B, and the sweep has one pivot."""
    pb = make_problem("relu", widths=(4, 3), batch=5)
    H = dense_hessian(pb.net, pb.x, pb.y)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    assert _rel(hessian_inverse_product(pb.net, pb.x, pb.y, v, 1e-3), _dense_solve(H, v, 1e-3)) < TOL


def test_bad_inputs_raise() -> None:
    pb = make_problem()
    n = sum(p.numel() for p in pb.net.parameters())
    v = torch.ones(n, dtype=torch.float64)
    with pytest.raises(ValueError, match="damping"):
        hessian_inverse_product(pb.net, pb.x, pb.y, v, damping=0.0)
    with pytest.raises(ValueError, match=f"shape \\({n},\\)"):
        hessian_inverse_product(pb.net, pb.x, pb.y, v[:-1])
    with pytest.raises(ValueError, match="allowed: exact, gn"):
        hessian_inverse_product(pb.net, pb.x, pb.y, v, curvature="fisher")
    with pytest.raises(ValueError, match="floating-point"):
        hessian_inverse_product(pb.net, pb.x, pb.y, torch.ones(n, dtype=torch.long))


@pytest.mark.parametrize("curvature", ["exact", "gn"])
def test_solver_direction_is_damped_newton(curvature: str) -> None:
    pb = make_problem("sigmoid", widths=(4, 3, 3), batch=4)
    solver = make_solver("exact_inverse", pb.net, pb.loss, lr=1.0, damping=0.1, curvature=curvature)
    M = (dense_hessian if curvature == "exact" else dense_gauss_newton)(pb.net, pb.x, pb.y)
    pb.net.zero_grad()
    pb.loss(pb.net(pb.x), pb.y).backward()
    g = flatten([p.grad for p in pb.net.parameters()])
    dr = solver.direction(pb.x, pb.y)
    assert _rel(flatten(dr.d), -_dense_solve(M, g, 0.1)) < TOL
    before = flatten([p.detach().clone() for p in pb.net.parameters()])
    res = solver.step(pb.x, pb.y)
    assert res.step_size == 1.0
    assert torch.allclose(flatten(list(pb.net.parameters())).detach(), before + flatten(dr.d))
    if curvature == "gn":  # PSD + λI: a descent direction
        assert dr.stats["grad_dot_dir"] < 0
    with pytest.raises(ValueError, match="damping"):
        make_solver("exact_inverse", pb.net, pb.loss, lr=1.0, damping=-1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    pb = make_problem("tanh", "nonconvex", widths=_widths(6), batch=4)
    v = torch.randn(sum(p.numel() for p in pb.net.parameters()), dtype=torch.float64)
    cpu = hessian_inverse_product(pb.net, pb.x, pb.y, v, 1e-2, "nonconvex")
    gpu = make_problem("tanh", "nonconvex", widths=_widths(6), batch=4, device="cuda")
    got = hessian_inverse_product(gpu.net, gpu.x, gpu.y, v.cuda(), 1e-2, "nonconvex")
    assert _rel(got.cpu(), cpu) < 1e-10


@pytest.mark.parametrize("curvature", ["exact", "gn"])
def test_refinement_reaches_round_off(curvature: str) -> None:
    """An ill-conditioned indefinite case: one refinement step brings the residual to round-off."""
    pb = make_problem("tanh", "nonconvex", widths=_widths(5, width=4), batch=3, seed=2)  # cond ≈ 2e4
    M = (dense_hessian if curvature == "exact" else dense_gauss_newton)(pb.net, pb.x, pb.y, "nonconvex")
    A = M + 1e-2 * torch.eye(M.shape[0], dtype=torch.float64)
    v = torch.randn(M.shape[0], dtype=torch.float64)
    plain = hessian_inverse_product(pb.net, pb.x, pb.y, v, 1e-2, "nonconvex", curvature)
    refined = hessian_inverse_product(pb.net, pb.x, pb.y, v, 1e-2, "nonconvex", curvature, refine=1)
    res_plain, res_refined = ((A @ u - v).norm() / v.norm() for u in (plain, refined))
    assert res_refined < 1e-12
    assert res_refined < res_plain or res_plain < 1e-13
    with pytest.raises(ValueError, match="refine"):
        hessian_inverse_product(pb.net, pb.x, pb.y, v, refine=-1)


# Pivot forms (issue 9): the (p_t × p_t) parameter pivot, or its push-through restriction to
# range(B_tᵀ), of size n_t · rank(inputs) ≤ B n_t, chosen per layer by flop count.
FLIP_SHAPES = [  # (widths, batch): wide layers, layers with B > n_{t-1} + 1, and nets that mix both
    ((12, 10, 10, 3), 3),
    ((12, 3, 8, 3), 5),
    ((4, 6, 6, 3), 7),
]


@pytest.mark.parametrize("pivot", ["auto", "param", "state"])
@pytest.mark.parametrize("curvature", ["exact", "gn"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("widths", "batch"), FLIP_SHAPES)
def test_every_pivot_form_matches_dense(
    widths: tuple[int, ...], batch: int, bias: bool, curvature: str, pivot: str
) -> None:
    pb = make_problem("tanh", "cross_entropy", widths=widths, batch=batch, bias=bias, seed=batch)
    M = (dense_hessian if curvature == "exact" else dense_gauss_newton)(pb.net, pb.x, pb.y)
    v = torch.randn(M.shape[0], 2, dtype=torch.float64)
    got = hessian_inverse_product(pb.net, pb.x, pb.y, v, 1e-3, curvature=curvature, pivot=pivot)
    assert _rel(got, _dense_solve(M, v, 1e-3)) < TOL


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_wide_net_inverse(activation: str, loss: str) -> None:
    """Wide hidden layers (n_{t-1} + 1 > B) on the push-through pivot, for every activation and loss."""
    pb = make_problem(activation, loss, widths=(10, 9, 9, 9, 3), batch=3, seed=1)
    for curvature, dense in (("exact", dense_hessian), ("gn", dense_gauss_newton)):
        M = dense(pb.net, pb.x, pb.y, loss)
        v = torch.randn(M.shape[0], dtype=torch.float64)
        got = hessian_inverse_product(pb.net, pb.x, pb.y, v, 1e-3, loss, curvature, pivot="state")
        assert _rel(got, _dense_solve(M, v, 1e-3)) < TOL


@pytest.mark.parametrize("curvature", ["exact", "gn"])
def test_choice_flips_between_layers(curvature: str) -> None:
    """Layers 1, 2 and 4 wide (B = 8 < n_{t-1} + 1), layer 3 narrow: the chosen forms mix, and match dense."""
    pb = make_problem("sigmoid", widths=(40, 40, 6, 40, 3), batch=8, seed=5)
    terms = layer_terms(pb.net, pb.x, pb.y, pb.loss, exact=curvature == "exact")
    assert pivot_forms(terms, bias=True) == [PivotForm.STATE, PivotForm.STATE, PivotForm.PARAM, PivotForm.STATE]
    M = (dense_hessian if curvature == "exact" else dense_gauss_newton)(pb.net, pb.x, pb.y)
    v = torch.randn(M.shape[0], dtype=torch.float64)
    got = hessian_inverse_product(pb.net, pb.x, pb.y, v, 1e-3, curvature=curvature)
    assert _rel(got, _dense_solve(M, v, 1e-3)) < TOL


@pytest.mark.parametrize("curvature", ["exact", "gn"])
def test_input32_width32_depth4_batch4(curvature: str) -> None:
    """The wide shape of issue 9 (P = 3498) against the dense solve and by its HVP residual."""
    pb = make_problem("tanh", widths=(32, 32, 32, 32, 10), batch=4, seed=3)
    M = (dense_hessian if curvature == "exact" else dense_gauss_newton)(pb.net, pb.x, pb.y)
    v = torch.randn(M.shape[0], dtype=torch.float64)
    got = hessian_inverse_product(pb.net, pb.x, pb.y, v, 1e-3, curvature=curvature)
    assert _rel(got, _dense_solve(M, v, 1e-3)) < TOL
    A = M + 1e-3 * torch.eye(M.shape[0], dtype=torch.float64)
    assert ((A @ got - v).norm() / v.norm()).item() < TOL


def test_pivot_form_follows_the_flop_count() -> None:
    """STATE where it saves more than its fixed overhead, else PARAM (ties included)."""
    # tiny layers: the saving is below the SVD/projection overhead of the STATE form
    pb = make_problem(widths=(12, 3, 8, 3), batch=5)
    assert set(pivot_forms(layer_terms(pb.net, pb.x, pb.y, pb.loss, exact=True), True)) == {PivotForm.PARAM}
    # 64/32/16/16 of the benchmark: pivots of 512 instead of 1056 on the hidden layers
    state, param = (pivot_flops(f, 16, 32, 32, True, first=False) for f in (PivotForm.STATE, PivotForm.PARAM))
    assert 3.5 < param / state < 4.5
    # a tie (B = n_{t-1} + 1, the inputs span everything) keeps the parameter pivot, with no overhead
    assert pivot_flops(PivotForm.STATE, 5, 3, 4, True, False) == pivot_flops(PivotForm.PARAM, 5, 3, 4, True, False)
    assert pivot_flops(PivotForm.STATE, 4, 3, 4, True, False) > STATE_OVERHEAD_FLOPS


@pytest.mark.parametrize("curvature", ["exact", "gn"])
def test_repeated_samples_rank_deficient_inputs(curvature: str) -> None:
    """Every sample twice: the layer inputs have rank 2 < B, and the push-through basis has rank 2."""
    pb = make_problem("relu", widths=(10, 8, 8, 3), batch=2, seed=4)
    x, y = torch.cat([pb.x, pb.x]), torch.cat([pb.y, pb.y])
    M = (dense_hessian if curvature == "exact" else dense_gauss_newton)(pb.net, x, y)
    v = torch.randn(M.shape[0], dtype=torch.float64)
    got = hessian_inverse_product(pb.net, x, y, v, 1e-3, curvature=curvature, pivot="state")
    assert _rel(got, _dense_solve(M, v, 1e-3)) < TOL


def test_zero_inputs_without_bias() -> None:
    """x = 0 and no biases: the first layer's inputs have rank 0 (B_1 = 0, its pivot is λI)."""
    pb = make_problem("tanh", widths=(6, 5, 3), batch=2, bias=False)
    x = torch.zeros_like(pb.x)
    H = dense_hessian(pb.net, x, pb.y)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    got = hessian_inverse_product(pb.net, x, pb.y, v, 1e-2, pivot="state")
    assert _rel(got, _dense_solve(H, v, 1e-2)) < TOL


def test_unknown_pivot_raises() -> None:
    pb = make_problem()
    v = torch.ones(sum(p.numel() for p in pb.net.parameters()), dtype=torch.float64)
    with pytest.raises(ValueError, match="pivot 'dense'.*allowed: auto, param, state"):
        hessian_inverse_product(pb.net, pb.x, pb.y, v, pivot="dense")
