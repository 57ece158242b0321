"""Batched CG (curvlab.solvers.cg) against a plain per-system CG loop, float64: the same x,
iteration counts, convergence and non-positive-curvature flags on groups of mixed sizes with
systems that stop early (converged, zero right-hand side, pᵀAp ≤ 0), in every layout (short
systems unrolled with their history, with bmm or vecdot inner products, its stops read by numpy
on the host or by torch ops; long systems masked per group; short systems whose history does not
fit); the short iteration's operation count, with the host checks (≤ 8 ATen calls, issue 24); and
the short layout's buffers kept from one solve to the next."""

from __future__ import annotations

import pytest
import torch

from curvlab.solvers import cg, eacg_reduced
from curvlab.solvers.eacg import eacg_solve

from tests.test_eacg import random_blocks

pytestmark = pytest.mark.usefixtures("float64_default")  # compare in float64 (tests/conftest.py)


def plain_cg(a: torch.Tensor, b: torch.Tensor, max_iter: int, eps: float) -> tuple[torch.Tensor, int, bool, bool]:
    """Textbook CG from 0 for one system: (x, iterations, converged, stopped by pᵀAp ≤ 0)."""
    x, r, p = torch.zeros_like(b), b.clone(), b.clone()
    rs = r @ r
    tol2 = eps**2 * rs
    if rs <= tol2:
        return x, 0, True, False
    for i in range(max_iter):
        ap = a @ p
        pap = p @ ap
        if pap <= 0:  # the model is unbounded along p: keep x, or −g = b at the start
            return (b.clone() if i == 0 else x), i, False, True
        step = rs / pap
        x, r = x + step * p, r - step * ap
        rs_new = r @ r
        if rs_new <= tol2:
            return x, i + 1, True, False
        p, rs = r + (rs_new / rs) * p, rs_new
    return x, max_iter, False, False


def random_spd(n: int, gen: torch.Generator) -> torch.Tensor:
    q = torch.randn(n, n, generator=gen)
    return q @ q.T / n + 0.1 * torch.eye(n)


