"""The benchmarks' flop floors (scripts/flop_floor.py) against the flops torch counts when the steps run."""

from __future__ import annotations

import runpy
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import curvlab
from curvlab.losses import CrossEntropy

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = [64, 1024, 512, 256, 10]  # wide enough for the multi-panel symmetric products
BATCH = 128


ff = SimpleNamespace(**runpy.run_path(str(ROOT / "scripts" / "flop_floor.py")))  # a script, not a package module


def _counted(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as mode:
        fn()
    return mode.get_total_flops()


@pytest.fixture(scope="module")
def problem():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = curvlab.MLP(WIDTHS, "sigmoid", init="xavier")
    x, y = torch.rand(BATCH, WIDTHS[0]), torch.randint(0, WIDTHS[-1], (BATCH,))
    with torch.no_grad():
        cache = net.forward_cache(x)
    return net, x, y, cache


def test_gradient_step_and_forward_are_counted_exactly(problem) -> None:  # type: ignore[no-untyped-def]
    net, x, y, _ = problem
    assert _counted(lambda: CrossEntropy()(net(x), y).backward()) == ff.grad_step(WIDTHS, BATCH)
    assert _counted(lambda: net.forward_cache(x)) == ff.forward(WIDTHS, BATCH)


@pytest.mark.parametrize(
    "kind, opts, floor",
    [
        ("pch1", {}, lambda: ff.mean_pass(WIDTHS, BATCH)),
        ("gn", {"jacobian_average": "mean"}, lambda: ff.mean_pass(WIDTHS, BATCH, per_sample=False)),
        ("gn", {"input_cov": True}, lambda: ff.mean_pass(WIDTHS, BATCH, cov=True)),
        ("fisher", {"fisher": "mc"}, lambda: ff.fisher_pass(WIDTHS, BATCH)),
        ("fisher", {"fisher": "exact"}, lambda: ff.fisher_pass(WIDTHS, BATCH, WIDTHS[-1])),
        ("fisher", {"fisher": "empirical", "input_cov": True}, lambda: ff.fisher_pass(WIDTHS, BATCH, cov=True, empirical=True)),
    ],
)
def test_curvature_passes_run_within_their_panel_overhead_of_the_floor(problem, kind, opts, floor) -> None:  # type: ignore[no-untyped-def]
    """A floor is a lower bound; the panelled symmetric products add at most (p+1)/2p − 1/2 of a
    full product per symmetric term, which keeps these passes within 20 % of it."""
    net, x, y, cache = problem
    counted = _counted(lambda: curvlab.curvature(net, x, y, kind, CrossEntropy(), cache=cache, **opts))
    assert floor() <= counted <= 1.2 * floor(), (counted, floor())


def test_sym_is_the_triangle_of_a_product() -> None:
    assert ff.sym(3, 5) == 2 * 5 * 6  # 6 entries on and above the diagonal, 5 multiply-adds each
    assert ff.sym(1000, 7) / (2 * 7 * 1000**2) == pytest.approx(0.5, rel=1e-3)


def test_solver_floors_add_their_parts() -> None:
    w, b = [3072, 1024, 512, 10], 500
    base = ff.forward(w, b) + ff.mean_pass(w, b)
    assert ff.eacg_step(w, b, 50) - ff.eacg_step(w, b, 0) == 50 * 4 * (1025**2 + 513**2 + 11**2)
    assert ff.eacg_step(w, b, 0) > base
    # KFI's first layer (3072 inputs, batch 500) takes the Woodbury form: far cheaper than the
    # (3072, 3072) factor, so the step's floor is below forward + pass + E[h hᵀ] of that layer
    assert ff.kfi_step(w, b, "gn") < base + ff.sym(3072, b)


def test_peer_formulas_match_the_counted_flops_of_the_peers(problem) -> None:  # type: ignore[no-untyped-def]
    net, x, y, _ = problem
    seq = net.as_sequential()
    try:
        from curvlinops import KFACLinearOperator
    except ImportError:
        pytest.skip("curvlinops not installed (pip install curvlinops-for-pytorch)")

    def kfac() -> None:
        op = KFACLinearOperator(seq, torch.nn.CrossEntropyLoss(), list(seq.parameters()), [(x, y)],
                                check_deterministic=False, fisher_type="mc")
        op.compute_kronecker_factors()

    assert _counted(kfac) == ff.curvlinops_kfac(WIDTHS, BATCH)
    try:
        from backpack import backpack, extend
        from backpack.extensions import KFRA
    except ImportError:
        pytest.skip("BackPACK not installed (pip install backpack-for-pytorch)")
    import copy

    model, lossfn = extend(copy.deepcopy(seq)), extend(torch.nn.CrossEntropyLoss())

    def kfra() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BackPACK's hook warning: the input needs no gradient
            loss = lossfn(model(x), y)
            with backpack(KFRA()):
                loss.backward()

    # the loss's own (C, C) products are not in the floor
    assert _counted(kfra) == pytest.approx(ff.backpack_kfra(WIDTHS, BATCH), rel=1e-4)
