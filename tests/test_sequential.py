"""Curvature, solvers and the exact inverse on feed-forward ``nn.Sequential`` nets (float64).

The nets mix activations, start with a Flatten of image-shaped inputs, and contain
Linear → Linear, no-bias layers, nested Sequentials, composed activations and eval-mode
Dropout. References: ``torch.func.hessian`` (exact blocks), the in-package loops of
:mod:`curvlab.curvature.reference` (gn, pch1, pch2, fisher), dense solves (exact inverse)
and the closed form of Eq. (9) of Bakker et al. (CR).
"""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from conftest import rel_err
from test_curvature import EA_KINDS
from torch import nn

import curvlab
from curvlab.curvature import reference as ref
from curvlab.curvature.options import FisherType, JacobianAverage
from curvlab.hvp import dense_gauss_newton, dense_hessian, flatten, unflatten
from curvlab.losses import make_loss
from curvlab.modules import chain

IMAGE = (2, 2, 3)  # inputs (B, 2, 2, 3) flattened to 12 features


def _flat_mixed() -> nn.Sequential:
    """Flatten, tanh, a no-bias layer straight into another Linear, GELU, a linear output."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 4, bias=False), nn.Linear(4, 4), nn.GELU(),
        nn.Linear(4, 3),
    )


def _smooth_mixed() -> nn.Sequential:
    """SiLU, Softplus below its threshold and a composition (ELU then Sigmoid), nested, eval Dropout."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Sequential(nn.Linear(12, 4), nn.SiLU(), nn.Dropout(0.5)),
        nn.Linear(4, 4, bias=False), nn.Softplus(beta=1.5, threshold=3.0),
        nn.Linear(4, 4), nn.ELU(alpha=0.7), nn.Identity(), nn.Sigmoid(),
        nn.Linear(4, 3, bias=False),
    )


def _kinked_mixed() -> nn.Sequential:
    """ReLU and LeakyReLU (zero second derivative) with Sigmoid; no Flatten (2-D inputs)."""
    return nn.Sequential(
        nn.Linear(12, 4), nn.LeakyReLU(0.2), nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 4), nn.ReLU(),
        nn.Linear(4, 3),
    )


NETS: dict[str, Callable[[], nn.Sequential]] = {
    "flat_mixed": _flat_mixed, "smooth_mixed": _smooth_mixed, "kinked_mixed": _kinked_mixed,
}
CASES = [(n, l) for n in NETS for l in ("cross_entropy", "nonconvex")]


def _problem(name: str, loss: str = "cross_entropy", batch: int = 6, seed: int = 0):
    """A seeded net in eval mode with weights U(±0.8) and inputs large enough that the
    activations leave their linear range (the residual terms are not negligible)."""
    torch.manual_seed(seed)
    net = NETS[name]().double().eval()
    for p in net.parameters():
        nn.init.uniform_(p, -0.8, 0.8)
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 12) if name == "kinked_mixed" else (batch, *IMAGE)
    x = 2.0 * torch.randn(*shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (batch,), generator=gen)
    return net, x, y, make_loss(loss)


def _ids(case: tuple[str, str]) -> str:
    return "-".join(case)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_exact_blocks_equal_torch_func_hessian(case: tuple[str, str]) -> None:
    net, x, y, loss = _problem(*case)
    blocks = curvlab.curvature(net, x, y, kind="exact", loss=loss, weight_blocks=True, chunk_size=4)
    true_bias = ref.hessian_blocks(net, x, y, loss)
    true_weight = ref.hessian_blocks(net, x, y, loss, weights=True)
    assert len(blocks) == len(true_bias) == 4
    for blk, hb, hw in zip(blocks, true_bias, true_weight, strict=True):
        assert hb.abs().max() > 1e-4  # not vacuous
        torch.testing.assert_close(blk.bias, hb, rtol=0, atol=1e-10)
        torch.testing.assert_close(blk.weight, hw, rtol=0, atol=1e-10)


