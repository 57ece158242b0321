"""The conv bench's flop floors (scripts/flop_floor_conv.py) against the flops torch counts when the passes run."""

from __future__ import annotations

import runpy
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import curvlab

ROOT = Path(__file__).resolve().parents[1]
ff = SimpleNamespace(**runpy.run_path(str(ROOT / "scripts" / "flop_floor_conv.py")))  # a script, not a package
BATCH = 4


def _counted(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as mode, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn()
    return mode.get_total_flops()


@pytest.fixture(scope="module")
def problem():  # type: ignore[no-untyped-def]
    """A small DeepOBS-like conv net: conv → ReLU → pad → pool twice, then two Linear layers."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5), nn.ReLU(), nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(3, 2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Linear(144, 32), nn.ReLU(), nn.Linear(32, 10),
    )
    x, y = torch.rand(BATCH, 3, 16, 16), torch.randint(0, 10, (BATCH,))
    return net, x, y, ff.layers(net, (3, 16, 16))


def test_layer_shapes(problem) -> None:  # type: ignore[no-untyped-def]
    *_, layers = problem
    assert [(lay.n_in, lay.n_out, lay.positions, lay.conv) for lay in layers] == [
        (75, 8, 144, True), (72, 16, 36, True), (144, 32, 1, False), (32, 10, 1, False)]


def test_gradient_step_floor_is_what_autograd_runs(problem) -> None:  # type: ignore[no-untyped-def]
    """Forward, weight gradients and input gradients but the first: torch's count to the flop."""
    net, x, y, layers = problem
    got = _counted(lambda: torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters())))
    assert got == ff.grad_step(layers, BATCH)


@pytest.mark.parametrize("kind, opts, rows", [
    ("fisher", {"fisher": "mc", "input_cov": True}, 1),
    ("fisher", {"fisher": "exact", "input_cov": True}, 9),  # cross-entropy: C−1 rows (``ce_hessian_rows``)
    ("fisher", {"fisher": "exact", "input_cov": True, "kfac_type": "reduce"}, 9),
    ("pch1", {}, 9),
])
def test_pass_floor_is_below_the_flops_run(problem, kind: str, opts: dict, rows: int) -> None:  # type: ignore[no-untyped-def]
    """A floor never exceeds what the pass runs, and the pass runs no more than 2x its floor (its full
    Gram products count both triangles; the rest are the floor's own products)."""
    net, x, y, layers = problem
    floor = ff.curvature_pass(layers, BATCH, rows, cov=opts.get("input_cov", False),
                              expand=opts.get("kfac_type", "expand") == "expand")
    got = _counted(lambda: curvlab.curvature(net, x, y, kind, **opts))
    assert floor <= got <= 2 * floor


@pytest.mark.parametrize("kfac_type", ["expand", "reduce"])
def test_kfi_floor_is_what_kfi_factors_and_solves(  # type: ignore[no-untyped-def]
    problem, kfac_type: str, monkeypatch
) -> None:
    """``kfi_factor_solves``: every Cholesky factorisation (n³/3 multiply-adds) and every solve with a factor
    (n² k for k columns) a KFI step runs, to the flop (the dense layers in the Woodbury form at this batch);
    ``update`` is one multiply-add per parameter."""
    from curvlab.losses import CrossEntropy
    from curvlab.solvers import make_solver

    net, x, y, layers = problem
    macs: list[float] = []
    cholesky_ex, cholesky_solve = torch.linalg.cholesky_ex, torch.cholesky_solve

    def counted_cholesky(a, *args, **kw):  # type: ignore[no-untyped-def]
        macs.append(a.shape[-1] ** 3 / 3)
        return cholesky_ex(a, *args, **kw)

    def counted_solve(b, chol, *args, **kw):  # type: ignore[no-untyped-def]
        macs.append(chol.shape[-1] ** 2 * b.shape[-1])
        return cholesky_solve(b, chol, *args, **kw)

    curvature = {"kind": "fisher", "kfac_type": kfac_type}
    solver = make_solver("kfi", net, CrossEntropy(), lr=0.01, curvature=curvature)
    monkeypatch.setattr(torch.linalg, "cholesky_ex", counted_cholesky)
    monkeypatch.setattr(torch, "cholesky_solve", counted_solve)
    solver.direction(x, y)
    assert ff.gram_layers(layers, BATCH) == {2, 3}
    assert 2 * sum(macs) == pytest.approx(ff.kfi_factor_solves(layers, BATCH, kfac_type == "expand"), rel=1e-12)
    assert ff.update(layers) == 2 * sum(p.numel() for p in net.parameters())
