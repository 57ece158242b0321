#!/usr/bin/env python
"""Bakker et al. Section 4: is the CR step size insensitive to σ, and does it remove learning-rate tuning?

The paper (Section 4, Discussion): "For CR, it is necessary to specify σ, but optimization
performance is relatively insensitive to this – order of magnitude estimates seem to be
sufficient", and (Section 5) "CR also required less problem-specific knowledge (such as an
optimal initial learning rate) to perform well". This study trains, in the plateau setting of
Figure 2 (``configs/experiment/lowrank_fig2.yaml``: MNIST, 12 hidden ReLU layers of 128 without
biases, U(±0.1) plateau init, batch 32, lr decay 0.95 per 100 updates):

- CR on plain SGD (``solver=cr``, Eq. 9) over σ spanning several decades, and
- plain SGD (``solver=sgd_plain``) over its base learning rate spanning several decades,

each for ``--steps`` updates through the runner (:func:`curvlab.train.train`, in-process, configs
composed as ``scripts/reproduce.py`` composes them). CR on SGD *replaces* the learning rate by α
(Eqs. 42–43), so its base lr has no effect by construction; the one knob CR leaves is σ.

Rows (``data.csv``): method, σ or lr, seed, status, final train loss, steps to leave the plateau
(the first evaluated step whose train loss is below 90 % of the initial one; empty: never), mean
and median α/lr, mean α. Writes ``study.json`` + ``data.csv`` into ``--out``.

    python scripts/study_cr_sigma.py --out results/runs/studies/cr_sigma
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the config composition of reproduce.py

from reproduce import ROOT, Job, data_overrides, dataset_of, expand, run_job, seed_of  # noqa: E402

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from curvlab import runfiles as rf  # noqa: E402

EXPERIMENT = "lowrank_fig2"
EXIT_FRACTION = 0.9  # "left the plateau": train loss below 90 % of its initial value


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def plateau_exit(metrics: list[dict[str, str]], fraction: float = EXIT_FRACTION) -> int | None:
    """The first evaluated step whose ``train_loss`` is below ``fraction`` × the step-0 value, or None."""
    evals = [(int(r["step"]), float(r["train_loss"])) for r in metrics if r.get("train_loss")]
    if not evals:
        return None
    first = evals[0][1]
    return next((s for s, v in evals if s > 0 and v < fraction * first), None)


def summarise(run_dir: Path, status: str) -> dict[str, Any]:
    """One study row from a run directory's ``metrics.csv`` (written also when the run failed)."""
    path = run_dir / rf.METRICS
    metrics = list(csv.DictReader(path.open())) if path.is_file() else []
    steps = [r for r in metrics if int(r["step"]) > 0 and r.get("step_size")]
    ratios = [float(r["step_size"]) / float(r["lr"]) for r in steps if float(r["lr"]) > 0]
    evals = [float(r["train_loss"]) for r in metrics if r.get("train_loss")]
    final = evals[-1] if evals and status.startswith("completed") else float("nan")
    return {
        "status": status.split(" ")[0].rstrip(":"), "steps_run": int(steps[-1]["step"]) if steps else 0,
        "initial_train_loss": evals[0] if evals else float("nan"), "final_train_loss": final,
        "min_train_loss": min(evals) if evals else float("nan"),
        "exit_step": plateau_exit(metrics),
        "mean_alpha_over_lr": statistics.fmean(ratios) if ratios else float("nan"),
        "median_alpha_over_lr": statistics.median(ratios) if ratios else float("nan"),
        "mean_alpha": statistics.fmean(float(r["step_size"]) for r in steps) if steps else float("nan"),
        "failure": status if status.startswith("failed") else "",
    }


def jobs_for(base: list[str], seeds: int, sigmas: list[float], lrs: list[float]) -> list[tuple[str, float, Job]]:
    """(method, swept value, job): CR over σ, plain SGD over lr, each for ``seeds`` seeds."""
    out = []
    cr = expand(EXPERIMENT, base, seeds, {"solver": "cr", "solver.sigma": ",".join(map(repr, sigmas))})
    out += [("cr", float(dict(o.split("=", 1) for o in j.overrides)["solver.sigma"]), j) for j in cr]
    sgd = expand(EXPERIMENT, base, seeds, {"solver": "sgd_plain", "solver.lr": ",".join(map(repr, lrs))})
    out += [("sgd", float(dict(o.split("=", 1) for o in j.overrides)["solver.lr"]), j) for j in sgd]
    return out


