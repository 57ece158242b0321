#!/usr/bin/env python
"""Table 1 of Chen et al., measured: time and peak memory per training step of each method.

Chen et al. (EA-CG) Table 1 lists the time and space complexity of KFAC (Fisher + KFI),
KFRA (GN + KFI) and their PCH + EA-CG. This study measures, on the CIFAR-10 net
3072-1024-512-256-128-64-32-16-10 (sigmoid, Xavier), every curvature {fisher, gn, pch1} ×
solver {kfi, eacg} and momentum SGD: the median wall-clock seconds of a training step and
the peak memory it adds. Each method runs in a fresh subprocess so that peaks do not mix:
on CPU the peak is the growth of the process's maximum resident set during the steps over
its resident set before them; on CUDA ``torch.cuda.max_memory_allocated``. Inputs are
random (time and memory do not depend on pixel values).

It also gives the per-update costs from which ``curvlab report`` draws the figures'
quiet-machine time (:mod:`curvlab.report.timing`; the campaign's runs shared the machine, so
their own times include contention). So it measures every method the figure presets train on
this net (eacg_fig1_3, eacg_fig5_7, hbp_fig5): also PCH-2, KFI with Eq. (13) on layer 1
(``+rank1``), and HBP Figure 5's EA-CG with mean Jacobians (Eq. 7a, ``+meanJ``) split into
1, 2, 4 and 16 sub-blocks. Every row has ``step_seconds_base`` (c0) and
``seconds_per_cg_iter`` (c1, 0 without CG): an update costs c0 + c1 · cg_iters. For EA-CG
the line is fitted through the median (CG iterations, seconds) of three settings: the
presets' (ε_CG 0.1, at most 50 iterations), exactly one iteration, and ``--cg-high``
iterations (ε_CG tiny). The batched CG runs until its slowest system stops, so ``cg_iters``
is the largest count of any system. The loss (cross-entropy or Eq. 14) and the dataset
(CIFAR-10 or Imagenette at 32 px, the same net shape) barely change an update's cost, so
they are not measured separately: the study uses cross-entropy and random inputs.

Writes ``study.json`` + tidy ``data.csv`` into ``--out``; ``curvlab report`` renders the
table beside the paper's complexity column.

    python scripts/study_table1.py --out runs/studies/table1_measured
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


from curvlab import runfiles as rf
from curvlab.report.timing import method_key

WIDTHS = [3072, 1024, 512, 256, 128, 64, 32, 16, 10]
# Method name (curvlab.report.timing.method_key) → solver, curvature kind and cost-relevant options.
_SPECS = [{"solver": "sgd"},
          *({"solver": s, "kind": k} for s in ("kfi", "eacg") for k in ("fisher", "gn", "pch1")),  # Table 1
          {"solver": "kfi", "kind": "pch2"}, {"solver": "eacg", "kind": "pch2"},  # eacg_fig1_3, eacg_fig5_7
          *({"solver": "kfi", "kind": k, "rank_one_first_layer": True} for k in ("fisher", "gn", "pch1", "pch2")),
          *({"solver": "eacg", "kind": "pch1", "jacobian_average": "mean", "split": k} for k in (1, 2, 4, 16))]  # HBP
SPECS = {method_key(**s): s for s in _SPECS}
METHODS = list(SPECS)
TABLE1 = METHODS[:7]  # the methods of Chen et al. Table 1 (and of --quick)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _time(solver, x, y, steps: int, sync) -> tuple[list[float], list[float]]:
    """Seconds and CG iterations (NaN without CG) of ``steps`` steps after one warm-up step."""
    times, iters = [], []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        res = solver.step(x, y)
        sync()
        if i:  # the first step is a warm-up
            times.append(time.perf_counter() - t0)
            iters.append(float(res.stats.get("cg_iters", float("nan"))))
    return times, iters


def _median(v: list[float]) -> float:
    return sorted(v)[len(v) // 2]


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line seconds = c0 + c1 · iterations through (iterations, seconds) points.

    A CG iteration cannot cost less than nothing: when timing noise makes the slope negative the
    fit is the constant mean (c1 = 0).
    """
    n = len(points)
    mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    c1 = max(0.0, sum((p[0] - mx) * (p[1] - my) for p in points) / sxx) if sxx else 0.0
    return my - c1 * mx, c1


