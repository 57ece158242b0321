#!/usr/bin/env python
"""Time per step of EA-CG and KFI against a plain SGD step on the EA-CG CIFAR-10 net.

Net 3072-1024-512-256-128-64-32-16-10, sigmoid, Xavier init, cross-entropy, batch 500,
float32 (Chen et al., "Experimental Evaluation"). Methods:

- ``sgd``: one plain SGD step (forward + backward + update), the unit of the ratios;
- ``eacg-cg5`` / ``eacg-cg50``: EA-CG with PCH-1 and the rank-one factor (Eq. 11b), max|CG| = 5
  or 50 and a tiny ε_CG = 1e-12 (so CG runs until max|CG| or until it has converged);
- ``eacg-split<k>``: EA-CG with PCH-1, max|CG| = 50, ε_CG = 0.1 and block splitting k;
- ``kfi-<kind>``: KFI with Fisher (KFAC), GN (KFRA) and PCH-1.

The rows with a target (issue 9: ≤ 1.7×, ≤ 1.8×, ≤ 3×) print it and whether it is met.
``floor``: the step's flop floor ÷ an SGD step's (``scripts/flop_floor.py``; EA-CG with the
CG iterations the step ran, KFI with the factor form it picks per layer).

Each method runs in a fresh process (so that the peak-memory figure is its own): build the
net and one batch, one warm-up step, then ``--steps`` method steps alternating with SGD
steps on a copy of the net, so that every ratio compares timings taken side by side on a
shared, noisy machine (the ratio is the median of the per-pair ratios). Peak memory is the
growth of the process's max RSS (CPU) or of ``torch.cuda.max_memory_allocated`` (CUDA)
beyond the state after setup and one SGD step, i.e. the extra memory a method's step needs
over an SGD step (the ``sgd`` row: a second SGD net's first step). The batch comes from
``../shared/data/cifar10_jpeg.npz`` when present, else uniform noise in [0, 1].

    python scripts/bench_solvers.py                 # all methods, 3 steps each
    python scripts/bench_solvers.py --quick         # 1 step, split 1 and 16 only
    python scripts/bench_solvers.py --threads 1 --clock cpu --steps 5   # stable ratios on a busy machine
    python scripts/bench_solvers.py --device cuda --steps 10

``--clock cpu`` times each step by the process's CPU time (``time.process_time``), which
other processes on a shared machine disturb far less than wall-clock time; with
``--threads 1`` it equals the work done. CUDA always uses wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import flop_floor as ff

WIDTHS = [3072, 1024, 512, 256, 128, 64, 32, 16, 10]
TARGETS = {"eacg-cg5": 1.7, "eacg-cg50": 1.8, "kfi-fisher": 3.0}  # x SGD, issue 9
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_jpeg.npz"


def methods(quick: bool) -> dict[str, tuple[str, dict[str, Any]]]:
    splits = [1, 16] if quick else [1, 4, 16]
    out: dict[str, tuple[str, dict[str, Any]]] = {"sgd": ("sgd", {})}
    rank_one = {"kind": "pch1", "weight_factor": "rank_one"}
    for iters in (5, 50):
        out[f"eacg-cg{iters}"] = ("eacg", {"curvature": rank_one, "max_cg": iters, "eps_cg": 1e-12})
    for k in splits:
        out[f"eacg-split{k}"] = ("eacg", {"curvature": {"kind": "pch1"}, "max_cg": 50, "eps_cg": 0.1, "split": k})
    for kind in ("fisher", "gn", "pch1"):
        out[f"kfi-{kind}"] = ("kfi", {"curvature": {"kind": kind}})
    return out


def floor_ratio(name: str, options: dict[str, Any], stats: dict[str, float], batch: int) -> float:
    """The flop floor of one step of a method ÷ an SGD step's."""
    if name == "eacg":
        iters = int(stats.get("cg_iters", options["max_cg"]))
        flops = ff.eacg_step(WIDTHS, batch, iters, options.get("split", 1))
    elif name == "kfi":
        flops = ff.kfi_step(WIDTHS, batch, options["curvature"]["kind"])
    else:
        flops = ff.grad_step(WIDTHS, batch)
    return flops / ff.grad_step(WIDTHS, batch)


def _batch(batch: int, device: str):  # type: ignore[no-untyped-def]
    import numpy as np
    import torch

    if DATA.exists():
        with np.load(DATA) as f:
            x = torch.from_numpy(f["x_test"][:batch].reshape(batch, -1).astype(np.float32) / 255.0)
            y = torch.from_numpy(f["y_test"][:batch].astype(np.int64))
        source = "cifar10_jpeg.npz test images"
    else:
        gen = torch.Generator().manual_seed(0)
        x, y = torch.rand(batch, WIDTHS[0], generator=gen), torch.randint(0, 10, (batch,), generator=gen)
        source = "uniform noise (no ../shared/data)"
    return x.to(device), y.to(device), source


