"""Layer-wise Hessian errors of EA-CG (Tables 2–5 of Chen et al.)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_problem

import curvlab
from curvlab.metrics import layerwise_errors, total_error, weight_block


def test_total_reproduces_table_2_fisher_column() -> None:
    fisher = [0.0071, 0.0470, 0.1140, 0.0726, 0.0397, 0.0219, 0.0185, 0.0251]
    assert round(total_error(fisher), 4) == 0.1535


def test_errors_against_absolute_eigenvalues() -> None:
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    true = q @ torch.diag(torch.tensor([-1.0, 2.0, 0.5], dtype=torch.float64)) @ q.T
    absolute = q @ torch.diag(torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)) @ q.T
    assert layerwise_errors([absolute], [true]) == pytest.approx([0.0], abs=1e-12)
    # Using the true block itself costs exactly the negative part: ‖A − |A|‖_F = 2·|λ_min|.
    assert layerwise_errors([true], [true]) == pytest.approx([2.0], abs=1e-12)


def test_curvature_blocks_and_api() -> None:
    p = make_problem("sigmoid", "nonconvex", seed=1)
    exact = curvlab.curvature(p.net, p.x, p.y, kind="exact", loss=p.loss, weight_blocks=True)
    for kind in ("gn", "pch1", "pch2", "fisher"):
        errs = curvlab.layerwise_errors(curvlab.curvature(p.net, p.x, p.y, kind=kind, loss=p.loss), exact)
        assert len(errs) == p.net.depth and all(e >= 0 for e in errs)
    # PCH matches |B_k| at the output layer exactly (Eq. 8a), GN does not for the non-convex loss.
    assert curvlab.layerwise_errors(curvlab.curvature(p.net, p.x, p.y, kind="pch1", loss=p.loss), exact)[-1] < 1e-12
    assert curvlab.layerwise_errors(curvlab.curvature(p.net, p.x, p.y, kind="gn", loss=p.loss), exact)[-1] > 1e-4
    werrs = layerwise_errors(curvlab.curvature(p.net, p.x, p.y, kind="pch1", loss=p.loss, input_cov=True),
                             exact, part="weight")
    assert len(werrs) == p.net.depth
    assert layerwise_errors(exact, exact, part="weight") == layerwise_errors(
        [weight_block(b) for b in exact], [b.weight for b in exact])


def test_weight_block_kronecker_order() -> None:
    """Eq. (11a) in row-major W.flatten() order equals the exact block for one sample."""
    p = make_problem("relu", batch=1)
    exact = curvlab.curvature(p.net, p.x, p.y, kind="exact", weight_blocks=True)
    approx = curvlab.curvature(p.net, p.x, p.y, kind="exact", input_cov=True)
    for e, a in zip(exact, approx):
        torch.testing.assert_close(weight_block(a), e.weight)


def test_bad_arguments_raise() -> None:
    p = make_problem()
    exact = curvlab.curvature(p.net, p.x, p.y, kind="exact")
    with pytest.raises(ValueError, match="weight_blocks=True"):
        layerwise_errors(exact, exact, part="weight")
    with pytest.raises(ValueError, match="layerwise_errors.part.*allowed: bias, weight"):
        layerwise_errors(exact, exact, part="all")
    with pytest.raises(ValueError, match="2 approximate layers but 3 exact"):
        layerwise_errors(exact[:2], exact)
