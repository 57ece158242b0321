"""EA-CG's reduced CG for the rank-one factor (Eq. 11b) against textbook CG on the assembled
matrix, float64: same iterates for truncated and full runs, with splitting, and the same stats."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from curvlab.curvature.blocks import LayerCurvature
from curvlab.solvers import cg, eacg_reduced
from curvlab.solvers.eacg import eacg_solve

from tests.test_eacg import random_blocks

ALPHA = 0.05

pytestmark = pytest.mark.usefixtures("float64_default")  # compare in float64 (tests/conftest.py)


def textbook_cg(a: torch.Tensor, b: torch.Tensor, max_cg: int, eps: float) -> tuple[torch.Tensor, int, bool, bool]:
    """Plain CG from 0 on a dense matrix: (x, iterations, converged, stopped by pᵀAp ≤ 0)."""
    x, r, p = torch.zeros_like(b), b.clone(), b.clone()
    rs, tol = r @ r, eps * torch.linalg.norm(b)
    if rs.sqrt() <= tol:
        return x, 0, True, False
    for i in range(max_cg):
        ap = a @ p
        pap = p @ ap
        if pap <= 0:
            return (b.clone() if i == 0 else x), i, False, True
        step = rs / pap
        x, r = x + step * p, r - step * ap
        rs_new = r @ r
        if rs_new.sqrt() <= tol:
            return x, i + 1, True, False
        p, rs = r + (rs_new / rs) * p, rs_new
    return x, max_cg, False, False


def reference(blocks: list[LayerCurvature], max_cg: int, eps: float, split: int, full: bool):
    """Direction and stats of textbook CG per (split) system of the assembled Eq. (10) matrices."""
    d, iters, neg, unconverged = [], [], 0, 0
    for blk in blocks:
        m_fac = blk.input_cov if full else torch.outer(blk.input_mean, blk.input_mean)
        d_w, d_b = torch.zeros_like(blk.grad_weight), torch.zeros_like(blk.grad_bias)
        for rows in torch.arange(blk.n_out).tensor_split(min(split, blk.n_out)):
            b_j = blk.bias[rows[:, None], rows[None, :]]
            eye_w = torch.eye(len(rows) * blk.n_in)
            # Row-major vec(B D M) = (B ⊗ M) vec(D) for symmetric M.
            a_w = (1 - ALPHA) * torch.kron(b_j, m_fac) + ALPHA * eye_w
            a_b = (1 - ALPHA) * b_j + ALPHA * torch.eye(len(rows))
            for a, g, out in ((a_w, blk.grad_weight[rows].flatten(), d_w), (a_b, blk.grad_bias[rows], d_b)):
                x, it, conv, ng = textbook_cg(a, -g, max_cg, eps)
                out[rows] = x.reshape(out[rows].shape)
                iters.append(it)
                neg += ng
                unconverged += not conv and not ng
        d += [d_w, d_b]
    stats = {"cg_iters": max(iters), "cg_iters_mean": sum(iters) / len(iters), "cg_systems": len(iters),
             "neg_curvature": neg, "cg_unconverged": unconverged}
    return d, stats


def check(blocks: list[LayerCurvature], max_cg: int, eps: float, split: int, full: bool = False,
          rtol: float = 1e-9) -> None:
    d, stats = eacg_solve(blocks, ALPHA, max_cg=max_cg, eps_cg=eps, split=split,
                          weight_factor="full" if full else "rank_one")
    ref, ref_stats = reference(blocks, max_cg, eps, split, full)
    for got, want in zip(d, ref, strict=True):
        scale = float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * 1e-3 * scale)
    assert stats == pytest.approx(ref_stats)


@pytest.mark.parametrize("pad_budget", [0, 65536])  # every layer its own batch / layers padded together
@pytest.mark.parametrize("split", [1, 2, 3])
@pytest.mark.parametrize(("max_cg", "eps"), [(1, 1e-10), (2, 1e-10), (3, 1e-10), (3, 0.5), (50, 0.1), (200, 1e-8)])
def test_rank_one_equals_textbook_cg(max_cg: int, eps: float, split: int, pad_budget: int,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eacg_reduced, "_PAD_BUDGET", pad_budget)
    # 6→5→4→4→3: two equal layers, one wider; split 3 pads the row groups.
    check(random_blocks([6, 5, 4, 4, 3], seed=2), max_cg, eps, split)


@pytest.fixture(params=["short", "long"])
def cg_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run batched CG's per-group code for long systems as well as its flat one for short ones."""
    if request.param == "long":
        monkeypatch.setattr(cg, "_SHORT", 0)


@pytest.mark.usefixtures("cg_path")
@pytest.mark.parametrize(("max_cg", "eps"), [(1, 1e-10), (2, 1e-10), (3, 1e-10), (200, 1e-6)])
def test_full_factor_equals_textbook_cg(max_cg: int, eps: float) -> None:
    # Long runs on the (ill-conditioned) full factor lose orthogonality: round-off grows with κ.
    check(random_blocks([5, 4, 3], seed=3), max_cg, eps, split=2, full=True, rtol=1e-9 if max_cg < 10 else 1e-7)


@pytest.mark.usefixtures("cg_path")
def test_indefinite_blocks_stop_alike() -> None:
    # Non-positive curvature at the first step (→ −g) or later (→ current iterate), as plain CG.
    blocks = random_blocks([5, 4, 3], seed=4, indefinite=True)
    for split in (1, 2):
        d, stats = eacg_solve(blocks, ALPHA, max_cg=20, eps_cg=1e-10, split=split)
        assert stats["neg_curvature"] >= 1
        check(blocks, 20, 1e-10, split)


def test_degenerate_rank_one_cases() -> None:
    # Gradient rows along μ (G_⊥ = 0), zero inputs (μ = 0) and a zero gradient.
    blocks = random_blocks([4, 3, 3, 2], seed=5)
    mu = blocks[0].input_mean
    blocks[0].grad_weight.copy_(torch.outer(torch.randn(3), mu))
    blocks[1].input_mean.zero_()
    blocks[2].grad_weight.zero_()
    blocks[2].grad_bias.zero_()
    for split in (1, 2):
        check(blocks, 3, 1e-10, split)
        check(blocks, 100, 1e-8, split)


@pytest.mark.parametrize("split", [1, 3])
def test_overwrite_reuses_the_gradients_for_the_same_direction(split: int) -> None:
    # The solver's path (overwrite=True) writes d_W into the blocks' grad_weight; same result.
    blocks = random_blocks([6, 5, 4, 3], seed=6)
    want, want_stats = eacg_solve(blocks, ALPHA, max_cg=4, eps_cg=1e-10, split=split)
    own = [replace(b, grad_weight=b.grad_weight.clone()) for b in blocks]
    got, stats = eacg_solve(own, ALPHA, max_cg=4, eps_cg=1e-10, split=split, overwrite=True)
    assert stats == want_stats
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-15)
    for t, b in enumerate(own):
        assert got[2 * t].data_ptr() == b.grad_weight.data_ptr()  # d_W lives in the gradient's memory
