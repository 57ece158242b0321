#!/usr/bin/env python
"""Seconds of one Hessian-error logging call on the conv presets (issue 19).

For each preset (``mnist_2c2d`` on 1×28×28, ``cifar10_3c3d`` on 3×32×32, float32, random inputs and
labels, the preset's initialisation) at a logging batch of ``--batch`` (128): one
:meth:`curvlab.hessian_log.HessianLogger.rows` call with the default kinds (fisher, gn, pch1, pch2)
and its parts: the exact reference (``hessian_reference.step_reference``; on these ReLU nets one
Gauss-Newton pass) and each kind's pass; beside them, a gradient step (forward + backward) and, with
``--hvp``, the autograd route the reference replaces (the bias blocks the default budget of
``log.hessian_hvp_budget`` = 512 products would take, ``hessian_reference.select_layers``).
Process CPU time and wall time of one call after one warm-up, ``torch`` threads as given (``--threads``).

    OMP_NUM_THREADS=1 python scripts/time_hessian_log.py [--batch 128] [--threads 1] [--hvp]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
from hydra import compose, initialize_config_dir

from curvlab.cli import CONFIG_DIR
from curvlab.config import parse_config
from curvlab.curvature.options import CurvatureOptions, Kind
from curvlab.hessian_log import HessianLogger
from curvlab.hessian_reference import HVP_BUDGET, autograd_bias_blocks, select_layers, step_reference
from curvlab.losses import make_loss
from curvlab.modules import chain

PRESETS = {"mnist_2c2d": ("mnist", (1, 28, 28)), "cifar10_3c3d": ("cifar10", (3, 32, 32))}


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) of one call of ``fn``."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hvp", action="store_true", help="also time the autograd bias blocks within the budget")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ce = make_loss("cross_entropy")
    for name, (dataset, shape) in PRESETS.items():
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = parse_config(compose("config", overrides=[f"net={name}", f"dataset={dataset}"]))
        torch.manual_seed(0)
        net = cfg.net.build(shape)
        x, y = torch.randn(args.batch, *shape), torch.randint(0, 10, (args.batch,))
        log = HessianLogger([Kind.FISHER, Kind.GN, Kind.PCH1, Kind.PCH2], CurvatureOptions(), ce, every=1, first=0)
        log.rows(net, x, y, step=0)  # warm-up
        parts = {"gradient step": lambda: ce(net(x), y).backward(),
                 "logging call": lambda: log.rows(net, x, y, step=0),
                 "  reference": lambda: step_reference(net, chain(net), x, y, ce, CurvatureOptions())}
        for kind in log.kinds:
            parts[f"  {kind.value}"] = lambda k=kind: log._curvature(net, x, y, CurvatureOptions(kind=k), False)
        if args.hvp:  # what route 3 would cost here (these nets take route 1)
            layers = chain(net).layers
            widths = [m.weight.shape[0] for m in layers]
            chosen = select_layers(widths, [isinstance(m, torch.nn.Conv2d) for m in layers], HVP_BUDGET)
            parts[f"autograd route ({sum(widths[t] for t in chosen)} HVPs)"] = lambda: autograd_bias_blocks(
                net, [layers[t] for t in chosen], x, y, ce, chunk=16)  # 16 rows per batched product: memory
        rows = log.rows(net, x, y, step=0)
        print(f"{name}, batch {args.batch}, {args.threads} thread(s): {len(rows)} rows, layers "
              f"{sorted({r['layer'] for r in rows})}; notes: {log.notes}")
        for label, fn in parts.items():
            cpu, wall = timed(fn)
            print(f"  {label:<28} {cpu:8.2f} s CPU {wall:8.2f} s wall")


if __name__ == "__main__":
    main()
