"""Cheaper gn/pch passes on conv nets (``kinds.ce_hessian_rows``, ``kinds.sketched``): the C−1 exact rows
of the cross-entropy Hessian, and the opt-in sketch ``curvature.sketch`` (unbiased, checked statistically)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import curvlab
from curvlab.curvature.kinds import ce_hessian_rows, sketched
from curvlab.curvature.options import CurvatureOptions
from curvlab.losses import make_loss
from curvlab.solvers.options import check_step_options

DT = torch.float64
CE = make_loss("cross_entropy")


def _net() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Conv2d(2, 3, 3),
                        nn.ReLU(), nn.Flatten(), nn.Linear(3, 5)).to(DT)
    return net, torch.randn(3, 1, 6, 6, dtype=DT), torch.randint(0, 5, (3,))


@pytest.mark.parametrize("spread", [1.0, 30.0])  # 30: one class near probability 1
def test_ce_hessian_rows_are_c_minus_1_exact_rows(spread):
    out, y = torch.randn(6, 10, dtype=DT) * spread, torch.randint(0, 10, (6,))
    u = ce_hessian_rows(CE, out, y)
    assert u.shape == (6, 9, 10)
    torch.testing.assert_close(u.transpose(1, 2) @ u, CE.hessian(out, y), rtol=0, atol=1e-15)


def test_exact_fisher_on_a_step_net_carries_c_minus_1_rows():
    """On cross-entropy the exact Fisher is the output Hessian: its step-net message takes the C−1 rows,
    whose blocks are those of all C rows √p_c ∇ξ(h | c) (``fisher_factors``)."""
    from curvlab.curvature.kinds import STEP_KINDS, SampleFactors, fisher_factors
    from curvlab.curvature.options import FisherType, Kind

    net, x, y = _net()
    out = net(x).detach()
    msg = STEP_KINDS[Kind.FISHER].output(CE, out, y, CurvatureOptions(kind="fisher", fisher="exact"), None)
    assert msg.factors.shape == (3, 4, 5)
    all_rows = fisher_factors(CE, out, y, FisherType.EXACT, 1, None)  # (b, C, C)
    torch.testing.assert_close(msg.factors.transpose(1, 2) @ msg.factors, all_rows.transpose(1, 2) @ all_rows)
    assert isinstance(msg, SampleFactors)


def _z_scores(draws: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """(mean − exact) / standard error per entry over the first axis of ``draws`` (entries with spread)."""
    se = draws.std(0) / draws.shape[0] ** 0.5
    keep = se > 1e-12 * exact.abs().max()
    return ((draws.mean(0) - exact) / se)[keep]


def test_sketched_rows_are_unbiased_and_a_wrong_scale_is_caught():
    torch.manual_seed(0)
    rows = torch.randn(1, 4, 6, dtype=DT)  # one sample, r = 4 rows
    gen = torch.Generator().manual_seed(0)
    u = sketched(rows.expand(4000, 4, 6), 3, gen)  # 4000 independent draws of m = 3 rows
    grams = u.transpose(1, 2) @ u  # (4000, 6, 6)
    exact = rows[0].T @ rows[0]
    assert _z_scores(grams, exact).abs().max() < 5
    assert _z_scores(grams * 3**0.5, exact).abs().max() > 5  # 1/m instead of 1/√m on the rows: caught


@pytest.mark.parametrize("kind", ["gn", "pch1", "pch2"])
def test_sketched_blocks_converge_to_the_exact_blocks(kind):
    """The conv net's bias blocks and Kronecker G under the sketch: 30 estimates, each the mean of 60
    draws (the batch repeated 60 times), agree with the exact rows' blocks within 5 standard errors."""
    net, x, y = _net()
    exact = curvlab.curvature(net, x, y, kind, CE)
    gen = torch.Generator().manual_seed(2)
    xs, ys = x.repeat(60, 1, 1, 1), y.repeat(60)
    est = [curvlab.curvature(net, xs, ys, kind, CE, sketch=True, mc_samples=2, generator=gen) for _ in range(30)]
    for t, layer in enumerate(exact):
        draws = torch.stack([e[t].bias for e in est])
        assert _z_scores(draws, layer.bias).abs().max() < 5, f"layer {t}"
        assert _z_scores(draws * 2**0.5, layer.bias).abs().max() > 5  # a wrong scale fails the same check
        if layer.kron_out is not None:
            assert _z_scores(torch.stack([e[t].kron_out for e in est]), layer.kron_out).abs().max() < 5
    assert not torch.equal(est[0][0].bias, exact[0].bias)  # it is a sketch: one estimate is not exact


