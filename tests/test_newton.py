"""``newton_direction`` against dense torch.func references on tiny float64 nets."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, hessian, jacrev

import curvlab
from curvlab.curvature import curvature
from curvlab.losses import make_loss
from curvlab.nets import MLP
from curvlab.solvers import KFI

ALPHA = 0.05


pytestmark = pytest.mark.usefixtures("float64_default")  # compare in float64 (tests/conftest.py)


def tiny(batch: int, seed: int = 0, widths: tuple[int, ...] = (4, 3, 3, 2)) -> tuple[MLP, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    net = MLP(list(widths), activation="tanh", init="uniform", init_scale=0.8)
    return net, 2 * torch.randn(batch, widths[0]), torch.randint(0, widths[-1], (batch,))


def flat_loss(net: MLP, x: torch.Tensor, y: torch.Tensor, loss: str):
    """θ ↦ batch-mean loss, θ a flat vector in ``parameters_to_vector`` order."""
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    crit = make_loss(loss)

    def unflatten(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for n, s in zip(names, shapes):
            out[n] = theta[i : i + s.numel()].reshape(s)
            i += s.numel()
        return out

    def f(theta: torch.Tensor) -> torch.Tensor:
        return crit(functional_call(net, unflatten(theta), (x,)), y)

    def logits(theta: torch.Tensor) -> torch.Tensor:
        return functional_call(net, unflatten(theta), (x,))

    theta0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    return f, logits, theta0, crit


def param_slices(net: MLP) -> list[slice]:
    out, i = [], 0
    for p in net.parameters():
        out.append(slice(i, i + p.numel()))
        i += p.numel()
    return out


def flat(d: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in d])


def test_eacg_direction_is_block_diagonal_gauss_newton_step() -> None:
    # One sample: the GN recursion and the rank-one weight factor are exact, so EA-CG solves
    # ((1−α) G_blk + αI) d = −g with G_blk the diagonal blocks of the true GN matrix Jᵀ H J.
    net, x, y = tiny(batch=1)
    f, logits, theta0, crit = flat_loss(net, x, y, "cross_entropy")
    g = torch.func.grad(f)(theta0)
    jac = jacrev(logits)(theta0)[0]  # (C, P)
    gn = jac.T @ crit.hessian(logits(theta0), y)[0] @ jac  # (P, P)
    d = curvlab.newton_direction(net, x, y, kind="gn", alpha=ALPHA, max_cg=200, eps_cg=1e-13)
    assert [t.shape for t in d] == [p.shape for p in net.parameters()]
    for sl in param_slices(net):
        a = (1 - ALPHA) * gn[sl, sl] + ALPHA * torch.eye(sl.stop - sl.start)
        torch.testing.assert_close(flat(d)[sl], torch.linalg.solve(a, -g[sl]))


@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("loss", ["cross_entropy", "nonconvex"])
def test_eacg_direction_solves_eq9_with_autograd_gradient(split: int, loss: str) -> None:
    # Batch > 1: the blocks come from curvature(), the right-hand side from torch.func.grad.
    net, x, y = tiny(batch=5, seed=1)
    f, _, theta0, crit = flat_loss(net, x, y, loss)
    g = torch.func.grad(f)(theta0)
    d = flat(curvlab.newton_direction(net, x, y, kind="pch1", loss=loss, alpha=ALPHA, max_cg=200,
                                      eps_cg=1e-13, split=split))
    blocks = curvature(net, x, y, "pch1", crit)
    for blk, sw, sb in zip(blocks, param_slices(net)[0::2], param_slices(net)[1::2]):
        mask = torch.zeros(blk.n_out, blk.n_out)
        for grp in torch.arange(blk.n_out).tensor_split(split):
            mask[grp[:, None], grp[None, :]] = 1
        b = blk.bias * mask
        m = torch.outer(blk.input_mean, blk.input_mean)
        lhs_b = (1 - ALPHA) * b @ d[sb] + ALPHA * d[sb]
        lhs_w = (1 - ALPHA) * torch.kron(b, m) @ d[sw] + ALPHA * d[sw]
        torch.testing.assert_close(lhs_b, -g[sb])
        torch.testing.assert_close(lhs_w, -g[sw])


def test_kfi_direction_matches_solver_and_passes_options() -> None:
    net, x, y = tiny(batch=4, seed=2)
    d = curvlab.newton_direction(net, x, y, kind="pch2", solver="kfi", alpha=ALPHA, rank_one_first_layer=True)
    ref = KFI(net, make_loss("cross_entropy"), 1.0, curvature={"kind": "pch2"}, alpha=ALPHA,
              rank_one_first_layer=True).direction(x, y).d
    full = curvlab.newton_direction(net, x, y, kind="pch2", solver="kfi", alpha=ALPHA)
    for a, b in zip(d, ref):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(d[0], full[0])


@pytest.mark.parametrize("kind", ["exact", "gn"])
def test_exact_inverse_solves_eq9_with_the_full_matrix(kind: str) -> None:
    net, x, y = tiny(batch=3, seed=3)
    f, logits, theta0, crit = flat_loss(net, x, y, "cross_entropy")
    g = torch.func.grad(f)(theta0)
    if kind == "exact":
        mat = hessian(f)(theta0)
    else:
        jac = jacrev(logits)(theta0)  # (B, C, P)
        mat = torch.einsum("bcp,bcd,bdq->pq", jac, crit.hessian(logits(theta0), y), jac) / x.shape[0]
    d = curvlab.newton_direction(net, x, y, kind=kind, solver="exact_inverse", alpha=ALPHA)
    a = (1 - ALPHA) * mat + ALPHA * torch.eye(mat.shape[0])
    torch.testing.assert_close(flat(d), torch.linalg.solve(a, -g), rtol=1e-8, atol=1e-10)


def test_parameters_are_not_changed() -> None:
    net, x, y = tiny(batch=4)
    before = [p.detach().clone() for p in net.parameters()]
    for solver, kind in [("eacg", "pch1"), ("kfi", "fisher"), ("exact_inverse", "gn")]:
        curvlab.newton_direction(net, x, y, kind=kind, solver=solver)
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p.detach(), b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"solver": "lbfgs"}, "solver: unknown value 'lbfgs'; allowed: eacg, kfi, exact_inverse"),
        ({"kind": "hessian"}, "kind: unknown value"),
        ({"alpha": 1.0}, "0 < alpha < 1"),
        ({"split": 2, "solver": "kfi"}, r"unknown option\(s\) \['split'\]"),
        ({"solver": "exact_inverse"}, "kind must be 'exact' or 'gn'"),
        ({"solver": "kfi", "kind": "exact"}, "not PSD"),
        ({"kind": "gn", "loss": "nonconvex"}, "GN is not PSD for the nonconvex loss"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    net, x, y = tiny(batch=2)
    with pytest.raises(ValueError, match=message):
        curvlab.newton_direction(net, x, y, **kwargs)
