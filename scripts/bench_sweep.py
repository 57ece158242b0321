#!/usr/bin/env python
"""Time to build the job list of the EA-CG grid (``experiment=eacg_grid_search``, 576 points).

``scripts/reproduce.py``'s ``expand()`` builds it with :class:`curvlab.sweeps.PointComposer`
(one Hydra composition per distinct group choice, Hydra's own override code on the rest). The
old way, one ``hydra.compose`` per point (135 s in issue 21), is timed on a sample of points and
extrapolated to the grid. Prints both and checks that the sampled points' configs agree; also
the check Hydra's basic sweeper makes before ``curvlab train -m`` launches any job (one
composition per job), on the same sample, extrapolated.

    python scripts/bench_sweep.py [--sample 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "eacg_grid_search"


def load_reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sample", type=int, default=8, help="points composed the old way (extrapolated)")
    a = p.parse_args(argv)
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from curvlab.cli import CONFIG_DIR

    reproduce = load_reproduce()
    reproduce.expand(EXPERIMENT, [], 0)  # warm up: imports, Hydra's plugin discovery
    t0 = time.perf_counter()
    jobs = reproduce.expand(EXPERIMENT, [], 0)
    new = time.perf_counter() - t0
    print(f"{EXPERIMENT}: job list of {len(jobs)} points built in {new:.2f} s "
          f"({1e3 * new / len(jobs):.1f} ms per point; reproduce.expand with curvlab.sweeps.PointComposer)")

    sample = random.Random(0).sample(jobs, a.sample)
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        t0 = time.perf_counter()
        old = [OmegaConf.to_container(compose("config", overrides=[f"experiment={EXPERIMENT}", *j.overrides]),
                                      resolve=True) for j in sample]
        per_point = (time.perf_counter() - t0) / a.sample
    assert old == [j.cfg for j in sample], "the fast job list differs from composing each point"
    print(f"old way (hydra.compose per point): {1e3 * per_point:.0f} ms per point on {a.sample} sampled points, "
          f"extrapolated {per_point * len(jobs):.0f} s for {len(jobs)} points "
          f"({per_point * len(jobs) / new:.0f}x slower); the sampled configs are identical")
    per_job = hydra_check_time([j.overrides for j in sample])
    print(f"`curvlab train -m experiment={EXPERIMENT}`: Hydra's basic sweeper composes every job before it launches "
          f"any (validate_batch_is_legal): {1e3 * per_job:.0f} ms per job, extrapolated {per_job * len(jobs):.0f} s")
    return 0


def hydra_check_time(points: list[list[str]]) -> float:
    """Seconds per job of the check Hydra's basic sweeper makes before launching a multirun."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from curvlab.cli import PACKAGE_CONFIGS

    GlobalHydra.instance().clear()
    app = Hydra.create_main_hydra2("train", create_automatic_config_search_path(None, None, PACKAGE_CONFIGS))
    try:
        master = app.compose_config("config", [f"experiment={EXPERIMENT}"], run_mode=RunMode.MULTIRUN)
        t0 = time.perf_counter()
        for point in points:  # what BasicSweeper.validate_batch_is_legal does for each job
            app.config_loader.load_sweep_config(master, [f"experiment={EXPERIMENT}", *point])
        return (time.perf_counter() - t0) / len(points)
    finally:
        GlobalHydra.instance().clear()


if __name__ == "__main__":
    raise SystemExit(main())
