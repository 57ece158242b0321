"""KFI (Chen et al. Eqs. 12–13) against explicit Kronecker inverses, float64."""

from __future__ import annotations

import math

import pytest
import torch

from curvlab.curvature.blocks import LayerCurvature
from curvlab.losses import make_loss
from curvlab.nets import MLP
from curvlab.solvers import KFI, kfi_solve, make_solver
from curvlab.solvers.kfi import trace_ratio

ALPHA = 0.03


pytestmark = pytest.mark.usefixtures("float64_default")  # compare in float64 (tests/conftest.py)


def random_blocks(widths: list[int], seed: int = 0, batch: int = 6) -> list[LayerCurvature]:
    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        r = torch.randn(n_out, n_out, generator=gen)
        h = torch.rand(batch, n_in, generator=gen)
        blocks.append(
            LayerCurvature(
                bias=r @ r.T / n_out,
                input_mean=h.mean(0),
                input_cov=h.T @ h / batch,
                grad_bias=torch.randn(n_out, generator=gen),
                grad_weight=torch.randn(n_out, n_in, generator=gen),
            )
        )
    return blocks


def dense_kfi(blk: LayerCurvature, alpha: float, rank_one: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """−(A ⊗ G)⁻¹ vec(∇_W) with an explicit Kronecker product, and −G⁻¹ ∇_b."""
    a0 = torch.outer(blk.input_mean, blk.input_mean) if rank_one else blk.input_cov
    pi = math.sqrt((torch.trace(a0) / blk.n_in) / (torch.trace(blk.bias) / blk.n_out))
    a = a0 + pi * math.sqrt(alpha) * torch.eye(blk.n_in)
    g = blk.bias + math.sqrt(alpha) / pi * torch.eye(blk.n_out)
    # Row-major vec(G⁻¹ X A⁻¹) = (G⁻¹ ⊗ A⁻¹) vec(X) = (G ⊗ A)⁻¹ vec(X).
    d_w = -torch.linalg.solve(torch.kron(g, a), blk.grad_weight.flatten()).reshape(blk.grad_weight.shape)
    return d_w, -torch.linalg.solve(g, blk.grad_bias)


@pytest.mark.parametrize("rank_one_first_layer", [False, True])
def test_kfi_equals_explicit_kronecker_inverse(rank_one_first_layer: bool) -> None:
    blocks = random_blocks([7, 5, 4, 3])
    d, stats = kfi_solve(blocks, ALPHA, rank_one_first_layer=rank_one_first_layer)
    for t, blk in enumerate(blocks):
        d_w, d_b = dense_kfi(blk, ALPHA, rank_one=rank_one_first_layer and t == 0)
        torch.testing.assert_close(d[2 * t], d_w)
        torch.testing.assert_close(d[2 * t + 1], d_b)
    assert stats["kfi_pi_min"] <= stats["kfi_pi_max"]


def test_sherman_morrison_differs_from_full_factor() -> None:
    blocks = random_blocks([7, 5, 3])
    full, _ = kfi_solve(blocks, ALPHA)
    low, _ = kfi_solve(blocks, ALPHA, rank_one_first_layer=True)
    assert not torch.allclose(full[0], low[0])  # layer 1 changes (its bias too, through π) …
    for a, b in zip(full[2:], low[2:]):
        torch.testing.assert_close(a, b)  # … and no other layer


def test_trace_ratio_falls_back_to_one() -> None:
    assert trace_ratio(4.0, 2, 1.0, 2) == pytest.approx(2.0)
    assert trace_ratio(4.0, 2, 0.0, 2) == 1.0  # vanishing curvature: π undefined
    blocks = random_blocks([3, 2])
    blocks[0].bias.zero_()
    d, stats = kfi_solve(blocks, ALPHA)
    assert stats["kfi_pi_max"] == 1.0
    s = math.sqrt(ALPHA)
    torch.testing.assert_close(d[1], -blocks[0].grad_bias / s)


def test_no_bias_net_returns_weights_only() -> None:
    blocks = random_blocks([4, 3, 2])
    d, _ = kfi_solve(blocks, ALPHA, bias=False)
    assert [x.shape for x in d] == [(3, 4), (2, 3)]


def test_not_positive_definite_factor_is_reported() -> None:
    blocks = random_blocks([3, 2])
    blocks[0].bias.copy_(-torch.eye(2))
    blocks[0].bias[0, 0] = 5.0  # trace > 0, so π is defined, but G stays indefinite
    with pytest.raises(ValueError, match="not positive definite.*PSD curvature kind"):
        kfi_solve(blocks, ALPHA)


def test_non_finite_factor_names_the_learning_rate() -> None:
    """A factor of diverged weights (inf/NaN) is not a curvature-kind problem: the message says lower solver.lr."""
    from curvlab.solvers.kfi import _cholesky

    bad = torch.eye(3)
    bad[0, 1] = bad[1, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite entries.*lower solver.lr"):
        _cholesky(bad, "A of layer 2")


def test_max_input_width_names_the_option() -> None:
    loss = make_loss("cross_entropy")
    with pytest.raises(ValueError, match="rank_one_first_layer=true"):
        KFI(MLP([50, 4, 3]), loss, 0.1, max_input_width=20)
    KFI(MLP([50, 4, 3]), loss, 0.1, max_input_width=20, rank_one_first_layer=True)
    with pytest.raises(ValueError, match="layer 2 has 30 inputs.*max_input_width"):
        KFI(MLP([10, 30, 3]), loss, 0.1, max_input_width=20, rank_one_first_layer=True)


@pytest.mark.parametrize(
    ("kind", "loss", "message"),
    [
        ("exact", "cross_entropy", "curvature.kind=exact is not PSD.*fisher"),
        ("gn", "nonconvex", "GN is not PSD for the nonconvex loss; use pch1, pch2 or fisher"),
    ],
)
def test_non_psd_kinds_are_rejected(kind: str, loss: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_solver("kfi", MLP([4, 3, 2]), make_loss(loss), lr=0.1, curvature={"kind": kind})


@pytest.mark.parametrize("options", [{"alpha": 1.5}, {"max_input_width": 0}, {"lr": 0.0}])
def test_bad_options(options: dict) -> None:
    kwargs = {"lr": 0.1, **options}
    with pytest.raises(ValueError, match="alpha|max_input_width|lr"):
        KFI(MLP([4, 3, 2]), make_loss("cross_entropy"), **kwargs)


@pytest.mark.parametrize("kind", ["fisher", "gn", "pch1"])
@pytest.mark.parametrize("rank_one_first_layer", [False, True])
def test_solver_direction_uses_curvature_blocks(kind: str, rank_one_first_layer: bool) -> None:
    from curvlab.curvature import curvature

    torch.manual_seed(0)
    net = MLP([6, 5, 3], activation="sigmoid")
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    loss = make_loss("cross_entropy")
    # fisher=exact keeps the comparison deterministic (no Monte-Carlo labels).
    curv = {"kind": kind, "fisher": "exact"}
    dr = KFI(net, loss, 0.1, curvature=curv, alpha=ALPHA, rank_one_first_layer=rank_one_first_layer).direction(x, y)
    blocks = curvature(net, x, y, kind, loss, fisher="exact", input_cov=True)
    for t, blk in enumerate(blocks):
        d_w, d_b = dense_kfi(blk, ALPHA, rank_one=rank_one_first_layer and t == 0)
        torch.testing.assert_close(dr.d[2 * t], d_w)
        torch.testing.assert_close(dr.d[2 * t + 1], d_b)


def test_kfi_steps_decrease_the_loss() -> None:
    torch.manual_seed(1)
    net = MLP([6, 8, 3], activation="sigmoid", init="xavier")
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    solver = make_solver("kfi", net, make_loss("cross_entropy"), lr=0.2, curvature={"kind": "pch1"})
    losses = [solver.step(x, y).loss for _ in range(6)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.85 * losses[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kfi_on_gpu_matches_cpu() -> None:
    blocks = random_blocks([6, 5, 3])
    on_gpu = [LayerCurvature(b.bias.cuda(), b.input_mean.cuda(), b.input_cov.cuda(), b.grad_bias.cuda(),
                             b.grad_weight.cuda()) for b in blocks]
    for rank_one in (False, True):
        d_cpu, _ = kfi_solve(blocks, ALPHA, rank_one_first_layer=rank_one)
        d_gpu, _ = kfi_solve(on_gpu, ALPHA, rank_one_first_layer=rank_one)
        for a, b in zip(d_cpu, d_gpu):
            assert b.is_cuda
            torch.testing.assert_close(a, b.cpu())
