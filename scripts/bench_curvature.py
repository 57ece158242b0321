"""Benchmark the curvature recursion on the EA-CG CIFAR-10 net against a gradient step.

Net 3072-1024-512-256-128-64-32-16-10 (sigmoid, Xavier), batch 500, float32, random inputs.
Every time is printed as a ratio to a plain gradient step (forward + backward with autograd)
measured in the same run, because the machine is shared and absolute times are noisy. Times
are the best of ``--repeats`` rounds, measured round-robin.

Printed figures:

* ``<kind> pass``: ``curvature(..., cache=cache)`` after a forward pass. It also returns the
  batch-mean gradients, so a solver's step is forward + pass and needs no autograd backward;
  ``extra`` = (forward + pass − gradient step) / gradient step is the cost of the curvature
  itself (target for pch1/gn with the rank-one weight factor: ≤ 0.5);
* ``nn.Sequential``: the same net built as ``nn.Sequential(Flatten, Linear, Sigmoid, …)``
  (sharing the MLP's parameters) through the generic module rules (``curvlab.modules``):
  forward + pch1 pass and forward + exact-Fisher pass, each as a ratio to the MLP's fused path
  measured in the same round-robin (target: within 10 %, i.e. ratio ≤ 1.10);
* BackPACK's KFAC, KFRA and KFLR (forward + backward with the extension) on the same net;
* ``exact``: the exact bias blocks of the whole batch (seconds; target ≤ 10 s on 2 cores),
  with the GEMM work it needs and the GEMM rate of the machine at that moment.

Beside each ratio: ``floor``, the flop floor of what the row computes ÷ that of a gradient
step (``scripts/flop_floor.py``; BackPACK's rows: the floor of the same curvature, with
E[h hᵀ]), so that ratio ÷ floor is how far a row runs above its matrix products.

Usage: ``python scripts/bench_curvature.py [--quick] [--batch B] [--repeats N] [--no-exact]
[--no-backpack]``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Callable

import torch

import curvlab
import curvlab.nets
import flop_floor as ff
from curvlab.losses import CrossEntropy

WIDTHS = [3072, 1024, 512, 256, 128, 64, 32, 16, 10]


GENERIC_PASSES = [("pch1", {}), ("fisher", {"fisher": "exact"})]  # MLP vs nn.Sequential, fwd + pass
CLOCK = time.perf_counter  # --clock cpu: time.process_time (robust to other processes' load)


def best_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds per function, measured round-robin so that a change in the
    machine's load affects every candidate alike."""
    for fn in fns.values():
        fn()  # warm-up (allocations, lazy initialisation)
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = CLOCK()
            fn()
            best[name] = min(best[name], CLOCK() - t0)
    return best


