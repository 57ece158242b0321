#!/usr/bin/env python
"""Kronecker-factor passes against their peers, and the PCH-1 pass's growth with width (issue 24).

Net 3072-1024-512-256-128-64-32-16-10 (sigmoid, Xavier), batch 500, float32, random inputs,
one process. Every time is a ratio to a gradient step (forward + backward with autograd):
each round times every candidate once, the ratio of a round is candidate ÷ that round's
gradient step, and the figure is the median over the rounds (the machine is shared).
Beside each ratio: its flop floor ÷ the gradient step's (``scripts/flop_floor.py``); for the
peers, the flops their algorithm does (full products where curvlab takes the triangle).

1. Factor passes, each with its forward: curvlab's Fisher (MC, empirical) and GN passes with
   E[h hᵀ] on every layer, against curvlinops' KFAC (same Fisher type) and BackPACK's KFRA.
   Target: curvlab ≤ its peer.
2. The PCH-1 pass (after the forward, which a solver has anyway) at half, normal and double
   hidden widths (input 3072 and 10 classes fixed). Target: ≤ 1.5× at double width.

    python scripts/bench_factors.py [--rounds 7] [--threads 1] [--clock cpu|wall] [--no-peers] [--no-widths]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Callable

import torch

import curvlab
import flop_floor as ff
from curvlab.losses import CrossEntropy

WIDTHS = [3072, 1024, 512, 256, 128, 64, 32, 16, 10]
SCALES = (0.5, 1.0, 2.0)
PCH_TARGET = 1.5  # PCH-1 pass ÷ gradient step at double width


def scaled(scale: float) -> list[int]:
    """Hidden widths times ``scale``; input and classes fixed."""
    return [WIDTHS[0]] + [max(WIDTHS[-1], int(w * scale)) for w in WIDTHS[1:-1]] + [WIDTHS[-1]]


def median_ratios(fns: dict[str, Callable[[], object]], rounds: int, clock: Callable[[], float]) -> dict[str, float]:
    """Median over rounds of (time ÷ the same round's ``grad`` time); ``grad`` must be in ``fns``."""
    for fn in fns.values():
        fn()  # warm-up
    ratios: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        took = {}
        for name, fn in fns.items():
            t0 = clock()
            fn()
            took[name] = clock() - t0
        for name in fns:
            ratios[name].append(took[name] / took["grad"])
    return {k: statistics.median(v) for k, v in ratios.items()}


def page_faults(fn: Callable[[], object], between: Callable[[], object]) -> int:
    """Minor page faults of one ``fn()`` after ``between()`` (as in a round), the median of 3; -1 off Unix.
    Each fresh 4 KiB page costs ≈ 1.3 µs to fault in (``curvlab.hugepages``)."""
    try:
        import resource
    except ImportError:
        return -1
    counts = []
    for _ in range(3):
        between()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return statistics.median(counts)


def problem(widths: list[int], batch: int):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = curvlab.MLP(widths, "sigmoid", init="xavier")
    x, y = torch.rand(batch, widths[0]), torch.randint(0, widths[-1], (batch,))
    loss = CrossEntropy()

    def grad() -> None:
        net.zero_grad()
        loss(net(x), y).backward()

    return net, x, y, loss, grad


def peer_steps(net: curvlab.MLP, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    """curvlinops' KFAC factors (MC, empirical) and BackPACK's KFRA on copies of ``net``."""
    import copy

    from backpack import backpack, extend
    from backpack.extensions import KFRA
    from curvlinops import KFACLinearOperator

    seq = net.as_sequential()
    params = list(seq.parameters())

    def kfac(fisher: str) -> Callable[[], object]:
        return lambda: KFACLinearOperator(
            seq, torch.nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False, fisher_type=fisher
        ).compute_kronecker_factors()

    model, lossfn = extend(copy.deepcopy(seq)), extend(torch.nn.CrossEntropyLoss())

    def kfra() -> None:
        model.zero_grad()
        loss = lossfn(model(x), y)
        with backpack(KFRA()):
            loss.backward()

    return {"curvlinops KFAC mc": kfac("mc"), "curvlinops KFAC empirical": kfac("empirical"), "BackPACK KFRA": kfra}


def factor_passes(batch: int, rounds: int, clock: Callable[[], float]) -> None:
    net, x, y, loss, grad = problem(WIDTHS, batch)
    unit = ff.grad_step(WIDTHS, batch)
    fwd = ff.forward(WIDTHS, batch)
    rows: dict[str, tuple[Callable[[], object], float, str | None]] = {
        "grad": (grad, unit, None),
        "curvlab Fisher mc + E[hhT]": (
            lambda: curvlab.curvature(net, x, y, "fisher", loss, fisher="mc", input_cov=True),
            fwd + ff.fisher_pass(WIDTHS, batch, cov=True), "curvlinops KFAC mc"),
        "curvlab Fisher empirical + E[hhT]": (
            lambda: curvlab.curvature(net, x, y, "fisher", loss, fisher="empirical", input_cov=True),
            fwd + ff.fisher_pass(WIDTHS, batch, cov=True, empirical=True), "curvlinops KFAC empirical"),
        "curvlab GN + E[hhT]": (
            lambda: curvlab.curvature(net, x, y, "gn", loss, input_cov=True),
            fwd + ff.mean_pass(WIDTHS, batch, cov=True), "BackPACK KFRA"),
    }
    try:
        floors = {"curvlinops KFAC mc": ff.curvlinops_kfac(WIDTHS, batch),
                  "curvlinops KFAC empirical": ff.curvlinops_kfac(WIDTHS, batch),
                  "BackPACK KFRA": ff.backpack_kfra(WIDTHS, batch)}
        rows.update({k: (fn, floors[k], None) for k, fn in peer_steps(net, x, y).items()})
    except ImportError as err:
        print(f"peers skipped ({err.name} not installed: pip install curvlinops-for-pytorch backpack-for-pytorch)")
    ratio = median_ratios({k: v[0] for k, v in rows.items()}, rounds, clock)
    print(f"\n1. factor passes with their forward, batch {batch}: x gradient step (flop floor x)")
    for name, (_, flops, peer) in rows.items():
        what = "floor" if name == "grad" or name.startswith("curvlab") else "flops"
        verdict = ""
        if peer in ratio:
            verdict = f"  vs {peer}: {ratio[name] / ratio[peer]:.2f}  {'ok' if ratio[name] <= ratio[peer] else 'MISS'}"
        print(f"  {name:36s} {ratio[name]:5.2f}x  ({what} {flops / unit:4.2f}x){verdict}")


def width_growth(batch: int, rounds: int, clock: Callable[[], float]) -> None:
    print(f"\n2. PCH-1 pass (after the forward) x gradient step at hidden widths x{', x'.join(map(str, SCALES))}")
    for scale in SCALES:
        widths = scaled(scale)
        net, x, y, loss, grad = problem(widths, batch)
        with torch.no_grad():
            cache = net.forward_cache(x)
        run = lambda: curvlab.curvature(net, x, y, "pch1", loss, cache=cache)  # noqa: E731
        ratio = median_ratios({"grad": grad, "pass": run}, rounds, clock)["pass"]
        floor = ff.mean_pass(widths, batch) / ff.grad_step(widths, batch)
        target = f"  target <= {PCH_TARGET} {'ok' if ratio <= PCH_TARGET else 'MISS'}" if scale == SCALES[-1] else ""
        print(f"  {'-'.join(map(str, widths[:4]))}-…  {ratio:5.2f}x  (floor {floor:4.2f}x, "
              f"{ratio / floor:4.2f}x the floor, {page_faults(run, grad):,} page faults){target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (the median ratio is printed)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: ratios of the work done)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: process CPU time (steady on a shared machine with 1 thread); wall: wall-clock")
    parser.add_argument("--no-peers", action="store_true", help="skip part 1 (the factor passes and peers)")
    parser.add_argument("--no-widths", action="store_true", help="skip part 2 (PCH-1 pass at three widths)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # BackPACK: input needs no grad
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"net {'-'.join(map(str, WIDTHS))} sigmoid, batch {args.batch}, float32, {torch.get_num_threads()} "
          f"thread(s), {args.clock} clock, median of {args.rounds} per-round ratios")
    if not args.no_peers:
        factor_passes(args.batch, args.rounds, clock)
    if not args.no_widths:
        width_growth(args.batch, args.rounds, clock)


if __name__ == "__main__":
    main()