def one(method: str, widths: list[int], batch: int, steps: int, device: str, cg_high: int = 50) -> dict:
    """Time ``steps`` training steps of ``method`` after one warm-up step (runs in a subprocess)."""
    import torch

    from curvlab.losses import make_loss
    from curvlab.nets import MLP
    from curvlab.solvers import make_solver

    torch.manual_seed(0)
    net = MLP(widths, activation="sigmoid", init="xavier").to(device)
    loss = make_loss("cross_entropy")
    x = torch.randn(batch, widths[0], device=device)
    y = torch.randint(0, widths[-1], (batch,), device=device)
    spec = dict(SPECS[method])
    name, kind = spec.pop("solver"), spec.pop("kind", None)
    if name == "sgd":
        solver = make_solver("sgd", net, loss, lr=0.1, momentum=0.9)
    else:
        curv = {"kind": kind, **({"jacobian_average": spec["jacobian_average"]} if "jacobian_average" in spec else {})}
        opts = {"max_cg": 50, "eps_cg": 0.1, "split": spec.get("split", 1)} if name == "eacg" else \
            {"rank_one_first_layer": spec.get("rank_one_first_layer", False)}
        solver = make_solver(name, net, loss, lr=0.1, curvature=curv, alpha=0.02, **opts)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rss0 = _rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times, iters = _time(solver, x, y, steps, sync)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    row = {"method": method, "batch": batch, "steps": steps, "step_seconds": _median(times),
           "step_seconds_min": min(times), "peak_mib": round(peak, 1),
           "memory": "cuda allocated" if cuda else "cpu rss",
           "cg_iters": _median(iters) if name == "eacg" else None,
           "step_seconds_base": _median(times), "seconds_per_cg_iter": 0.0}
    if name == "eacg":  # c0 + c1 · iterations through the presets' setting, 1 iteration and cg_high iterations
        points = [(_median(iters), _median(times))]
        for cap, key in ((1, "cg_low"), (cg_high, "cg_high")):
            solver.max_cg, solver.eps_cg = cap, 1e-12
            t, it = _time(solver, x, y, steps, sync)
            points.append((_median(it), _median(t)))
            row[f"{key}_iters"], row[f"{key}_seconds"] = points[-1]
        row["step_seconds_base"], row["seconds_per_cg_iter"] = _fit(points)
    return row


def _machine(device: str) -> str:
    """``Intel(R) Xeon(R) ... (x86_64, 2 cores)`` or the CUDA device's name."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({platform.machine()}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/studies/table1_measured")
    p.add_argument("--batch", type=int, default=500, help="EA-CG/HBP batch size |B| = 500")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda (peak memory: RSS growth or CUDA allocated)")
    p.add_argument("--quick", action="store_true", help="a small net and the Table 1 methods only, for tests")
    p.add_argument("--cg-high", type=int, default=50,
                   help="EA-CG: the larger fixed CG iteration count of the cost fit (default 50, the presets' max_cg)")
    p.add_argument("--only", action="append", default=None, choices=METHODS, metavar="METHOD",
                   help=f"measure only this method (repeatable); default all: {', '.join(METHODS)}")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per measured step (default torch's; the CPU campaign's workers use 1)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one method
    p.add_argument("--widths", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    widths = [int(w) for w in a.widths.split(",")] if a.widths else ([256, 64, 32, 10] if a.quick else WIDTHS)
    if a.quick:
        a.batch, a.steps = min(a.batch, 32), 1
    if a.threads is not None and a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    if a.threads is not None:
        import torch

        torch.set_num_threads(a.threads)
    if a.one:
        print(json.dumps(one(a.one, widths, a.batch, a.steps, a.device, a.cg_high)))
        return 0
    from curvlab.report.paper import TABLE1_COMPLEXITY

    t0, rows = time.perf_counter(), []
    for method in a.only or (TABLE1 if a.quick else METHODS):
        cmd = [sys.executable, __file__, "--one", method, "--widths", ",".join(map(str, widths)),
               "--batch", str(a.batch), "--steps", str(a.steps), "--device", a.device, "--cg-high", str(a.cg_high),
               *(["--threads", str(a.threads)] if a.threads is not None else [])]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            rows.append({"method": method, "error": res.stderr.strip().splitlines()[-1][:200]})
            continue
        row = json.loads(res.stdout.strip().splitlines()[-1])
        paper = TABLE1_COMPLEXITY.get(method, {})
        row["paper"] = paper.get("method", "-")
        row["paper time (solve)"] = paper.get("solve_time", "-")
        row["paper space"] = paper.get("space", "-")
        rows.append(row)
        cg = f" = {row['step_seconds_base']:.3f} + {row['seconds_per_cg_iter']:.4f} × CG iterations" \
            if "cg_high_iters" in row else ""
        print(f"{method}: {row['step_seconds']:.3f} s/step{cg}, +{row['peak_mib']} MiB", flush=True)
    import torch

    meta = {"study": "table1_measured", "name": "table1_measured", "widths": widths,
            "batch": a.batch, "steps": a.steps, "device": a.device, "seconds": round(time.perf_counter() - t0, 1),
            "machine": _machine(a.device), "threads": torch.get_num_threads(), "cg_high": a.cg_high,
            "loss": "cross_entropy", "note": "per-update costs for the figures' quiet-machine time: "
            "step_seconds_base + seconds_per_cg_iter * cg_iters (loss and dataset barely change them)"}
    data = rf.write_study(a.out, rows, meta)
    print(f"wrote {data} in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
