"""Benchmark the curvature recursion on the EA-CG CIFAR-10 net against a gradient step.

Net 3072-1024-512-256-128-64-32-16-10 (sigmoid), batch 500, float32, random inputs. Every time
is printed as a ratio to a plain gradient step (forward + backward with autograd) measured in
the same run, because the machine is shared and absolute times are noisy. Times are the best
of ``--repeats`` runs.

Printed figures:

* ``<kind> pass``: ``curvature(..., cache=cache)`` after a forward pass (what a solver adds;
  it also returns the batch-mean gradients, so it replaces the backward pass);
* ``fwd + <kind>``: a whole solver step's curvature and gradient work;
* ``exact``: the exact bias blocks of the whole batch (seconds; target ≤ 10 s on 2 cores);
* BackPACK's KFAC, KFRA and KFLR (forward + backward with the extension) on the same net.

Usage: ``python scripts/bench_curvature.py [--quick] [--repeats N] [--no-exact] [--no-backpack]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

import curvlab
from curvlab.losses import CrossEntropy

WIDTHS = [3072, 1024, 512, 256, 128, 64, 32, 16, 10]


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocations, lazy initialisation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def backpack_steps(net: curvlab.MLP, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Forward + backward with BackPACK's KFAC, KFRA and KFLR on a copy of ``net``."""
    from backpack import backpack, extend
    from backpack.extensions import KFAC, KFLR, KFRA

    mods: list[torch.nn.Module] = []
    for t, layer in enumerate(net.layers):
        lin = torch.nn.Linear(layer.in_features, layer.out_features)
        lin.load_state_dict(layer.state_dict())
        mods.append(lin)
        if t < net.depth - 1:
            mods.append(torch.nn.Sigmoid())
    model = extend(torch.nn.Sequential(*mods))
    lossfn = extend(torch.nn.CrossEntropyLoss())

    def step(ext: object) -> Callable[[], object]:
        def run() -> None:
            model.zero_grad()
            loss = lossfn(model(x), y)
            with backpack(ext):
                loss.backward()

        return run

    return {"KFAC": step(KFAC()), "KFRA": step(KFRA()), "KFLR": step(KFLR())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 100, 2 repeats, no exact blocks")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-exact", action="store_true", help="skip the exact blocks (the slowest part)")
    parser.add_argument("--no-backpack", action="store_true", help="skip the BackPACK peers")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats, args.no_exact = 100, 2, True

    torch.manual_seed(0)
    net = curvlab.MLP(WIDTHS, "sigmoid", init="xavier")
    x = torch.rand(args.batch, WIDTHS[0])
    y = torch.randint(0, WIDTHS[-1], (args.batch,))
    loss = CrossEntropy()
    print(f"net {'-'.join(map(str, WIDTHS))} sigmoid, batch {args.batch}, float32, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")

    def grad_step() -> None:
        net.zero_grad()
        loss(net(x), y).backward()

    def forward() -> object:
        with torch.no_grad():
            return net.forward_cache(x)

    t_grad = best_of(grad_step, args.repeats)
    t_fwd = best_of(forward, args.repeats)
    cache = forward()
    print(f"{'gradient step (fwd+bwd)':28s} {t_grad * 1e3:8.1f} ms   1.00x")
    print(f"{'forward pass (cached)':28s} {t_fwd * 1e3:8.1f} ms   {t_fwd / t_grad:4.2f}x")

    for kind, opts in [("pch1", {}), ("gn", {}), ("pch2", {}), ("fisher", {"fisher": "mc"}),
                       ("fisher", {"fisher": "exact"})]:
        label = kind + (f"({opts['fisher']})" if opts else "")
        t = best_of(lambda: curvlab.curvature(net, x, y, kind, loss, cache=cache, **opts), args.repeats)
        print(f"{label + ' pass':28s} {t * 1e3:8.1f} ms   {t / t_grad:4.2f}x   "
              f"(fwd + pass: {(t + t_fwd) / t_grad:4.2f}x)")

    if not args.no_backpack:
        try:
            peers = backpack_steps(net, x, y)
        except ImportError:
            print("BackPACK not installed (pip install backpack-for-pytorch); peers skipped")
            peers = {}
        for name, fn in peers.items():
            t = best_of(fn, args.repeats)
            print(f"{'BackPACK ' + name + ' (fwd+bwd)':28s} {t * 1e3:8.1f} ms   {t / t_grad:4.2f}x")

    if not args.no_exact:
        t0 = time.perf_counter()
        curvlab.curvature(net, x, y, "exact", loss, cache=cache)
        t = time.perf_counter() - t0
        print(f"{'exact blocks (whole batch)':28s} {t:8.2f} s    {t / t_grad:4.0f}x   (target <= 10 s)")


if __name__ == "__main__":
    main()
