#!/usr/bin/env python
"""ATen operator calls and time per iteration of EA-CG's batched CG (issue 24, item 1).

Nets (PCH-1 blocks of one random batch, rank-one factor, Eq. 11b, the EA-CG default):

- ``mnist-relu``: 784-128-128-10, ReLU, batch 128 (the HBP / Bakker size);
- ``cifar10``: 3072-1024-512-256-128-64-32-16-10, sigmoid, batch 500 (Chen et al.).

**How the calls are counted.** ``torch.profiler`` (CPU activity) records one solve of the
reduced systems (:func:`curvlab.solvers.eacg_reduced.rank_one_groups` and ``batched_cg``) with
``max_cg = 50`` and ``eps_cg = 0`` (every system runs all 50 iterations) and one with
``max_cg = 1``; the difference, divided by 49, is the count per iteration (set-up and
read-out cancel). *Top-level* calls are the ``aten::`` events with no ``aten::`` event among
their ancestors: what Python dispatches, one kernel launch each on a GPU at most (a
composite op such as ``bmm`` on CPU may call further ``aten::`` ops inside, counted under
*all*). The counts are deterministic. **Time per iteration**: the same difference of the two
solves' times, 1 thread, process CPU time (``--clock wall`` for wall-clock), the median of
``--reps`` repetitions; with ``--baseline REV`` (default ``a09d8ea``, the last commit before
the masked iteration of issue 24) the solver of that git revision (``curvlab/solvers/cg.py``
and ``eacg_reduced.py`` with ``eacg_groups.py``, or ``eacg.py`` before they were split out of it)
runs interleaved with the working tree's in one process, so that both see the same machine load.
The time per iteration includes what grows with ``max_cg`` outside the loop.
On the CPU the host checks of which systems still run read the history through numpy (no
ATen call); ``--cuda-config`` counts what a CUDA run does (the scale folded into the blocks, inner
products by ``bmm``, the checks by torch ops), whose top-level calls in an iteration are one
kernel launch each on a GPU.

**Step ratios** (``--steps N``, on ``mnist-relu``): one process, process CPU time, 1 thread;
every round times one step of each method on its own copy of the net (the same batch), and
the ratio to the SGD step of the same round is kept; the median over ``N`` rounds is printed
(the issue's targets: EA-CG 50 iterations ≤ 2.5×, 5 iterations ≤ 1.6×, KFI ≤ 2.5×; 40 rounds
unless told). EA-CG runs with ε_CG = 0, so every system takes all of its iterations. ``--parts`` also splits the
EA-CG steps of 5 and of 50 iterations into curvature pass, EA-CG set-up, CG, read-out and apply (medians,
÷ SGD), and prints the CG iteration's time within the step, (CG of 50 − CG of 5) / 45.

    python scripts/bench_cg_kernels.py                   # both nets, against a09d8ea
    python scripts/bench_cg_kernels.py --baseline none --reps 5
    python scripts/bench_cg_kernels.py --nets mnist-relu --baseline none --steps 200 --parts
    python scripts/bench_cg_kernels.py --cuda-config     # the counts of CUDA's configuration
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
from curvlab.solvers import cg, eacg, eacg_reduced  # noqa: E402
from curvlab.solvers.blockwise import as_curvature_options, compute_blocks  # noqa: E402

NETS = {
    "mnist-relu": ([784, 128, 128, 10], "relu", 128),
    "cifar10": ([3072, 1024, 512, 256, 128, 64, 32, 16, 10], "sigmoid", 500),
}
ALPHA, LONG, SHORT = 0.02, 50, 1
TARGET = 8  # top-level aten calls per iteration, issue 24
BASELINE = "a09d8ea"  # the last commit with the former iteration (segment_reduce, a host sync per iteration)
Solver = tuple[ModuleType, ModuleType]  # (EA-CG's reduced-systems module, cg module)


def blocks_for(widths: list[int], activation: str, batch: int) -> list[Any]:
    """PCH-1 blocks of one random batch (uniform inputs, random labels)."""
    torch.manual_seed(0)
    net = curvlab.MLP(widths, activation=activation, init="xavier")
    x, y = torch.rand(batch, widths[0]), torch.randint(0, widths[-1], (batch,))
    _, blocks, _ = compute_blocks(net, x, y, make_loss("cross_entropy"), as_curvature_options({"kind": "pch1"}), set())
    return blocks


def solve(solver: Solver, blocks: list[Any], iters: int) -> list[Any]:
    eacg_mod, cg_mod = solver
    groups = eacg_mod.rank_one_groups(blocks, ALPHA, 1, True, False)
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
    """cg.py and EA-CG's reduced systems of git revision ``rev`` as stand-alone modules (not registered as a
    solver): ``eacg_groups.py`` and ``eacg_reduced.py``, or ``eacg.py`` before they were split out of it."""
    tmp = Path(tempfile.mkdtemp(prefix="cg_baseline_"))
    split = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}:curvlab/solvers/eacg_reduced.py"],
                           capture_output=True).returncode == 0
    names = ("cg", "eacg_groups", "eacg_reduced") if split else ("cg", "eacg")
    mods = []
    for name in names:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:curvlab/solvers/{name}.py"],
                             check=True, capture_output=True, text=True).stdout
        for dep in names:  # the revision's own modules, not the working tree's
            src = src.replace(f"from curvlab.solvers.{dep} import", f"from _baseline_{dep} import")
        src = src.replace('@register("eacg")', "")  # keep the working tree's solver registered
        path = tmp / f"_baseline_{name}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"_baseline_{name}", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        mods.append(mod)
    if not split:  # eacg.py named it privately
        mods[-1].rank_one_groups = mods[-1]._rank_one_groups
    return mods[-1], mods[0]


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


STEP_TARGETS = {"eacg-cg50": 2.5, "eacg-cg5": 1.6, "kfi": 2.5}  # × an SGD step, issue 24


def step_ratios(rounds: int) -> dict[str, float]:
    """Median (method step ÷ SGD step) on ``mnist-relu``, interleaved in one process (CPU time)."""
    from curvlab.solvers import make_solver

    widths, activation, batch = NETS["mnist-relu"]
    torch.manual_seed(0)
    x, y = torch.rand(batch, widths[0]), torch.randint(0, widths[-1], (batch,))
    loss = make_loss("cross_entropy")
    specs = {"sgd": ("sgd", {}), "eacg-cg50": ("eacg", {"max_cg": 50, "eps_cg": 0.0}),
             "eacg-cg5": ("eacg", {"max_cg": 5, "eps_cg": 0.0}), "kfi": ("kfi", {})}
    solvers = {}
    for label, (name, opts) in specs.items():
        torch.manual_seed(0)
        net = curvlab.MLP(widths, activation=activation, init="xavier")
        solvers[label] = make_solver(name, net, loss, lr=1e-4, **opts)  # tiny lr: the nets barely move
        solvers[label].step(x, y)  # warm-up
    got: dict[str, list[float]] = {k: [] for k in specs if k != "sgd"}
    for _ in range(rounds):
        t = {}
        for label, solver in solvers.items():
            t0 = time.process_time()
            solver.step(x, y)
            t[label] = time.process_time() - t0
        for label in got:
            got[label].append(t[label] / t["sgd"])
    return {k: statistics.median(v) for k, v in got.items()}


def step_parts(rounds: int, iters: int) -> dict[str, float]:
    """EA-CG step (``iters`` iterations) split into its parts, medians ÷ the median SGD step."""
    from curvlab.solvers import make_solver

    widths, activation, batch = NETS["mnist-relu"]
    torch.manual_seed(0)
    x, y = torch.rand(batch, widths[0]), torch.randint(0, widths[-1], (batch,))
    loss = make_loss("cross_entropy")
    net = curvlab.MLP(widths, activation=activation, init="xavier")
    sgd = make_solver("sgd", curvlab.MLP(widths, activation=activation, init="xavier"), loss, lr=1e-4)
    opts = as_curvature_options({"kind": "pch1"})
    parts: dict[str, list[float]] = {k: [] for k in ("sgd", "curvature", "setup", "cg", "read-out", "apply")}
    cache: dict[tuple[object, ...], Any] = {}  # kept across steps, as the solver keeps it
    for _ in range(rounds + 1):
        t0 = time.process_time()
        sgd.step(x, y)
        t1 = time.process_time()
        _, blocks, _ = compute_blocks(net, x, y, loss, opts, set())
        t2 = time.process_time()
        with torch.no_grad():
            groups = eacg_reduced.rank_one_groups(blocks, ALPHA, 1, True, True, cache=cache)
            t3 = time.process_time()
            res = cg.batched_cg([g.matvec for g in groups], [g.rhs for g in groups], iters, 0.0)
            t4 = time.process_time()
            d = [pair for group, r in zip(groups, res) for unpack in group.unpack for pair in unpack(r.x)]
            eacg._stats(res)
        t5 = time.process_time()
        sgd.apply([t for _, t in sorted(d, key=lambda pair: pair[0])], 0.0)  # θ + 0 · d: the apply's cost
        t6 = time.process_time()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            parts[k].append(v)
    med = {k: statistics.median(v[1:]) for k, v in parts.items()}
    return {k: v / med["sgd"] for k, v in med.items()} | {"sgd ms": med["sgd"] * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--baseline", default=BASELINE, help="git revision to compare with, or 'none'")
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--steps", type=int, default=40, help="rounds of the step-ratio timing (0: none)")
    ap.add_argument("--parts", action="store_true", help="split the EA-CG step into its parts")
    ap.add_argument("--no-kernels", action="store_true", help="skip the per-iteration counts and times")
    ap.add_argument("--cuda-config", action="store_true",
                    help="count CUDA's configuration on the CPU: scale folded into the blocks, inner products by bmm")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.steps:
        ratios = step_ratios(args.steps)
        print(f"mnist-relu step ÷ SGD step (median of {args.steps} interleaved rounds, CPU time, 1 thread):")
        for k, v in ratios.items():
            print(f"  {k:>10}: {v:5.2f}×  ({'meets' if v <= STEP_TARGETS[k] else 'misses'} ≤ {STEP_TARGETS[k]})")
    if args.parts:
        cg_ms = {}
        for iters in (5, LONG):
            parts = step_parts(max(args.steps, 50), iters)
            sgd_ms = parts.pop("sgd ms")
            cg_ms[iters] = parts["cg"] * sgd_ms
            print(f"  EA-CG {iters} iterations by part, ÷ SGD step ({sgd_ms:.3f} ms): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in parts.items() if k != "sgd"))
        print(f"  CG iteration within the step: {(cg_ms[LONG] - cg_ms[5]) / (LONG - 5) * 1e3:.1f} µs")
    if args.no_kernels:
        return
    solvers: dict[str, Solver] = {"new": (eacg_reduced, cg)}
    if args.baseline != "none":
        try:
            solvers = {f"base {args.baseline}": load_baseline(args.baseline), **solvers}
        except (OSError, subprocess.CalledProcessError) as err:  # no git, or no such revision
            print(f"no baseline {args.baseline!r} ({type(err).__name__}); the working tree only")
    if args.cuda_config:  # what a CUDA run does by default (one kernel per matvec and per inner product)
        for eacg_mod, cg_mod in solvers.values():
            eacg_mod._FOLD_SCALE, cg_mod._DOT_BY_BMM, cg_mod._HOST_READ = True, True, False
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
