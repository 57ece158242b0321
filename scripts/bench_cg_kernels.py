#!/usr/bin/env python
"""ATen operator calls and time per iteration of EA-CG's batched CG (issue 24, item 1).

Nets (PCH-1 blocks of one random batch, rank-one factor, Eq. 11b, the EA-CG default):

- ``mnist-relu``: 784-128-128-10, ReLU, batch 128 (the HBP / Bakker size);
- ``cifar10``: 3072-1024-512-256-128-64-32-16-10, sigmoid, batch 500 (Chen et al.).

**How the calls are counted.** ``torch.profiler`` (CPU activity) records one solve of the
reduced systems (:func:`curvlab.solvers.eacg._rank_one_groups` and ``batched_cg``) with
``max_cg = 50`` and ``eps_cg = 0`` (every system runs all 50 iterations) and one with
``max_cg = 1``; the difference, divided by 49, is the count per iteration (set-up and
read-out cancel). *Top-level* calls are the ``aten::`` events with no ``aten::`` event among
their ancestors: what Python dispatches, one kernel launch each on a GPU at most (a
composite op such as ``bmm`` on CPU may call further ``aten::`` ops inside, counted under
*all*). The counts are deterministic. **Time per iteration**: the same difference of the two
solves' times, 1 thread, process CPU time (``--clock wall`` for wall-clock), the median of
``--reps`` repetitions; with ``--baseline REV`` (default ``a09d8ea``, the last commit before
the masked iteration of issue 24) the solver of that git revision (``curvlab/solvers/cg.py`` and ``eacg.py``) runs interleaved with the working tree's
in one process, so that both see the same machine load.

    python scripts/bench_cg_kernels.py                   # both nets, against a09d8ea
    python scripts/bench_cg_kernels.py --baseline none --reps 5
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import curvlab  # noqa: E402
from curvlab.losses import make_loss  # noqa: E402
from curvlab.solvers import cg, eacg  # noqa: E402
from curvlab.solvers.blockwise import as_curvature_options, compute_blocks  # noqa: E402

NETS = {
    "mnist-relu": ([784, 128, 128, 10], "relu", 128),
    "cifar10": ([3072, 1024, 512, 256, 128, 64, 32, 16, 10], "sigmoid", 500),
}
ALPHA, LONG, SHORT = 0.02, 50, 1
TARGET = 8  # top-level aten calls per iteration, issue 24
BASELINE = "a09d8ea"  # the last commit with the former iteration (segment_reduce, a host sync per iteration)
Solver = tuple[ModuleType, ModuleType]  # (eacg module, cg module)


def blocks_for(widths: list[int], activation: str, batch: int) -> list[Any]:
    """PCH-1 blocks of one random batch (uniform inputs, random labels)."""
    torch.manual_seed(0)
    net = curvlab.MLP(widths, activation=activation, init="xavier")
    x, y = torch.rand(batch, widths[0]), torch.randint(0, widths[-1], (batch,))
    _, blocks, _ = compute_blocks(net, x, y, make_loss("cross_entropy"), as_curvature_options({"kind": "pch1"}), set())
    return blocks


def solve(solver: Solver, blocks: list[Any], iters: int) -> list[Any]:
    eacg_mod, cg_mod = solver
    groups = eacg_mod._rank_one_groups(blocks, ALPHA, 1, True, False)
    return cg_mod.batched_cg([g.matvec for g in groups], [g.rhs for g in groups], iters, 0.0)


def _is_top(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def op_counts(solver: Solver, blocks: list[Any], iters: int) -> tuple[int, int, dict[str, int]]:
    """(top-level aten calls, all aten calls, top-level calls by name) of one solve."""
    solve(solver, blocks, iters)  # warm-up: first-call work stays out of the count
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        solve(solver, blocks, iters)
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in events if _is_top(e)]
    names: dict[str, int] = {}
    for e in top:
        names[e.name] = names.get(e.name, 0) + 1
    return len(top), len(events), names


def per_iteration(solver: Solver, blocks: list[Any]) -> tuple[float, float, dict[str, float]]:
    top_l, all_l, names_l = op_counts(solver, blocks, LONG)
    top_s, all_s, names_s = op_counts(solver, blocks, SHORT)
    n = LONG - SHORT
    by_name = {k: (v - names_s.get(k, 0)) / n for k, v in names_l.items() if v != names_s.get(k, 0)}
    return (top_l - top_s) / n, (all_l - all_s) / n, by_name


def load_baseline(rev: str) -> Solver:
    """cg.py and eacg.py of git revision ``rev`` as stand-alone modules (not registered as a solver)."""
    tmp = Path(tempfile.mkdtemp(prefix="cg_baseline_"))
    mods = []
    for name in ("cg", "eacg"):
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:curvlab/solvers/{name}.py"],
                             check=True, capture_output=True, text=True).stdout
        src = src.replace("from curvlab.solvers.cg import", "from _baseline_cg import")
        src = src.replace('@register("eacg")', "")  # keep the working tree's solver registered
        path = tmp / f"_baseline_{name}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"_baseline_{name}", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        mods.append(mod)
    return mods[1], mods[0]


def times(solvers: dict[str, Solver], blocks: list[Any], reps: int, clock: str) -> dict[str, float]:
    """Median time per iteration (ms), the solvers interleaved within every repetition."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    got: dict[str, list[float]] = {k: [] for k in solvers}
    for _ in range(reps):
        for label, solver in solvers.items():
            t = []
            for iters in (LONG, SHORT):
                t0 = now()
                solve(solver, blocks, iters)
                t.append(now() - t0)
            got[label].append((t[0] - t[1]) / (LONG - SHORT) * 1e3)
    return {k: statistics.median(v) for k, v in got.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--baseline", default=BASELINE, help="git revision to compare with, or 'none'")
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    solvers: dict[str, Solver] = {"new": (eacg, cg)}
    if args.baseline != "none":
        try:
            solvers = {f"base {args.baseline}": load_baseline(args.baseline), **solvers}
        except (OSError, subprocess.CalledProcessError) as err:  # no git, or no such revision
            print(f"no baseline {args.baseline!r} ({type(err).__name__}); the working tree only")
    for net in args.nets:
        blocks = blocks_for(*NETS[net])
        print(f"{net}: {'-'.join(map(str, NETS[net][0]))}, batch {NETS[net][2]}, PCH-1 rank-one, float32")
        ms = times(solvers, blocks, args.reps, args.clock)
        for label, solver in solvers.items():
            top, every, names = per_iteration(solver, blocks)
            detail = ", ".join(f"{k[6:]} {v:g}" for k, v in sorted(names.items(), key=lambda kv: -kv[1]))
            met = "meets" if top <= TARGET else "misses"
            print(f"  {label:>10}: {top:5.2f} top-level aten calls / iteration ({met} ≤ {TARGET}; {every:.2f} all), "
                  f"{ms[label]:.4f} ms / iteration ({args.clock} clock, median of {args.reps})")
            print(f"  {'':>10}  {detail}")


if __name__ == "__main__":
    main()
