"""Fabricated run directories that follow docs/run_files.md, for the report tests.

The report reads only files, so tests write files with known random content and compare
the report's aggregates with numpy computed here from the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def write_run(root: Path, name: str, *, experiment: str, curvature: str | None, solver: str, seed: int,
              steps: int = 6, layers: int = 3, kinds: tuple[str, ...] = (), cfg_extra: dict | None = None,
              cr: bool = False, reference: bool = False, rng: np.random.Generator | None = None) -> Path:
    """One completed run: config.yaml, metrics.csv, hessian_errors.csv (if ``kinds``), summary.json.

    ``cfg_extra`` replaces top-level config sections; ``reference`` adds the newer
    ``reference, batch, mc_samples`` columns (two logging batches, MC 1 for the Fisher).
    """
    rng = rng or np.random.default_rng(seed)
    d = root / name
    d.mkdir(parents=True)
    solver_cfg = {"name": solver, "lr": 0.1, **({"base": "sgd", "sigma": 100.0} if solver == "cr" else {})}
    cfg = {"experiment": experiment, "seed": seed, "solver": solver_cfg,
           "curvature": {"kind": curvature}, "dataset": {"name": "tiny"}, **(cfg_extra or {})}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    step = np.arange(steps)
    rows = pd.DataFrame({
        "step": step, "epoch": step / 2, "wall_time": 0.1 * (step + 1) * (1 + 0.1 * rng.random(steps)),
        "batch_loss": 2.0 * np.exp(-0.1 * step) + 0.05 * rng.random(steps),
        "step_size": 0.1 * (1 + rng.random(steps)) if cr else np.full(steps, 0.1), "lr": np.full(steps, 0.1),
        "train_loss": 2.0 * np.exp(-0.1 * step) + 0.05 * rng.random(steps),
        "test_loss": 2.1 * np.exp(-0.1 * step), "test_acc": 0.1 + 0.05 * step + 0.01 * rng.random(steps),
    })
    rows.loc[1::2, ["train_loss", "test_loss", "test_acc"]] = np.nan  # evaluated every other step
    rows.to_csv(d / "metrics.csv", index=False)
    if kinds and not reference:
        err = pd.DataFrame([(s, l, k, float(rng.random())) for s in step for l in range(1, layers + 1) for k in kinds],
                           columns=["step", "layer", "kind", "error"])
        err.to_csv(d / "hessian_errors.csv", index=False)
    elif kinds:
        err = pd.DataFrame([(s, l, k, float(rng.random()), 1 + float(rng.random()), b, 1 if k == "fisher" else None)
                            for s in step for b in (10, 20) for l in range(1, layers + 1) for k in kinds],
                           columns=["step", "layer", "kind", "error", "reference", "batch", "mc_samples"])
        err.to_csv(d / "hessian_errors.csv", index=False)
    (d / "summary.json").write_text(json.dumps({
        "status": "completed", "failure": None, "steps": steps, "epochs": steps / 2,
        "wall_time": float(rows["wall_time"].iloc[-1]), "train_loss": 0.5, "test_loss": 0.6, "test_acc": 0.4,
        "experiment": experiment, "dataset": "tiny", "loss": "cross_entropy", "curvature": curvature,
        "solver": solver, "seed": seed}))
    return d
