"""EA-CG (Chen et al. Eqs. 9–11) and block splitting (HBP Fig. 5) against dense solves, float64."""

from __future__ import annotations

import pytest
import torch

from curvlab.curvature.blocks import LayerCurvature
from curvlab.losses import make_loss
from curvlab.nets import MLP
from curvlab.solvers import EACG, eacg_solve, make_solver
from curvlab.solvers.cg import batched_cg
from curvlab.solvers.split import RowSplit

ALPHA = 0.05


pytestmark = pytest.mark.usefixtures("float64_default")  # compare in float64 (tests/conftest.py)


def random_blocks(widths: list[int], seed: int = 0, batch: int = 7, indefinite: bool = False) -> list[LayerCurvature]:
    """Hand-built curvature: random PSD (or indefinite) bias blocks, moments of random inputs."""
    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        r = torch.randn(n_out, n_out, generator=gen)
        bias = r @ r.T / n_out
        if indefinite:
            bias = bias - 3 * torch.eye(n_out)
        h = torch.rand(batch, n_in, generator=gen)
        blocks.append(
            LayerCurvature(
                bias=bias,
                input_mean=h.mean(0),
                input_cov=h.T @ h / batch,
                grad_bias=torch.randn(n_out, generator=gen),
                grad_weight=torch.randn(n_out, n_in, generator=gen),
            )
        )
    return blocks


def split_mask(n: int, k: int) -> torch.Tensor:
    """(n, n) mask of the block-diagonal pattern of k contiguous row groups."""
    mask = torch.zeros(n, n)
    for g in torch.arange(n).tensor_split(min(k, n)):
        mask[g[:, None], g[None, :]] = 1
    return mask


def dense_solution(blocks: list[LayerCurvature], alpha: float, split: int, full: bool) -> list[torch.Tensor]:
    """Direct solve of ((1−α) H̃ + αI) d = −g with each block assembled densely."""
    out = []
    for blk in blocks:
        b = blk.bias * split_mask(blk.n_out, split)
        m = blk.input_cov if full else torch.outer(blk.input_mean, blk.input_mean)
        # Row-major vec(B D M) = (B ⊗ Mᵀ) vec(D), and M is symmetric.
        h_w = torch.kron(b, m)
        a_w = (1 - alpha) * h_w + alpha * torch.eye(h_w.shape[0])
        out.append(torch.linalg.solve(a_w, -blk.grad_weight.flatten()).reshape(blk.grad_weight.shape))
        a_b = (1 - alpha) * b + alpha * torch.eye(blk.n_out)
        out.append(torch.linalg.solve(a_b, -blk.grad_bias))
    return out


@pytest.mark.parametrize("weight_factor", ["rank_one", "full"])
@pytest.mark.parametrize("split", [1, 2, 3, 16])
def test_eacg_equals_direct_solve(weight_factor: str, split: int) -> None:
    # Two layers of equal shape (4→4) share one batched group; split 3 pads, 16 > n_out caps.
    blocks = random_blocks([5, 4, 4, 3])
    d, stats = eacg_solve(blocks, ALPHA, max_cg=200, eps_cg=1e-13, split=split, weight_factor=weight_factor)
    ref = dense_solution(blocks, ALPHA, split, weight_factor == "full")
    assert [x.shape for x in d] == [x.shape for x in ref]
    for x, r in zip(d, ref):
        torch.testing.assert_close(x, r, rtol=1e-9, atol=1e-11)
    assert stats["neg_curvature"] == 0 and stats["cg_unconverged"] == 0


def test_split_changes_the_solution() -> None:
    blocks = random_blocks([5, 4, 3])
    d1, _ = eacg_solve(blocks, ALPHA, max_cg=200, eps_cg=1e-13, split=1)
    d2, s2 = eacg_solve(blocks, ALPHA, max_cg=200, eps_cg=1e-13, split=2)
    assert not torch.allclose(d1[0], d2[0])
    assert s2["cg_systems"] == 2 * 2 * 2  # (weight + bias) × 2 layers × 2 sub-blocks