def test_one_layer_after_an_input_transform() -> None:
    """Modules before the first Linear (here Flatten, Tanh) only transform the input; depth 1."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Tanh(), nn.Linear(12, 3)).double()
    x, y = 2 * torch.randn(5, *IMAGE, dtype=torch.float64), torch.randint(0, 3, (5,))
    loss = make_loss("cross_entropy")
    (blk,) = curvlab.curvature(net, x, y, kind="exact", loss=loss, weight_blocks=True)
    torch.testing.assert_close(blk.bias, ref.hessian_blocks(net, x, y, loss)[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(blk.weight, ref.hessian_blocks(net, x, y, loss, weights=True)[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(blk.input_mean, torch.tanh(x.flatten(1)).mean(0))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_gradients_and_bias_flags(case: tuple[str, str]) -> None:
    net, x, y, loss = _problem(*case)
    blocks = curvlab.curvature(net, x, y, kind="gn", loss=loss)
    net.zero_grad()
    loss(net(x), y).backward()
    linears = chain(net).layers
    for blk, lin in zip(blocks, linears, strict=True):
        torch.testing.assert_close(blk.grad_weight, lin.weight.grad, rtol=0, atol=1e-12)
        assert blk.has_bias == (lin.bias is not None)
        if lin.bias is not None:
            torch.testing.assert_close(blk.grad_bias, lin.bias.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("average", ["per_sample", "mean"])
def test_ea_kinds_equal_reference(case: tuple[str, str], average: str) -> None:
    net, x, y, loss = _problem(*case)
    for kind, (output, residual) in EA_KINDS.items():
        blocks = curvlab.curvature(net, x, y, kind=kind, loss=loss, jacobian_average=average)
        want = ref.ea_blocks(net, x, y, loss, output, residual, JacobianAverage(average))
        for blk, w in zip(blocks, want, strict=True):
            assert rel_err(blk.bias, w) < 1e-12, kind


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("fisher", ["exact", "empirical"])
def test_fisher_equals_reference(name: str, fisher: str) -> None:
    net, x, y, loss = _problem(name)
    blocks = curvlab.curvature(net, x, y, kind="fisher", loss=loss, fisher=fisher, chunk_size=4)
    for blk, w in zip(blocks, ref.fisher_blocks(net, x, y, loss, FisherType(fisher)), strict=True):
        assert w.abs().max() > 1e-8
        assert rel_err(blk.bias, w) < 1e-12


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_mlp_and_its_sequential_give_the_same_blocks(activation: str) -> None:
    """``MLP.as_sequential`` shares the parameters; the generic path equals the fused one."""
    torch.manual_seed(0)
    mlp = curvlab.MLP([12, 5, 4, 3], activation, init="uniform", init_scale=0.8).double()
    seq = mlp.as_sequential()
    x, y = 2 * torch.randn(6, *IMAGE, dtype=torch.float64), torch.randint(0, 3, (6,))
    torch.testing.assert_close(seq(x), mlp(x), rtol=0, atol=0)
    for kind in ("exact", "gn", "pch1", "pch2", "fisher"):
        gens = [torch.Generator().manual_seed(1) for _ in range(2)]
        a = curvlab.curvature(mlp, x, y, kind=kind, generator=gens[0])
        b = curvlab.curvature(seq, x, y, kind=kind, generator=gens[1])
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u.bias, v.bias, rtol=1e-13, atol=1e-15)
            torch.testing.assert_close(u.grad_weight, v.grad_weight, rtol=1e-13, atol=1e-15)
    errs = curvlab.layerwise_errors(curvlab.curvature(seq, x, y, kind="pch1"), curvlab.curvature(seq, x, y, "exact"))
    assert len(errs) == 3 and all(math.isfinite(e) for e in errs)


@pytest.mark.parametrize("curv", ["exact", "gn"])
@pytest.mark.parametrize("name", NETS)
def test_hessian_inverse_product_equals_dense_solve(name: str, curv: str) -> None:
    net, x, y, loss = _problem(name, batch=3)
    mat = (dense_hessian if curv == "exact" else dense_gauss_newton)(net, x, y, loss)
    v = torch.randn(mat.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = curvlab.hessian_inverse_product(net, x, y, v, damping=1e-2, loss=loss, curvature=curv)
    want = torch.linalg.solve(mat + 1e-2 * torch.eye(mat.shape[0], dtype=mat.dtype), v)
    assert ((got - want).norm() / want.norm()).item() < 1e-8


@pytest.mark.parametrize("name", NETS)
def test_cr_step_size_equals_closed_form(name: str) -> None:
    net, x, y, loss = _problem(name, "nonconvex", batch=5)
    H = dense_hessian(net, x, y, loss)
    net.zero_grad()
    loss(net(x), y).backward()
    grad = flatten([p.grad for p in net.parameters()])
    g = -grad
    sigma = 100.0
    gHg, g_grad, norm3 = float(g @ H @ g), float(g @ grad), float(g.norm()) ** 3
    expected = (-gHg + math.sqrt(gHg**2 - 2 * g_grad * sigma * norm3)) / (sigma * norm3)
    alpha = curvlab.cr_step_size(net, x, y, unflatten(g, net), sigma=sigma, loss=loss)
    assert alpha > 0 and alpha == pytest.approx(expected, rel=1e-10)


def _drop_bias(net: nn.Sequential, index: int) -> nn.Sequential:
    """A copy of ``net`` whose module ``index`` (a Linear with a zero bias) has no bias: the same function."""
    mods = [m for m in net]
    old = mods[index]
    new = nn.Linear(old.in_features, old.out_features, bias=False).double()
    new.weight.data.copy_(old.weight.data)
    mods[index] = new
    return nn.Sequential(*mods).eval()


@pytest.mark.parametrize("solver", ["eacg", "kfi"])
def test_newton_direction_with_a_no_bias_layer(solver: str) -> None:
    """Bias and weight systems are separate (EA-CG Eq. 10, KFI Eq. 12): removing a zero bias leaves
    every weight direction unchanged and drops exactly that bias entry."""
    net, x, y, loss = _problem("kinked_mixed")
    nn.init.zeros_(net[2].bias)
    lean = _drop_bias(net, 2)
    torch.testing.assert_close(lean(x), net(x), rtol=0, atol=0)
    opts = {"kind": "pch1", "solver": solver, "alpha": 0.05, "max_cg": 200, "eps_cg": 1e-12}
    full = curvlab.newton_direction(net, x, y, **opts)
    part = curvlab.newton_direction(lean, x, y, **opts)
    assert [d.shape for d in part] == [p.shape for p in lean.parameters()]
    kept = [d for d, (name, _) in zip(full, net.named_parameters(), strict=True) if name != "2.bias"]
    for a, b in zip(kept, part, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert sum(d.abs().sum() for d in part) > 0


def test_newton_direction_of_an_mlp_and_its_sequential_agree() -> None:
    torch.manual_seed(0)
    mlp = curvlab.MLP([12, 5, 4, 3], "tanh", init="uniform", init_scale=0.8).double()
    x, y = 2 * torch.randn(6, 12, dtype=torch.float64), torch.randint(0, 3, (6,))
    for solver in ("eacg", "kfi", "exact_inverse"):
        kind = "gn" if solver == "exact_inverse" else "pch1"
        a = curvlab.newton_direction(mlp, x, y, kind=kind, solver=solver)
        b = curvlab.newton_direction(mlp.as_sequential(), x, y, kind=kind, solver=solver)
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-13)