def _peak_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def _timed_step(solver, x, y, device: str, clock: str) -> tuple[float, dict[str, float]]:  # type: ignore[no-untyped-def]
    import torch

    now = time.process_time if clock == "cpu" and not device.startswith("cuda") else time.perf_counter
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = now()
    res = solver.step(x, y)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return now() - t0, res.stats


def run_one(
    label: str, name: str, options: dict[str, Any], batch: int, steps: int, device: str,
    threads: int | None = None, clock: str = "wall",
) -> dict[str, Any]:
    """One method in this (fresh) process: its time, SGD's time and its peak memory.

    Method and SGD steps alternate, so that both see the same load on a shared machine.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)

    import curvlab
    from curvlab.losses import make_loss
    from curvlab.solvers import make_solver

    torch.manual_seed(0)
    x, y, source = _batch(batch, device)
    loss = make_loss("cross_entropy")

    def fresh(name_: str, opts: dict[str, Any]):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        net = curvlab.MLP(WIDTHS, activation="sigmoid", init="xavier").to(device)
        return make_solver(name_, net, loss, lr=0.1, **opts)

    solver, sgd = fresh(name, options), fresh("sgd", {})
    _timed_step(sgd, x, y, device, clock)  # warm-up of the shared parts (forward, backward, allocator)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base = _peak_mb(device)
    _timed_step(solver, x, y, device, clock)  # warm-up (allocations, first-call overheads)
    times, sgd_times, stats = [], [], {}
    for _ in range(steps):
        t, stats = _timed_step(solver, x, y, device, clock)
        times.append(t)
        sgd_times.append(_timed_step(sgd, x, y, device, clock)[0])
    return {
        "method": label,
        "step_s": statistics.median(times),
        "sgd_step_s": statistics.median(sgd_times),
        "ratio": statistics.median(t / s for t, s in zip(times, sgd_times)),
        "peak_mb": _peak_mb(device) - base,
        "stats": stats,
        "data": source,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method (median reported)")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="1 timed step, fewer split values")
    parser.add_argument("--threads", type=int, help="torch threads per method process (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall-clock or process CPU time per step (cpu: steadier under load; CPU only)")
    parser.add_argument("--methods", help="comma-separated subset of the rows (default: all)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    steps = 1 if args.quick else args.steps

    rows = []
    ctx = get_context("spawn")
    chosen = methods(args.quick)
    if args.methods:
        unknown = set(args.methods.split(",")) - set(chosen)
        if unknown:
            parser.error(f"--methods: unknown {', '.join(sorted(unknown))}; allowed: {', '.join(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in args.methods.split(",")}
    for label, (name, opts) in chosen.items():
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            rows.append(pool.submit(
                run_one, label, name, opts, args.batch, steps, args.device, args.threads, args.clock
            ).result())
        r = rows[-1]
        print(f"  done {label}: {r['step_s']:.3f} s/step", file=sys.stderr, flush=True)

    print(f"# solver step times: net {'-'.join(map(str, WIDTHS))}, sigmoid, batch {args.batch}, float32, "
          f"device {args.device}, {rows[0]['threads']} threads, {args.clock} clock, "
          f"{platform.processor() or platform.machine()}")
    print(f"# data: {rows[0]['data']}; median of {steps} step(s) after one warm-up; "
          "x SGD = median ratio to SGD steps interleaved in the same process; "
          "peak MB = extra max RSS over an SGD step")
    print(f"{'method':<14} {'s/step':>8} {'SGD s/step':>10} {'x SGD':>7} {'floor':>6} {'target':>10} {'peak MB':>8}  stats")
    for r in rows:
        name, opts = chosen[r["method"]]
        floor = floor_ratio(name, opts, r["stats"], args.batch)
        st = r["stats"]
        shown = ("cg_iters", "cg_iters_mean", "neg_curvature", "kfi_pi_max")
        extra = ", ".join(f"{k}={v:.3g}" for k, v in st.items() if k in shown)
        target = TARGETS.get(r["method"])
        verdict = "" if target is None else f"<= {target:.1f} {'ok' if r['ratio'] <= target else 'MISS'}"
        print(f"{r['method']:<14} {r['step_s']:8.3f} {r['sgd_step_s']:10.3f} {r['ratio']:7.2f} {floor:6.2f} {verdict:>10} "
              f"{r['peak_mb']:8.0f}  {extra}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