def test_one_iteration_is_one_cg_step_per_system() -> None:
    # max_cg=1: every sub-system j returns x₁ = (gⱼᵀgⱼ / gⱼᵀAⱼgⱼ) gⱼ with its own A and
    # g = −grad; systems batched together (equal layers, split 2) must not share step sizes.
    blocks = random_blocks([4, 4, 4])
    d, stats = eacg_solve(blocks, ALPHA, max_cg=1, eps_cg=0.0, split=2)
    for blk, d_w, d_b in zip(blocks, d[0::2], d[1::2]):
        mu = blk.input_mean
        for rows in torch.arange(blk.n_out).tensor_split(2):
            b_j = blk.bias[rows[:, None], rows[None, :]]
            g = -blk.grad_bias[rows]
            a_b = (1 - ALPHA) * b_j + ALPHA * torch.eye(len(rows))
            torch.testing.assert_close(d_b[rows], (g @ g) / (g @ a_b @ g) * g)
            g = -blk.grad_weight[rows].flatten()
            a_w = (1 - ALPHA) * torch.kron(b_j, torch.outer(mu, mu)) + ALPHA * torch.eye(g.numel())
            torch.testing.assert_close(d_w[rows].flatten(), (g @ g) / (g @ a_w @ g) * g)
    assert stats["cg_iters"] == 1 and stats["cg_unconverged"] == stats["cg_systems"] == 8


def test_eps_cg_stops_at_relative_residual() -> None:
    blocks = random_blocks([6, 5, 3], seed=1)
    eps = 0.3
    d, stats = eacg_solve(blocks, ALPHA, max_cg=100, eps_cg=eps, split=1)
    assert stats["cg_unconverged"] == 0
    for blk, d_w, d_b in zip(blocks, d[0::2], d[1::2]):
        a_b = (1 - ALPHA) * blk.bias + ALPHA * torch.eye(blk.n_out)
        assert torch.linalg.norm(a_b @ d_b + blk.grad_bias) <= eps * torch.linalg.norm(blk.grad_bias)
        mu = blk.input_mean
        res = (1 - ALPHA) * blk.bias @ d_w @ torch.outer(mu, mu) + ALPHA * d_w + blk.grad_weight
        assert torch.linalg.norm(res) <= eps * torch.linalg.norm(blk.grad_weight)
    full, _ = eacg_solve(blocks, ALPHA, max_cg=100, eps_cg=1e-13)
    assert not torch.allclose(d[0], full[0])  # the loose tolerance did stop early


def test_no_bias_net_solves_weights_only() -> None:
    blocks = random_blocks([4, 3, 2])
    d, stats = eacg_solve(blocks, ALPHA, max_cg=100, eps_cg=1e-13, bias=False)
    ref = dense_solution(blocks, ALPHA, 1, False)[0::2]
    assert len(d) == 2 and stats["cg_systems"] == 2
    for x, r in zip(d, ref):
        torch.testing.assert_close(x, r)


def test_row_split_round_trip() -> None:
    rs = RowSplit(10, 4)
    assert (rs.k, rs.m) == (4, 3)
    g = torch.randn(10, 2)
    torch.testing.assert_close(rs.merge(rs.rows(g)), g)
    b = torch.randn(10, 10)
    dense = torch.block_diag(*[blk[: int(v.sum()), : int(v.sum())] for blk, v in zip(rs.blocks(b), rs.valid)])
    torch.testing.assert_close(dense, b * split_mask(10, 4))


def test_negative_curvature_is_detected_and_handled() -> None:
    # System 0: SPD. System 1: indefinite A = diag(2, −1), b = (1, 1): pᵀAp = 1 > 0 at the
    # first step, then < 0, so CG keeps x₁ = (bᵀb / bᵀAb) b. System 2: bᵀAb < 0 at x = 0,
    # so CG returns the steepest-descent direction b.
    a = torch.stack([torch.tensor([[2.0, 0.5], [0.5, 1.0]]), torch.diag(torch.tensor([2.0, -1.0])),
                     torch.diag(torch.tensor([-1.0, 0.5]))])
    b = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])[:, :, None]  # (S, m, 1)
    (res,) = batched_cg([lambda x: a @ x], [b], max_iter=10, eps=1e-12)
    assert res.neg_curvature.tolist() == [False, True, True]
    assert res.iters.tolist()[1:] == [1, 0]
    torch.testing.assert_close(res.x[0, :, 0], torch.linalg.solve(a[0], b[0, :, 0]))
    b1 = b[1, :, 0]
    torch.testing.assert_close(res.x[1, :, 0], (b1 @ b1) / (b1 @ a[1] @ b1) * b1)
    torch.testing.assert_close(res.x[2], b[2])


