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

Writes ``study.json`` + tidy ``data.csv`` into ``--out``; ``curvlab report`` renders the
table beside the paper's complexity column.

    python scripts/study_table1.py --out runs/studies/table1_measured
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


from curvlab import runfiles as rf

WIDTHS = [3072, 1024, 512, 256, 128, 64, 32, 16, 10]
METHODS = ["sgd", "fisher/kfi", "gn/kfi", "pch1/kfi", "fisher/eacg", "gn/eacg", "pch1/eacg"]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one(method: str, widths: list[int], batch: int, steps: int, device: str) -> dict:
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
    if method == "sgd":
        solver = make_solver("sgd", net, loss, lr=0.1, momentum=0.9)
    else:
        kind, name = method.split("/")
        solver = make_solver(name, net, loss, lr=0.1, curvature={"kind": kind}, alpha=0.02,
                             **({"max_cg": 50, "eps_cg": 0.1} if name == "eacg" else {}))
    cuda = device.startswith("cuda")
    rss0 = _rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times, stats = [], {}
    for i in range(steps + 1):
        t0 = time.perf_counter()
        res = solver.step(x, y)
        if cuda:
            torch.cuda.synchronize()
        if i:  # the first step is a warm-up
            times.append(time.perf_counter() - t0)
            stats = res.stats
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    times.sort()
    return {"method": method, "batch": batch, "steps": steps, "step_seconds": times[len(times) // 2],
            "step_seconds_min": times[0], "peak_mib": round(peak, 1), "memory": "cuda allocated" if cuda else "cpu rss",
            "cg_iters": stats.get("cg_iters", stats.get("cg_iterations"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/studies/table1_measured")
    p.add_argument("--batch", type=int, default=500, help="EA-CG/HBP batch size |B| = 500")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda (peak memory: RSS growth or CUDA allocated)")
    p.add_argument("--quick", action="store_true", help="a small net for tests")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one method
    p.add_argument("--widths", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    widths = [int(w) for w in a.widths.split(",")] if a.widths else ([256, 64, 32, 10] if a.quick else WIDTHS)
    if a.quick:
        a.batch, a.steps = min(a.batch, 32), 1
    if a.one:
        print(json.dumps(one(a.one, widths, a.batch, a.steps, a.device)))
        return 0
    from curvlab.report.paper import TABLE1_COMPLEXITY

    t0, rows = time.perf_counter(), []
    for method in METHODS:
        cmd = [sys.executable, __file__, "--one", method, "--widths", ",".join(map(str, widths)),
               "--batch", str(a.batch), "--steps", str(a.steps), "--device", a.device]
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
        print(f"{method}: {row['step_seconds']:.3f} s/step, +{row['peak_mib']} MiB", flush=True)
    meta = {"study": "table1_measured", "name": "table1_measured", "widths": widths,
            "batch": a.batch, "steps": a.steps, "device": a.device, "seconds": round(time.perf_counter() - t0, 1),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"}
    data = rf.write_study(a.out, rows, meta)
    print(f"wrote {data} in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
