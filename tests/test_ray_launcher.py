"""``hydra/launcher=ray`` on a real Ray cluster on this machine (a head and a second node process).

Issue 21 items 2 and 4: a 4-point sweep of tiny digits runs as Ray tasks and ``curvlab report``
reads it; a sweep with failing and killed jobs lists them with their errors, and rerunning the
same command (same ``hydra.sweep.dir``, ``resume=auto``) trains only what is missing.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from curvlab import cli
from curvlab import runfiles as rf
from test_cli import QUIET, curvlab, summaries

TINY = ["train.max_steps=2", "log.hessian_every=0", *QUIET]  # the default digits demo, 2 updates
PLUGIN = "hydra_plugins.hydra_ray_launcher"


@pytest.fixture(scope="module")
def ray_address():
    """A head node and one worker node (1 CPU each: two jobs at a time), torn down after the module."""
    pytest.importorskip("ray", reason="ray is not installed: pip install 'curvlab[ray]'")
    pytest.importorskip(PLUGIN, reason="hydra-ray-launcher is not installed: pip install 'curvlab[ray]'")
    from ray.cluster_utils import Cluster

    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the nodes' worker processes inherit it: 1 thread per job
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()  # kills the node processes it started, by pid
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def ray_sweep(address: str, sweep_dir: Path, *overrides: str):
    return curvlab("train", "-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={address}",
                   f"hydra.sweep.dir={sweep_dir}", *TINY, *overrides, timeout=600)


def metrics(run_dir: Path) -> pd.DataFrame:
    """The run's per-update table, whichever file format the run wrote."""
    (path,) = sorted(run_dir.glob("metrics.*"))
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def test_ray_sweep_2x2_and_its_report(ray_address, tmp_path):
    sweep = tmp_path / "sweep"
    out = ray_sweep(ray_address, sweep, "seed=0,1", "solver.alpha=0.01,0.02")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Ray Launcher is launching 4 jobs" in out.stdout + out.stderr
    assert "Connecting to existing Ray cluster" in out.stderr  # our cluster, not a private local Ray
    runs = summaries(sweep)
    assert sorted(runs) == ["0", "1", "2", "3"]
    assert all(s["status"] == "completed" and s["steps"] == 2 and s["threads"] == 1 for s in runs.values())
    alpha = {k: float(OmegaConf.load(sweep / k / rf.CONFIG).solver.alpha) for k in runs}
    assert sorted((s["seed"], alpha[k]) for k, s in runs.items()) == [(0, 0.01), (0, 0.02), (1, 0.01), (1, 0.02)]

    report_dir = tmp_path / "report"
    assert cli.main(["report", str(sweep), "--out", str(report_dir), "--only", "tables"]) == 0
    table = pd.read_csv(report_dir / "demo_runs.csv")  # one row per run
    assert len(table) == 4 and set(table["status"]) == {"completed"}
    for _, row in table.iterrows():
        summary = runs[Path(row["run"]).name]
        assert (row["seed"], row["steps"]) == (summary["seed"], 2)
        assert row["train loss"] == pytest.approx(summary["train_loss"])
    final = pd.read_csv(report_dir / "demo_final.csv")  # one row per curve, "mean ± std" over its seeds
    assert sorted(final["label"]) == ["EA-CG · PCH-1 · alpha=0.01", "EA-CG · PCH-1 · alpha=0.02"]
    assert set(final["seeds"]) == {2} and set(final["completed"]) == {2}
    for _, row in final.iterrows():
        losses = [s["train_loss"] for k, s in runs.items() if f"alpha={alpha[k]:g}" in row["label"]]
        assert len(losses) == 2
        assert float(row["train loss"].split(" ± ")[0]) == pytest.approx(sum(losses) / 2, rel=1e-3)


@pytest.mark.slow  # two sweeps: about 90 s on 2 busy cores
def test_ray_sweep_lists_failed_and_killed_jobs_and_a_rerun_trains_only_those(ray_address, tmp_path):
    """lr 1e6 diverges at update 1 (a failure at run time, on the node); ``train.stop_after=1`` stops
    its job after one update as if the node had been killed. Jobs: 0 completes, 1 is killed, 2 and 3
    fail (3 fails before it could stop)."""
    sweep = tmp_path / "sweep"
    command = ("train.eval_every=1", "solver.lr=1.0,1e6", "train.stop_after=null,1")
    first = ray_sweep(ray_address, sweep, *command)
    assert first.returncode == 1, first.stderr[-3000:]
    runs = summaries(sweep)
    assert [(runs[k]["status"], runs[k]["steps"]) for k in "0123"] == [
        ("completed", 2), ("running", 1), ("failed", 1), ("failed", 1)]
    # The sweep callback, in the launching process, lists every job that did not complete, with why.
    listed = first.stderr.split("job(s) of the sweep failed:")[1]
    assert "3 job(s) of the sweep failed" in first.stderr
    assert f"{sweep / '1'}: status running" in listed
    for k in "23":
        assert f"{sweep / k}: diverged: loss" in listed and runs[k]["failure"].startswith("diverged")
    done, killed = metrics(sweep / "0"), metrics(sweep / "1")
    done_bytes = {p.name: p.read_bytes() for p in (sweep / "0").glob("metrics.*")}

    again = ray_sweep(ray_address, sweep, *command)  # the same command: resume=auto in the same sweep dir
    assert again.returncode == 1, again.stderr[-3000:]
    rerun = summaries(sweep)
    # The completed job is not trained again: it resumes at its end and its table is untouched.
    assert rerun["0"]["status"] == "completed" and rerun["0"]["steps"] == 2
    assert {p.name: p.read_bytes() for p in (sweep / "0").glob("metrics.*")} == done_bytes
    pd.testing.assert_frame_equal(metrics(sweep / "0"), done)
    # The killed job resumes from its checkpoint (its first update kept as it was) and completes.
    assert rerun["1"]["status"] == "completed" and rerun["1"]["steps"] == 2
    resumed = metrics(sweep / "1")
    assert list(resumed["step"]) == [0, 1, 2]
    pd.testing.assert_frame_equal(resumed.iloc[:2].reset_index(drop=True), killed)
    # The failed jobs ran again and failed again, and are listed again; the killed one no longer is.
    assert all(rerun[k]["status"] == "failed" for k in "23")
    listed = again.stderr.split("job(s) of the sweep failed:")[1]
    assert "2 job(s) of the sweep failed" in again.stderr and f"{sweep / '1'}:" not in listed


def test_ray_launcher_without_the_plugin_is_one_config_error(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == PLUGIN else real(name, *a))
    code = cli.main(["train", "-m", "hydra/launcher=ray", f"hydra.sweep.dir={tmp_path / 'sweep'}", "seed=0,1", *TINY])
    assert code == 2 and not (tmp_path / "sweep").exists()
    assert capsys.readouterr().err.strip() == (
        "curvlab train: config error: hydra/launcher=ray: Hydra's Ray launcher is not installed; pip install 'curvlab[ray]'")