def test_eacg_counts_negative_curvature_of_indefinite_blocks() -> None:
    blocks = random_blocks([4, 3, 2], indefinite=True)
    d, stats = eacg_solve(blocks, ALPHA, max_cg=50, eps_cg=1e-10)
    assert stats["neg_curvature"] >= 1
    # Whatever CG returns is a descent direction: dᵀg < 0 per block.
    grads = [g for blk in blocks for g in (blk.grad_weight, blk.grad_bias)]
    for x, g in zip(d, grads):
        assert float((x * g).sum()) < 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 0.0}, "0 < alpha < 1"),
        ({"alpha": 1.0}, "0 < alpha < 1"),
        ({"max_cg": 0}, "max_cg"),
        ({"eps_cg": -1.0}, "eps_cg"),
        ({"split": 0}, "split"),
        ({"curvature": {"kind": "hessian"}}, "curvature.kind.*allowed"),
        ({"curvature": {"knd": "gn"}}, "unknown option"),
    ],
)
def test_bad_options(options: dict, message: str) -> None:
    net = MLP([4, 3, 2])
    with pytest.raises(ValueError, match=message):
        EACG(net, make_loss("cross_entropy"), 0.1, **options)


def test_gn_with_nonconvex_loss_is_rejected() -> None:
    net = MLP([4, 3, 2])
    with pytest.raises(ValueError, match="GN is not PSD for the nonconvex loss; use pch1, pch2 or fisher"):
        make_solver("eacg", net, make_loss("nonconvex"), lr=0.1, curvature={"kind": "gn"})
    EACG(net, make_loss("cross_entropy"), 0.1, curvature={"kind": "gn"})  # convex: fine


@pytest.mark.parametrize("weight_factor", ["rank_one", "full"])
@pytest.mark.parametrize("split", [1, 2])
def test_solver_direction_solves_blocks_from_curvature(weight_factor: str, split: int) -> None:
    from curvlab.curvature import curvature

    torch.manual_seed(0)
    net = MLP([5, 4, 4, 3], activation="tanh").double()
    x, y = torch.randn(9, 5), torch.randint(0, 3, (9,))
    loss = make_loss("nonconvex")
    solver = EACG(net, loss, 0.1, curvature={"kind": "pch2", "weight_factor": weight_factor},
                  max_cg=200, eps_cg=1e-13, split=split)
    dr = solver.direction(x, y)
    blocks = curvature(net, x, y, "pch2", loss, input_cov=True)
    ref = dense_solution(blocks, 0.02, split, weight_factor == "full")
    for got, want, p in zip(dr.d, ref, net.parameters()):
        assert got.shape == p.shape
        torch.testing.assert_close(got, want)
    with torch.no_grad():
        assert dr.loss == pytest.approx(float(loss(net(x), y)))


def test_eacg_steps_decrease_the_loss() -> None:
    torch.manual_seed(1)
    net = MLP([6, 8, 3], activation="sigmoid", init="xavier").double()
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    loss = make_loss("cross_entropy")
    solver = make_solver("eacg", net, loss, lr=0.2, curvature={"kind": "pch1"}, split=2)
    losses = [solver.step(x, y).loss for _ in range(6)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_eacg_on_gpu_matches_cpu() -> None:
    blocks = random_blocks([6, 5, 5, 3])
    on_gpu = [LayerCurvature(*(None if v is None else v.cuda() for v in (b.bias, b.input_mean, b.input_cov,
                                                                        b.grad_bias, b.grad_weight))) for b in blocks]
    for split in (1, 2):
        d_cpu, _ = eacg_solve(blocks, ALPHA, max_cg=100, eps_cg=1e-12, split=split)
        d_gpu, _ = eacg_solve(on_gpu, ALPHA, max_cg=100, eps_cg=1e-12, split=split)
        for a, b in zip(d_cpu, d_gpu):
            assert b.is_cuda
            torch.testing.assert_close(a, b.cpu())
