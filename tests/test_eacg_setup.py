"""EA-CG's batched set-up and read-out (issue 24): the reduced systems of all layers written straight
into one batch, the read-out in one host sync, and the recursion's skipped zero residual."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import curvlab
from curvlab.curvature.kinds import policy
from curvlab.curvature.options import CurvatureOptions, Kind
from curvlab.curvature.recursion import backward
from curvlab.losses import make_loss
from curvlab.modules import chain
from curvlab.solvers import eacg, eacg_reduced
from curvlab.solvers.cg import CGResult
from curvlab.solvers.split import RowSplit
from tests.test_eacg import random_blocks


@pytest.mark.parametrize("k", [1, 3, 4, 20])
def test_row_split_vector_is_rows_without_column_axis(k: int) -> None:
    rs, v = RowSplit(10, k), torch.randn(10)
    assert torch.equal(rs.vector(v), rs.rows(v[:, None])[..., 0])


def _expected_system(blk, rs: RowSplit, j: int, alpha: float, size: int, bias: bool):
    """Dense Ã (nb, size, size) and b̃ (nb, size) of row group j, from the docstring's formulas."""
    mu = blk.input_mean.double()
    s = float(mu @ mu)
    mu_hat = mu / math.sqrt(s)
    g = -blk.grad_weight.double()
    rows = rs.index[j][rs.valid[j]]
    m = len(rows)
    g_perp = g[rows] - torch.outer(g[rows] @ mu_hat, mu_hat)
    b_j = torch.zeros(size, size, dtype=torch.float64)
    b_j[1 : m + 1, 1 : m + 1] = blk.bias.double()[rows][:, rows]
    eye = torch.eye(size, dtype=torch.float64)
    mats = [alpha * eye + (1 - alpha) * s * b_j]
    rhs = [torch.cat([g_perp.norm()[None], g[rows] @ mu_hat, torch.zeros(size - m - 1, dtype=torch.float64)])]
    if bias:
        mats.append(alpha * eye + (1 - alpha) * b_j)
        rhs.append(torch.cat([torch.zeros(1, dtype=torch.float64), -blk.grad_bias.double()[rows],
                              torch.zeros(size - m - 1, dtype=torch.float64)]))
    return torch.stack(mats), torch.stack(rhs)


@pytest.mark.parametrize("split", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_reduced_group_matches_the_dense_systems(split: int, bias: bool) -> None:
    """Layers of different widths in one padded batch: every system's Ã x and b̃ as formed by hand."""
    alpha, widths = 0.05, [9, 7, 5, 3]
    blocks = random_blocks(widths, seed=4)
    (group,) = eacg_reduced.rank_one_groups(blocks, alpha, split, bias, overwrite=False)  # one bucket: small widths
    nb = 2 if bias else 1
    size = group.rhs.shape[-1]
    x = torch.randn(group.rhs.shape, generator=torch.Generator().manual_seed(1))
    ax = group.matvec(x)
    sys_i = 0
    for blk in blocks:
        rs = RowSplit(blk.n_out, split)
        for j in range(rs.k):
            mats, rhs = _expected_system(blk, rs, j, alpha, size, bias)
            torch.testing.assert_close(group.rhs[sys_i, :, 0].double(), rhs, atol=1e-5, rtol=1e-5)
            want = torch.einsum("ns,nst->nt", x[sys_i, :, 0].double(), mats)  # row vectors: x Ã
            torch.testing.assert_close(ax[sys_i, :, 0].double(), want, atol=1e-5, rtol=1e-5)
            sys_i += 1
    assert sys_i == group.rhs.shape[0] and group.rhs.shape[1] == nb


@pytest.mark.parametrize("split", [1, 2])
def test_read_out_maps_the_right_hand_side_back_to_the_gradient(split: int) -> None:
    """The fallback x = b̃ maps back to −∇ (module docstring), for every layer of the batch."""
    blocks = random_blocks([6, 5, 4, 2], seed=2)
    (group,) = eacg_reduced.rank_one_groups(blocks, 0.1, split, True, overwrite=False)
    out = dict(pair for unpack in group.unpack for pair in unpack(group.rhs.clone()))
    for t, blk in enumerate(blocks):
        torch.testing.assert_close(out[2 * t], -blk.grad_weight, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[2 * t + 1], -blk.grad_bias, atol=1e-6, rtol=1e-6)


def test_stats_of_several_groups() -> None:
    def result(iters: list[int], conv: list[bool], neg: list[bool]) -> CGResult:
        return CGResult(torch.zeros(len(iters), 1, 1), torch.tensor(iters), torch.tensor(conv), torch.tensor(neg))

    stats = eacg._stats([result([3, 5], [True, False], [False, False]), result([1, 2, 4], [False, False, True],
                                                                               [True, False, False])])
    assert stats == {"cg_iters": 5.0, "cg_iters_mean": 3.0, "cg_systems": 5.0, "neg_curvature": 1.0,
                     "cg_unconverged": 2.0}


@pytest.mark.parametrize("kind", [Kind.EXACT, Kind.PCH1, Kind.PCH2])
def test_zero_second_derivative_skips_the_residual_bit_for_bit(kind: Kind) -> None:
    """ReLU's σ'' ≡ 0: skipping its residual term gives what adding the zeros gives, bit for bit."""
    torch.manual_seed(0)
    net = curvlab.MLP([6, 5, 4, 3], activation="relu")
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    view = chain(net)
    with torch.no_grad():
        cache = view.forward_cache(x)
    # the same σ'' as a function the recursion does not recognise: it forms and adds the residual
    computed = dataclasses.replace(view, acts=tuple(
        dataclasses.replace(f, d2f=lambda z: torch.zeros_like(z)) for f in view.acts))
    loss, opts = make_loss("cross_entropy"), CurvatureOptions(kind=kind)
    with torch.no_grad():
        skipped = backward(view, cache, y, loss, policy(kind), opts)
        kept = backward(computed, cache, y, loss, policy(kind), opts)
    for a, b in zip(skipped, kept):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_unchanged_options_are_not_rebuilt() -> None:
    """A solver passes its own options and their kind every step: no re-validation (≈ 40 µs a step)."""
    from curvlab.curvature.recursion import _make_options

    opts = CurvatureOptions(kind=Kind.PCH1)
    assert _make_options(opts.kind, opts, {}) is opts and _make_options("pch1", opts, {}) is opts
    assert _make_options("gn", opts, {}).kind is Kind.GN
    with pytest.raises(ValueError, match="curvature.kind"):
        _make_options("bogus", opts, {})
    with pytest.raises(ValueError, match="unknown option"):
        _make_options(None, opts, {"nope": 1})