def test_sketch_is_opt_in_and_refused_where_it_does_not_apply():
    net, x, y = _net()
    torch.testing.assert_close(curvlab.curvature(net, x, y, "pch1", CE, sketch=False)[0].bias,
                               curvlab.curvature(net, x, y, "pch1", CE)[0].bias, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"curvature.sketch=true applies to kind gn, pch1 or pch2 \(got fisher\)"):
        CurvatureOptions(kind="fisher", sketch=True)
    with pytest.raises(ValueError, match="needs PSD output Hessians; kind=gn on the nonconvex"):
        curvlab.curvature(net, x, y, "gn", make_loss("nonconvex"), sketch=True)
    with pytest.raises(ValueError, match="curvature.sketch=true needs a net with convolutions"):
        check_step_options(CurvatureOptions(kind="gn", sketch=True), steps=False)
    with pytest.raises(ValueError, match="curvature.weight_factor=block needs a net with convolutions"):
        check_step_options(CurvatureOptions(weight_factor="block"), steps=False)
    check_step_options(CurvatureOptions(weight_factor="block", sketch=True), steps=True)


@pytest.mark.parametrize("solver", ["eacg", "kfi"])
def test_solvers_step_with_the_sketch(solver):
    """EA-CG and KFI take ``sketch`` from their curvature options; the draws come from torch's RNG (seeded runs
    repeat), and two seeds give different steps (the sketch is random)."""
    from curvlab.solvers import make_solver

    def step(seed: int) -> list[torch.Tensor]:
        net, x, y = _net()
        opts = {"curvature": {"kind": "pch1", "sketch": True, "mc_samples": 2}}
        torch.manual_seed(seed)
        make_solver(solver, net, CE, lr=0.1, **opts).step(x, y)
        return [p.detach().clone() for p in net.parameters()]

    a, b, c = step(0), step(0), step(1)
    assert all(torch.isfinite(p).all() for p in a)
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and not all(torch.equal(p, q) for p, q in zip(a, c))


def test_sketched_residual_rows_have_the_exact_diagonal_and_unbiased_off_diagonal():
    """PCH's residual diag(ρ) as m Rademacher rows s ⊙ √ρ/√m: Σ_k row_k² = ρ exactly, off-diagonals mean 0."""
    from curvlab.curvature.messages import Residual, SampleFactors

    r = torch.tensor([1.5, -0.7, 0.3, 2.0, -1.1], dtype=DT).expand(4000, 5)  # one sample's residual, 4000 draws
    base = SampleFactors(torch.zeros(4000, 0, 5, dtype=DT), None)
    gen = torch.Generator().manual_seed(1)
    for residual, rho in ((Residual.ABS, r[0].abs()), (Residual.CLIP, r[0].clamp(min=0))):
        rows = base.add_residual(r, residual, (3, gen)).factors  # (4000, 3, 5)
        assert rows.shape == (4000, 3, 5)
        grams = rows.transpose(1, 2) @ rows
        torch.testing.assert_close(grams.diagonal(dim1=1, dim2=2), rho.expand(4000, 5), rtol=0, atol=1e-15)
        assert _z_scores(grams, torch.diag(rho)).abs().max() < 5
        assert _z_scores(grams + 0.05 * rho.max(), torch.diag(rho)).abs().max() > 5  # a bias is caught


def test_sketch_lifts_the_residual_row_budget(monkeypatch):
    """Without the sketch a residual over the row budget is refused, naming curvature.sketch; with it the pass runs."""
    from curvlab.curvature import messages

    net, x, y = _net()  # Tanh after the first conv: 2·6·6 = 72 residual rows per sample
    monkeypatch.setattr(messages, "RESIDUAL_ROW_BUDGET", 1000)
    with pytest.raises(ValueError, match="curvature.sketch=true"):
        curvlab.curvature(net, x, y, "pch1", CE)
    gen = torch.Generator().manual_seed(0)
    blocks = curvlab.curvature(net, x, y, "pch1", CE, sketch=True, mc_samples=2, generator=gen)
    assert all(torch.isfinite(b.bias).all() for b in blocks)
