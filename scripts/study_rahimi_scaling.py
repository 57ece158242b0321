#!/usr/bin/env python
"""Rahimi scaling study: exact Hessian-inverse-vector product time against depth and width.

Rahimi (2025) claims ``(H + λI)⁻¹ v`` costs O(L·max(a, p)³) — linear in the depth L, like
Pearlmutter's Hessian-vector product — instead of the O((Lp)³) of a dense solve. For
tall-skinny tanh nets (input width = hidden width, batch 32, synthetic data: only shapes
matter for time) this times, per call (median of ``--repeats``):

- ``inverse H``: :func:`curvlab.hessian_inverse_product` on the Hessian,
- ``inverse GN``: the same on the full Gauss-Newton matrix,
- ``HVP``: one Hessian-vector product (:func:`curvlab.hvp.hvp`),
- ``dense solve``: dense Hessian (one HVP per parameter) + ``torch.linalg.solve``, only
  while the net has at most ``--dense-max`` parameters.

Beside the time, the extra peak memory of one call (Rahimi: memory linear in depth too): the
call runs once in a fresh child process, whose high-water mark of resident memory is reset to
its current size just before the call (``/proc/self/clear_refs``); ``peak_mb`` is the high-water
mark after the call minus the size before it (Linux only; nan elsewhere).

Writes ``study.json`` + tidy ``data.csv`` (sweep, value, method, repeat, seconds, peak_mb, params)
into ``--out``; ``curvlab report`` draws the figure.

    python scripts/study_rahimi_scaling.py --out runs/studies/rahimi_scaling
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import time
from typing import Callable

import torch

from curvlab import runfiles as rf
from curvlab.hvp import dense_hessian, hvp
from curvlab.nets import MLP
from curvlab.solvers.exact_inverse import hessian_inverse_product


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up: allocations, lazy imports
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def problem(depth: int, width: int, batch: int, dense_max: int, damping: float) -> dict[str, Callable[[], object]]:
    """The calls to measure on a ``depth``-layer tanh net of ``width`` units (seeded: the same in every process)."""
    torch.manual_seed(0)
    net = MLP([width] * (depth + 1) + [10], activation="tanh", init="xavier")
    x, y = torch.randn(batch, width), torch.randint(0, 10, (batch,))
    n = sum(p.numel() for p in net.parameters())
    v = torch.randn(n)
    methods: dict[str, Callable[[], object]] = {
        "inverse H": lambda: hessian_inverse_product(net, x, y, v, damping, curvature="exact"),
        "inverse GN": lambda: hessian_inverse_product(net, x, y, v, damping, curvature="gn"),
        "HVP": lambda: hvp(net, x, y, v),
    }
    if n <= dense_max:
        methods["dense solve"] = lambda: torch.linalg.solve(dense_hessian(net, x, y) + damping * torch.eye(n), v)
    return methods


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (``VmRSS``: resident now, ``VmHWM``: its high-water mark)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _child_peak(method: str, args: tuple, queue: "mp.Queue[float]") -> None:
    torch.set_num_threads(1)
    depth, width, batch, dense_max, damping = args
    problem(1, 2, 2, dense_max, damping)[method]()  # lazy one-time set-up (kernels, torch.func) on a tiny net
    fn = problem(*args)[method]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident size
    before = _status_kb("VmRSS")
    fn()
    queue.put((_status_kb("VmHWM") - before) / 1024)


def peak_mb(method: str, args: tuple) -> float:
    """Extra peak resident memory (MB) of one call, in a fresh (spawned) process; nan if it fails."""
    ctx = mp.get_context("spawn")  # not fork: a forked child of a process with a live OpenMP pool can hang
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_peak, args=(method, args, queue))
    proc.start()
    proc.join()
    return queue.get() if proc.exitcode == 0 and not queue.empty() else float("nan")


def measure(depth: int, width: int, batch: int, repeats: int, dense_max: int, damping: float) -> list[dict]:
    """Seconds per call, and extra peak memory, of each method on a ``depth``-layer tanh net of ``width`` units."""
    args = (depth, width, batch, dense_max, damping)
    methods = problem(*args)
    n = sum(p.numel() for p in MLP([width] * (depth + 1) + [10]).parameters())
    rows = []
    for name, fn in methods.items():
        try:
            times = _time(fn, repeats)
        except RuntimeError as err:  # e.g. a singular pivot: record it, keep the sweep going
            print(f"{name} at depth {depth}, width {width}: {err}")
            continue
        peak = peak_mb(name, args)
        for r, s in enumerate(times):
            rows.append({"method": name, "repeat": r, "seconds": s, "peak_mb": peak, "params": n, "depth": depth,
                         "width": width})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/studies/rahimi_scaling")
    p.add_argument("--depths", default="2,4,8,16,32")
    p.add_argument("--widths", default="8,16,24,32,48", help="cost grows as width^6 (p^3)")
    p.add_argument("--fixed-width", type=int, default=24, help="width of the depth sweep")
    p.add_argument("--fixed-depth", type=int, default=8, help="depth of the width sweep")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--damping", type=float, default=1.0, help="λ (time does not depend on it; as rahimi_newton)")
    p.add_argument("--dense-max", type=int, default=3000, help="largest parameter count for the dense solve")
    p.add_argument("--quick", action="store_true", help="tiny sweep for tests")
    a = p.parse_args(argv)
    if a.quick:
        a.depths, a.widths, a.repeats, a.dense_max, a.fixed_depth, a.fixed_width, a.batch = "2,3", "4,6", 1, 200, 2, 6, 8
    t0 = time.perf_counter()
    rows = []
    for d in map(int, a.depths.split(",")):
        rows += [{"sweep": "depth", "value": d, **r} for r in measure(d, a.fixed_width, a.batch, a.repeats, a.dense_max, a.damping)]
    for w in map(int, a.widths.split(",")):
        rows += [{"sweep": "width", "value": w, **r} for r in measure(a.fixed_depth, w, a.batch, a.repeats, a.dense_max, a.damping)]
    meta = {"study": "rahimi_scaling", "name": "rahimi_scaling", "batch": a.batch,
            "repeats": a.repeats, "fixed_width": a.fixed_width, "fixed_depth": a.fixed_depth, "damping": a.damping,
            "activation": "tanh", "seconds": round(time.perf_counter() - t0, 2),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads"}
    data = rf.write_study(a.out, rows, meta)
    print(f"wrote {data} ({len(rows)} rows) in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