def mixed_groups(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Groups (A (S, n, n), b (S, m, c)) with n = m c: random SPD systems of three shapes, and
    systems that stop early: identity (converges in one step), b = 0, an indefinite matrix whose
    pᵀAp turns negative after a few steps, diag(1, −1, …) with pᵀAp = 0 exactly at the start,
    and a negative definite one (pᵀAp < 0 at the start)."""
    gen = torch.Generator().manual_seed(seed)
    groups = []
    for n_sys, m, c in ((4, 6, 1), (3, 3, 2), (2, 12, 1)):
        a = torch.stack([random_spd(m * c, gen) for _ in range(n_sys)])
        groups.append((a, torch.randn(n_sys, m, c, generator=gen)))
    n = 5
    indefinite = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5, -0.2]))
    rot = torch.linalg.qr(torch.randn(n, n, generator=gen))[0]
    zero_at_start = torch.diag(torch.tensor([1.0, -1.0, 2.0, 2.0, 2.0]))
    a = torch.stack([torch.eye(n), random_spd(n, gen), rot @ indefinite @ rot.T, zero_at_start, -random_spd(n, gen)])
    b = torch.randn(5, n, 1, generator=gen)
    b[1] = 0
    b[3] = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])[:, None]
    groups.append((a, b))
    return groups


def matvec(a: torch.Tensor) -> cg.MatVec:
    return lambda x: (a @ x.reshape(a.shape[0], -1, 1)).reshape(x.shape)


@pytest.fixture(params=["dense", "dense_bmm", "dense_torch_read", "per_group", "no_history"])
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(cg, "_HOST_READ", request.param != "dense_torch_read")  # CUDA's read-out on the CPU
    if request.param == "per_group":
        monkeypatch.setattr(cg, "_SHORT", 0)  # every system counts as long
    if request.param == "no_history":
        monkeypatch.setattr(cg, "_HISTORY_BYTES", 0)  # short systems whose history does not fit: masked
    monkeypatch.setattr(cg, "_DOT_BY_BMM", request.param == "dense_bmm")  # CUDA's inner products
    return request.param


@pytest.mark.parametrize("check_every", [1, 3, 1000])  # how often the host checks which groups run
@pytest.mark.parametrize(("max_iter", "eps"), [(1, 0.0), (2, 1e-8), (4, 0.3), (7, 0.0), (60, 1e-9), (60, 0.05)])
def test_batched_cg_equals_plain_cg(max_iter: int, eps: float, check_every: int, layout: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cg, "_CHECK_SHORT", check_every)
    groups = mixed_groups()
    results = cg.batched_cg([matvec(a) for a, _ in groups], [b for _, b in groups], max_iter, eps)
    stops = set()
    for (a, b), res in zip(groups, results, strict=True):
        for s in range(a.shape[0]):
            x, iters, conv, neg = plain_cg(a[s], b[s].flatten(), max_iter, eps)
            # Round-off only: reductions are summed in another order than a @ b.
            torch.testing.assert_close(res.x[s].flatten(), x, rtol=1e-7, atol=1e-9 * float(x.abs().max()))
            assert (int(res.iters[s]), bool(res.converged[s]), bool(res.neg_curvature[s])) == (iters, conv, neg)
            stops.add((conv, neg, iters < max_iter))
    if max_iter == 60:  # every way of stopping occurred: converged early, pᵀAp ≤ 0, and ran out
        assert {(True, False, True), (False, True, True)} <= stops


def test_stopped_systems_stay_frozen() -> None:
    """A system that stopped keeps x bit for bit while the others go on."""
    (a, b), *_ = mixed_groups()
    a[0] = torch.eye(a.shape[1])  # stops after one step; the others run all 5
    short, = cg.batched_cg([matvec(a)], [b], 1, 1e-12)
    long, = cg.batched_cg([matvec(a)], [b], 5, 1e-12)
    assert long.iters.tolist() == [1, 5, 5, 5]
    assert torch.equal(short.x[0], long.x[0])


@pytest.mark.parametrize("fold_scale", [False, True])
def test_rank_one_perp_apart_equals_folded(fold_scale: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """EA-CG's reduced systems: the ⊥ unknown (and the scale) handled apart (large blocks) or
    folded into (scale ·) diag(0, B_j) (small ones) give the same direction and statistics."""
    blocks = random_blocks([7, 6, 5, 3], seed=3)
    monkeypatch.setattr(eacg_reduced, "_FOLD_SCALE", fold_scale)
    folded = eacg_solve(blocks, 0.05, max_cg=6, eps_cg=1e-6, split=2)
    monkeypatch.setattr(eacg_reduced, "_FOLD", 0)
    apart = eacg_solve(blocks, 0.05, max_cg=6, eps_cg=1e-6, split=2)
    assert folded[1] == apart[1]
    for got, want in zip(apart[0], folded[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def _top_level_aten_calls(fn) -> int:  # type: ignore[no-untyped-def]
    """ATen calls that Python dispatches while ``fn`` runs (not called by another ATen op)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    called = [(e.name, e.cpu_parent.name if e.cpu_parent else "") for e in prof.events()]
    return sum(name.startswith("aten::") and not parent.startswith("aten::") for name, parent in called)


@pytest.mark.parametrize("bmm", [False, True])
def test_short_iteration_is_seven_ops_plus_the_matvec(bmm: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """One iteration of the short layout: 2 inner products, 2 divisions, 2 ``addcmul`` and the
    matvec (EA-CG's folded reduced matvec: one ``baddbmm``), nothing per system or per group."""
    monkeypatch.setattr(cg, "_DOT_BY_BMM", bmm)
    monkeypatch.setattr(eacg_reduced, "_FOLD_SCALE", True)
    groups = eacg_reduced.rank_one_groups(random_blocks([7, 6, 5, 3], seed=3), 0.05, 2, True, False)
    rhs = [g.rhs for g in groups]
    state = cg._Unrolled.cached(cg._groups(rhs), rhs, 0.0, 4)
    ops = [cg._matvec_op(g.matvec, p, ap) for g, p, ap in zip(groups, state.views["p"], state.views["ap"])]
    state.step(ops)  # first-call work stays out of the count
    assert _top_level_aten_calls(lambda: state.step(ops)) == 6 + len(ops)


def test_kept_state_gives_the_same_bits_as_a_fresh_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The short layout's buffers are kept for the next solve of the same shapes: a solve after
    one that ran systems into NaN (b = 0, pᵀAp = 0) gives what a fresh state gives, bit for bit."""
    monkeypatch.setattr(cg, "_STATES", {})
    first, second = mixed_groups(0), mixed_groups(1)
    solve = lambda gs: cg.batched_cg([matvec(a) for a, _ in gs], [b for _, b in gs], 30, 0.0)  # noqa: E731
    solve(first)
    assert len(cg._STATES) == 1
    kept = solve(second)
    cg._STATES.clear()
    fresh = solve(second)
    for k, f in zip(kept, fresh, strict=True):
        assert torch.equal(k.x, f.x) and torch.equal(k.iters, f.iters)
        assert torch.equal(k.converged, f.converged) and torch.equal(k.neg_curvature, f.neg_curvature)


# SPD groups only, 3 iterations: every system stops at max_iter (x copied from one frame); all
# groups, 30 iterations: systems stop at different iterations (x gathered).
@pytest.mark.parametrize(("max_iter", "n_groups"), [(3, 3), (30, 4)])
def test_host_read_out_gives_the_bits_of_the_torch_read_out(max_iter: int, n_groups: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU's stops read by numpy views of the history equal CUDA's torch read-out bit for bit:
    x, iterations and flags, also for systems stopped by b = 0 or pᵀAp ≤ 0 (NaN in later frames)."""
    groups = mixed_groups(2)[:n_groups]
    got = {}
    for host in (True, False):
        monkeypatch.setattr(cg, "_HOST_READ", host)
        got[host] = cg.batched_cg([matvec(a) for a, _ in groups], [b for _, b in groups], max_iter, 0.0)
    for h, t in zip(got[True], got[False], strict=True):
        assert torch.equal(h.x, t.x) and torch.equal(h.iters, t.iters)
        assert torch.equal(h.converged, t.converged) and torch.equal(h.neg_curvature, t.neg_curvature)
        assert h.host is not None and t.host is None
    stops = {int(i) for r in got[True] for i in r.iters.flatten()}
    assert stops == {3} if max_iter == 3 else len(stops) > 2


def test_eacg_stats_from_the_host_equal_the_torch_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """EA-CG's statistics read from the host arrays equal those of the torch path; same direction."""
    blocks = random_blocks([7, 6, 5, 3], seed=4, indefinite=True)
    got = {}
    for host in (True, False):
        monkeypatch.setattr(cg, "_HOST_READ", host)
        got[host] = eacg_solve(blocks, 0.05, max_cg=20, eps_cg=1e-3, split=2)
    assert got[True][1] == got[False][1]
    assert got[True][1]["neg_curvature"] >= 1 and got[True][1]["cg_iters_mean"] < 20  # stops of each kind
    for h, t in zip(got[True][0], got[False][0], strict=True):
        assert torch.equal(h, t)


def test_cpu_iteration_with_its_host_checks_is_at_most_eight_aten_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24's count as ``scripts/bench_cg_kernels.py`` takes it: (calls of a 50-iteration solve −
    those of a 1-iteration one) / 49, EA-CG's reduced systems, CPU default: 8 operations, the host
    checks none (numpy views)."""
    monkeypatch.setattr(cg, "_DOT_BY_BMM", None)
    monkeypatch.setattr(eacg_reduced, "_FOLD_SCALE", None)
    blocks = random_blocks([7, 6, 5, 3], seed=3)

    def solve(n: int) -> None:
        groups = eacg_reduced.rank_one_groups(blocks, 0.05, 1, True, False)
        cg.batched_cg([g.matvec for g in groups], [g.rhs for g in groups], n, 0.0)

    counts = []
    for n in (50, 1):
        solve(n)  # first-call work stays out of the count
        counts.append(_top_level_aten_calls(lambda n=n: solve(n)))
    assert (counts[0] - counts[1]) / 49 <= 8
    monkeypatch.setattr(cg, "_HOST_READ", False)  # the torch checks: ≈ 1 call more an iteration
    solve(50)
    assert (_top_level_aten_calls(lambda: solve(50)) - counts[1]) / 49 > 8
