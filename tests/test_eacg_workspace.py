"""EA-CG's kept workspace and the step's apply (issue 24): buffers, views and bindings of the reduced
systems kept from step to step give the bits of fresh ones, and the direction never aliases them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import curvlab
from curvlab.curvature.blocks import LayerCurvature
from curvlab.losses import make_loss
from curvlab.solvers import eacg_reduced, make_solver
from curvlab.solvers.eacg import eacg_solve
from tests.test_eacg import random_blocks

# Unsplit, two buckets: the 300-wide layer alone (B_j too large to fold: ⊥ unknown apart), the others folded.
WIDTHS = [20, 300, 12, 3]


def _copies(blocks: list[LayerCurvature], dtype: torch.dtype) -> list[LayerCurvature]:
    """Fresh tensors (``overwrite`` writes into ``grad_weight``) in ``dtype``."""
    return [dataclasses.replace(b, **{f: getattr(b, f).to(dtype, copy=True)
                                      for f in ("bias", "input_mean", "input_cov", "grad_bias", "grad_weight")})
            for b in blocks]


@pytest.mark.parametrize("split", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("fold_scale", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kept_workspace_gives_the_bits_of_a_fresh_one(split: int, bias: bool, fold_scale: bool, dtype: torch.dtype,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Three solves of different blocks of one shape through one cache: each direction and its statistics
    equal those of a solve without a cache, and a later solve leaves an earlier direction as it was."""
    monkeypatch.setattr(eacg_reduced, "_FOLD_SCALE", fold_scale)  # CUDA's folded scale, refreshed every solve
    _check_kept_against_fresh(split, bias, dtype)
    if fold_scale:  # and CUDA's writes: no numpy views of the scales, ‖G_⊥‖ and the solution
        monkeypatch.setattr(eacg_reduced, "_NUMPY", {})
        _check_kept_against_fresh(split, bias, dtype)


def _check_kept_against_fresh(split: int, bias: bool, dtype: torch.dtype) -> None:
    steps = [random_blocks(WIDTHS, seed=s) for s in range(3)]
    cache: dict = {}
    kept, fresh = [], []
    for blocks in steps:
        d, st = eacg_solve(_copies(blocks, dtype), 0.05, max_cg=20, eps_cg=1e-3, split=split, bias=bias,
                           overwrite=True, cache=cache)
        kept.append(([t.clone() for t in d], d, st))
        fresh.append(eacg_solve(_copies(blocks, dtype), 0.05, max_cg=20, eps_cg=1e-3, split=split, bias=bias,
                                overwrite=True))
    assert len(cache) == 1
    ((plan),) = cache.values()
    assert len(plan) == (2 if split == 1 else 1)  # unsplit: two buckets, both kept
    for (before, later, st), (d, st_fresh) in zip(kept, fresh, strict=True):
        assert st == st_fresh and 1 < st["cg_iters"] <= 20
        for b, k, f in zip(before, later, d, strict=True):
            assert torch.equal(b, f) and torch.equal(k, f)  # the same bits, not overwritten since


def test_cache_is_rebuilt_for_other_shapes_or_options() -> None:
    """A cache of other shapes, α or split is replaced, not misused: the results stay those of fresh solves."""
    cache: dict = {}
    for widths, alpha, split in [([9, 7, 5], 0.05, 1), ([9, 8, 5], 0.05, 1), ([9, 8, 5], 0.1, 1), ([9, 8, 5], 0.1, 2)]:
        blocks = random_blocks(widths, seed=1)
        got, _ = eacg_solve(_copies(blocks, torch.float64), alpha, 10, 0.0, split, cache=cache)
        want, _ = eacg_solve(_copies(blocks, torch.float64), alpha, 10, 0.0, split)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        assert len(cache) == 1


def test_matvec_binding_is_kept_for_the_same_tensors() -> None:
    """The CG state's p and Ap are the same tensors every step: their bound call is made once."""
    (group,) = eacg_reduced.rank_one_groups(random_blocks([9, 7, 5], seed=2), 0.05, 1, True, False)
    mv = group.matvec
    p, ap, other = torch.randn_like(group.rhs), torch.empty_like(group.rhs), torch.empty_like(group.rhs)
    op = mv.bind(p, ap)
    assert mv.bind(p, ap) is op and mv.bind(p, other) is not op
    mv.bind(p, ap)()
    assert torch.equal(ap, mv(p))


def _net_and_batch(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    net = curvlab.MLP([12, 8, 6, 4], activation="relu", init="xavier")
    return net, torch.rand(16, 12), torch.randint(0, 4, (16,))


def test_solver_steps_with_its_workspace_equal_steps_without() -> None:
    """Three EA-CG steps keeping the workspace reach the parameters of steps that start afresh each time."""
    nets = []
    for keep in (True, False):
        net, x, y = _net_and_batch()
        solver = make_solver("eacg", net, make_loss("cross_entropy"), lr=0.5, max_cg=5, eps_cg=0.0)
        for _ in range(3):
            if not keep:
                solver._cache = {}
            solver.step(x, y)
        nets.append([p.detach().clone() for p in net.parameters()])
        assert len(solver._cache) == 1
    assert all(torch.equal(a, b) for a, b in zip(*nets, strict=True))


def test_apply_adds_the_scaled_direction_in_one_call() -> None:
    """θ + s · d for every parameter, the bits of a per-tensor ``add_``; a direction of the wrong length stops."""
    net, _, _ = _net_and_batch()
    solver = make_solver("eacg", net, make_loss("cross_entropy"), lr=0.1)
    d = [torch.randn_like(p) for p in net.parameters()]
    want = [p.detach().clone().add_(dp, alpha=0.3) for p, dp in zip(net.parameters(), d)]
    solver.apply(d, 0.3)
    assert all(torch.equal(p, w) for p, w in zip(net.parameters(), want, strict=True))
    with pytest.raises(ValueError, match="5 direction tensors for 6 parameters"):
        solver.apply(d[:5], 0.3)


def test_params_follow_a_new_net() -> None:
    """The parameter list is walked once per net: a solver given another net steps that net."""
    net, x, y = _net_and_batch()
    solver = make_solver("eacg", net, make_loss("cross_entropy"), lr=0.1)
    assert solver.params is solver.params and [id(p) for p in solver.params] == [id(p) for p in net.parameters()]
    other, _, _ = _net_and_batch(seed=1)
    solver.net = other
    before = [p.detach().clone() for p in net.parameters()]
    solver.step(x, y)
    assert [id(p) for p in solver.params] == [id(p) for p in other.parameters()]
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))  # the old net did not move