def run_order(item: tuple[str, float, Job]) -> tuple[int, int, float]:
    """Seed-major; the first seed runs CR first, later seeds the cheap SGD runs first (an interrupted
    study then has one full seed and as much of the second as fitted)."""
    method, value, job = item
    seed = seed_of(job)
    return seed, (method == "cr") == (seed > 0), value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/studies/cr_sigma")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"),
                   help="folder with MNIST/raw or mnist.npz (default ../shared/data); 'none' keeps the preset's")
    p.add_argument("--sigmas", default="0.01,0.1,1,10,100,1000,10000", help="σ of CR (solver.sigma)")
    p.add_argument("--lrs", default="0.001,0.01,0.02,0.1,0.3,1,3,10,30,100", help="base lr of plain SGD")
    p.add_argument("--steps", type=int, default=2000, help="updates per run")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=25, help="evaluate the train loss every N updates")
    p.add_argument("--eval-subset", type=int, default=1000,
                   help="test-set size; train_loss is measured on a fixed training subset of the same size")
    p.add_argument("--train-subset", type=int, default=None, help="first N training samples (default: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra Hydra override")
    p.add_argument("--runs-dir", default=None, help="keep the run directories here (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="3 σ, 3 lr, 1 seed, 150 updates on 5,000 images")
    a = p.parse_args(argv)
    quick = {"sigmas": "1,100,10000", "lrs": "0.01,0.1,1", "steps": 150, "seeds": 1, "eval_every": 10,
             "train_subset": 5000}
    for key, value in (quick.items() if a.quick else ()):  # --quick sizes what was not given explicitly
        if getattr(a, key) == p.get_default(key):
            setattr(a, key, value)
    root = None if a.data_root == "none" else Path(a.data_root).resolve()
    sized = [f"train.max_steps={a.steps}", "train.epochs=100000", f"train.eval_every={a.eval_every}",
             f"dataset.test_subset={a.eval_subset}", "log.progress=false", "device=cpu",
             *([f"dataset.train_subset={a.train_subset}"] if a.train_subset else [])]
    base = [*data_overrides(dataset_of(EXPERIMENT, a.set), root), *sized, *a.set]
    jobs = jobs_for(base, a.seeds, floats(a.sigmas), floats(a.lrs))
    cfg = OmegaConf.create(jobs[0][2].cfg)  # the job list holds plain resolved dicts
    meta: dict[str, Any] = {
        "study": "cr_sigma", "name": "cr_sigma", "paper": "Bakker et al. 2018, Sections 3.2, 4 and 5; Eq. 9",
        "experiment": EXPERIMENT, "steps": a.steps, "seeds": a.seeds, "sigmas": floats(a.sigmas), "lrs": floats(a.lrs),
        "cr_base_lr": float(cfg.solver.lr), "batch_size": int(cfg.train.batch_size),
        "init_scale": float(cfg.net.init_scale), "dataset": str(cfg.dataset.name),
        "schedule": f"{cfg.train.schedule}, {cfg.train.decay_rate} per {cfg.train.decay_every} updates",
        "train_subset": a.train_subset, "eval_every": a.eval_every, "eval_subset": a.eval_subset,
        "exit_fraction": EXIT_FRACTION, "overrides": a.set,
        "note": ("train loss on a fixed random training subset of eval_subset images, every eval_every updates; "
                 "exit_step: first evaluated step with train loss < exit_fraction x initial (empty: never); "
                 "CR on SGD replaces lr by alpha (Eqs. 42-43), so its base lr has no effect"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cr_sigma_") as tmp:
        runs = Path(a.runs_dir or tmp)
        for method, value, job in sorted(jobs, key=run_order):
            run_dir = runs / job.name
            t1 = time.process_time()
            status = run_job(job, run_dir, force=True)
            row = {"method": method, "sigma": value if method == "cr" else None, "lr": job.cfg["solver"]["lr"],
                   "value": value, "seed": seed_of(job), **summarise(run_dir, status),
                   "cpu_seconds": round(time.process_time() - t1, 2)}
            rows.append(row)
            # Rewritten after every run: an interrupted study leaves its finished rows (complete: false).
            rf.write_study(a.out, rows, {**meta, "complete": len(rows) == len(jobs), "runs_done": len(rows),
                                         "runs_planned": len(jobs), "seconds": round(time.perf_counter() - t0, 2)})
            print(json.dumps({k: row[k] for k in ("method", "value", "seed", "status", "final_train_loss", "exit_step",
                                                  "mean_alpha_over_lr", "cpu_seconds")}), flush=True)
    print(f"wrote {Path(a.out) / rf.STUDY_DATA} ({len(rows)} rows) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
