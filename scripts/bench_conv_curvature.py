"""Benchmark the step recursion (convolutions) against a gradient step, per curvature kind.

Net (float32, random 3×16×16 inputs, 10 classes): Conv2d(3, 16, 3, padding=1) → ReLU →
Conv2d(16, 32, 3, stride=2, padding=1) → ReLU → Conv2d(32, 32, 3, stride=2, padding=1) → ReLU →
Flatten → Linear(512, 10). Every time is a ratio to a plain gradient step (forward + backward
with autograd) measured round-robin in the same process (best of ``--repeats``), because the
machine is shared. ``<kind> pass`` is forward + ``curvature(...)`` (which also returns the
gradients, so a solver needs no autograd backward). Solver steps (EA-CG with 5 CG iterations,
KFI) are ratios to an SGD step. BackPACK's KFAC and KFLR (forward + backward with the
extension, on a copy of the net) are the peers of ``fisher (mc)`` and ``fisher (exact)``. ``exact`` runs on a smaller net (8×8 inputs,
8 and 16 channels: per-sample blocks of the 512-unit first map), with its own gradient step.

Usage: ``OMP_NUM_THREADS=1 python scripts/bench_conv_curvature.py [--batch B] [--repeats N] [--clock cpu]``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_curvature as bc  # noqa: E402  (best_times, and its CLOCK that --clock sets)

import curvlab  # noqa: E402
from curvlab.losses import CrossEntropy  # noqa: E402
from curvlab.modules import chain  # noqa: E402
from curvlab.solvers import make_solver  # noqa: E402


SOLVERS = {  # name: (solver, options); lr tiny so that the net barely moves between rounds
    "sgd step": ("sgd", {}),
    "EA-CG pch1 rank_one (5 CG)": ("eacg", {"curvature": {"kind": "pch1"}, "max_cg": 5, "eps_cg": 0.0}),
    "EA-CG pch1 block (5 CG)": ("eacg", {"curvature": {"kind": "pch1", "weight_factor": "block"}, "max_cg": 5,
                                          "eps_cg": 0.0}),
    "KFI fisher mc": ("kfi", {"curvature": {"kind": "fisher"}}),
    "KFI pch1": ("kfi", {"curvature": {"kind": "pch1"}}),
    # curvature.sketch: 1 Rademacher row per sample instead of the C−1 exact ones (an unbiased approximation)
    "EA-CG pch1 sketch m=1 (5 CG)": ("eacg", {"curvature": {"kind": "pch1", "sketch": True}, "max_cg": 5,
                                              "eps_cg": 0.0}),
    "KFI pch1 sketch m=1": ("kfi", {"curvature": {"kind": "pch1", "sketch": True}}),
}


def conv_net(size: int, c1: int, c2: int) -> nn.Sequential:
    last = size // 4
    return nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(c2, c2, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(c2 * last * last, 10),
    )


def passes(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, kinds: dict[str, dict]) -> dict[str, Callable]:
    loss = CrossEntropy()
    view = chain(net)

    def grad_step() -> None:
        net.zero_grad()
        loss(net(x), y).backward()

    def curv(kind: str, opts: dict) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return curvlab.curvature(net, x, y, kind=kind, cache=view.forward_cache(x), **opts)

        return run

    return {"gradient step": grad_step, **{f"{k} pass": curv(k.split(" ")[0], o) for k, o in kinds.items()}}


def backpack_passes(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable]:
    """Forward + backward with BackPACK's KFAC (1 MC row) and KFLR (exact, C rows) on a copy of ``net``."""
    import copy

    from backpack import backpack, extend
    from backpack.extensions import KFAC, KFLR

    model, lossfn = extend(copy.deepcopy(net)), extend(nn.CrossEntropyLoss())
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # BackPACK's hooks, inputs

    def step(ext: object) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad()
            with backpack(ext):
                lossfn(model(x), y).backward()

        return run

    return {"BackPACK KFAC pass": step(KFAC()), "BackPACK KFLR pass": step(KFLR())}


def solver_steps(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable]:
    loss = CrossEntropy()
    solvers = {name: make_solver(s, net, loss, lr=1e-6, **o) for name, (s, o) in SOLVERS.items()}
    return {name: (lambda solver=solver: solver.step(x, y)) for name, solver in solvers.items()}


def report(times: dict[str, float], base_name: str = "gradient step") -> None:
    base = times[base_name]
    print(f"  {base_name}: {base * 1e3:8.2f} ms")
    for name, t in times.items():
        if name != base_name:
            print(f"  {name:<28} {t * 1e3:8.2f} ms  = {t / base:6.2f} x {base_name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: process time")
    args = parser.parse_args()
    bc.CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter  # read by bc.best_times
    torch.manual_seed(0)
    print(f"torch threads: {torch.get_num_threads()}, batch {args.batch}, float32")
    net = conv_net(16, 16, 32)
    x, y = torch.randn(args.batch, 3, 16, 16), torch.randint(0, 10, (args.batch,))
    kinds = {
        "fisher (mc)": {"fisher": "mc"}, "fisher (exact)": {"fisher": "exact"}, "gn": {}, "pch1": {}, "pch2": {},
        "fisher reduce": {"fisher": "mc", "kfac_type": "reduce"},
        "pch1 sketch m=1": {"sketch": True}, "pch1 sketch m=3": {"sketch": True, "mc_samples": 3},
    }
    print("conv net 3x16x16 -> 16 -> 32 -> 32 channels -> Linear(512, 10):")
    fns = passes(net, x, y, kinds)
    try:
        fns.update(backpack_passes(net, x, y))
    except ImportError:
        print("  (BackPACK not installed: no peer figures)")
    report(bc.best_times(fns, args.repeats))
    print("solver steps on the same net and batch:")
    report(bc.best_times(solver_steps(net, x, y), args.repeats), "sgd step")
    small = conv_net(8, 8, 16)
    xs = torch.randn(args.batch, 3, 8, 8)
    print("small conv net 3x8x8 -> 8 -> 16 -> 16 channels -> Linear(64, 10), exact per-sample blocks:")
    report(bc.best_times(passes(small, xs, y, {"exact": {}, "gn": {}}), args.repeats))


if __name__ == "__main__":
    main()