def gemm_gflops() -> float:
    """Float32 GEMM throughput right now (the machine is shared: this moves with its load)."""
    a = torch.randn(8192, 1024)
    return 2 * 8192 * 1024**2 / best_times({"gemm": lambda: a.T @ a}, 3)["gemm"] / 1e9


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
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time, which other processes' load barely moves "
                             "(use with --threads 1, where no thread spins waiting for another)")
    args = parser.parse_args()
    global CLOCK
    if args.clock == "cpu":
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    # BackPACK's hooks warn that the input needs no gradient; that is intended here.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    if args.quick:
        args.batch, args.repeats, args.no_exact = 100, 2, True

    torch.manual_seed(0)
    net = curvlab.MLP(WIDTHS, "sigmoid", init="xavier")
    x = torch.rand(args.batch, WIDTHS[0])
    y = torch.randint(0, WIDTHS[-1], (args.batch,))
    loss = CrossEntropy()
    print(f"net {'-'.join(map(str, WIDTHS))} sigmoid, batch {args.batch}, float32, "
          f"{torch.get_num_threads()} threads, best of {args.repeats} (round-robin), {args.clock} clock")

    def grad_step() -> None:
        net.zero_grad()
        loss(net(x), y).backward()

    def forward() -> curvlab.nets.ForwardCache:
        with torch.no_grad():
            return net.forward_cache(x)

    cache = forward()
    fns: dict[str, Callable[[], object]] = {"gradient step (fwd+bwd)": grad_step, "forward pass (cached)": forward}
    passes = [("pch1", {}), ("gn", {}), ("pch2", {}), ("pch1", {"jacobian_average": "mean"}),
              ("fisher", {"fisher": "mc"}), ("fisher", {"fisher": "exact"})]
    for kind, opts in passes:
        label = kind + "".join(f" {v}" for v in opts.values()) + " pass"
        fns[label] = lambda kind=kind, opts=opts: curvlab.curvature(net, x, y, kind, loss, cache=cache, **opts)
    seq = net.as_sequential()  # the same parameters, through the generic module rules
    for kind, opts in GENERIC_PASSES:
        for label, model in [("MLP", net), ("nn.Sequential", seq)]:
            fns[f"{kind} fwd+pass {label}"] = (
                lambda model=model, kind=kind, opts=opts: curvlab.curvature(model, x, y, kind, loss, **opts)
            )
    if not args.no_backpack:
        try:
            fns.update({f"BackPACK {k} (fwd+bwd)": v for k, v in backpack_steps(net, x, y).items()})
        except ImportError:
            print("BackPACK not installed (pip install backpack-for-pytorch); peers skipped")
    best = best_times(fns, args.repeats)
    t_grad, t_fwd = best["gradient step (fwd+bwd)"], best["forward pass (cached)"]
    floors = flop_floors(args.batch)
    for name, t in best.items():
        extra = f"   extra {(t + t_fwd - t_grad) / t_grad:+5.2f}x" if name.endswith(" pass") else ""
        floor = f"   floor {floors[name]:4.2f}x" if name in floors else ""
        print(f"{name:28s} {t * 1e3:8.1f} ms   {t / t_grad:5.2f}x{floor}{extra}")

    for kind, _ in GENERIC_PASSES:
        ratio = best[f"{kind} fwd+pass nn.Sequential"] / best[f"{kind} fwd+pass MLP"]
        print(f"{kind + ' nn.Sequential / MLP':28s} {ratio:8.3f}    (target <= 1.10)")

    if not args.no_exact:
        wall, cpu = time.perf_counter(), time.process_time()
        curvlab.curvature(net, x, y, "exact", loss, cache=cache)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        t = cpu if args.clock == "cpu" else wall
        print(f"{'exact blocks (whole batch)':28s} {t:8.2f} s   {t / t_grad:5.0f}x   (target <= 10 s wall on 2 cores; "
              f"wall {wall:.1f} s, CPU {cpu:.1f} s)")
        flops = 2 * exact_macs(WIDTHS, args.batch)
        rate = gemm_gflops()
        print(f"  {flops / 1e9:.0f} GFLOP in GEMMs; one float32 GEMM runs at {rate:.0f} GFLOP/s ({args.clock} clock) "
              f"now, i.e. {flops / rate / 1e9:.1f} s of pure GEMM")


def flop_floors(batch: int) -> dict[str, float]:
    """Flop floor of each row ÷ that of a gradient step (the exact kind has its own line)."""
    w, fwd = WIDTHS, ff.forward(WIDTHS, batch)
    fisher_mc, fisher_exact = ff.fisher_pass(w, batch), ff.fisher_pass(w, batch, rows=w[-1])
    flops = {
        "gradient step (fwd+bwd)": ff.grad_step(w, batch),
        "forward pass (cached)": fwd,
        "pch1 pass": ff.mean_pass(w, batch),
        "gn pass": ff.mean_pass(w, batch),
        "pch2 pass": ff.mean_pass(w, batch),
        "pch1 mean pass": ff.mean_pass(w, batch, per_sample=False),
        "fisher mc pass": fisher_mc,
        "fisher exact pass": fisher_exact,
        "BackPACK KFAC (fwd+bwd)": fwd + ff.fisher_pass(w, batch, cov=True),
        "BackPACK KFRA (fwd+bwd)": fwd + ff.mean_pass(w, batch, cov=True),
        "BackPACK KFLR (fwd+bwd)": fwd + ff.fisher_pass(w, batch, rows=w[-1], cov=True),
    }
    for label in ("MLP", "nn.Sequential"):
        flops[f"pch1 fwd+pass {label}"] = fwd + flops["pch1 pass"]
        flops[f"fisher fwd+pass {label}"] = fwd + fisher_exact
    return {k: v / flops["gradient step (fwd+bwd)"] for k, v in flops.items()}


def exact_macs(widths: list[int], batch: int) -> float:
    """Multiply-adds of the exact recursion: per sample (H_i W) then Wᵀ(·) per layer, the last
    (first-layer) product as a symmetric sum of three half-width GEMMs."""
    macs = 0.0
    for t in range(len(widths) - 2, 0, -1):  # step from block n_{t+1} to n_t
        n_prev, n_t = widths[t], widths[t + 1]
        second = n_prev * n_prev * n_t * (0.75 if t == 1 and n_prev >= 256 else 1.0)
        macs += n_t * n_t * n_prev + second
    return macs * batch


if __name__ == "__main__":
    main()
