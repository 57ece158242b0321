"""``train.threads``: torch's CPU threads per run, shared out when a launcher runs jobs side by side;
and ``elapsed``, which times training, not start-up."""

from __future__ import annotations

import time

import pytest
import torch

from curvlab import cli
from curvlab import runfiles as rf
from curvlab import train as train_module
from curvlab.threads import cpu_cores, launcher_threads, torch_threads
from curvlab.train import train
from test_train import NO_HESSIAN, TINY, config

QUIET = ["log.progress=false", *NO_HESSIAN]


def test_launcher_threads_share_the_cores(monkeypatch):
    monkeypatch.setattr("curvlab.threads.cpu_cores", lambda: 16)
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher_threads({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}) is None
    assert launcher_threads({"_target_": joblib, "n_jobs": -1}) == 1  # one job per core
    assert launcher_threads({"_target_": joblib, "n_jobs": -2}) == 1  # 15 jobs
    assert launcher_threads({"_target_": joblib, "n_jobs": 4}) == 4
    assert launcher_threads({"_target_": joblib, "n_jobs": 1}) is None  # one at a time: all cores
    local = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    assert launcher_threads({"_target_": local, "cpus_per_task": 1}) == 1
    assert launcher_threads({"_target_": local.replace("Local", "Slurm"), "cpus_per_task": 4}) == 4
    ray = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert launcher_threads({"_target_": ray, "ray": {"remote": {"num_cpus": 2, "num_gpus": 1}}}) == 2
    assert launcher_threads({"_target_": ray, "ray": {"remote": {}}}) == 1  # Ray's default: one CPU per task


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    with torch_threads(1) as n:
        assert n == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None) as n:
        assert n == before


def test_run_uses_the_configured_threads_and_records_them(tmp_path):
    before = torch.get_num_threads()
    summary = train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=2", "train.threads=1"), tmp_path)
    assert summary["threads"] == 1 and torch.get_num_threads() == before
    auto = train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=2"), tmp_path / "auto")
    assert auto["threads"] == before  # auto: torch's default for a single run


@pytest.mark.parametrize(("value", "message"), [
    ("0", "train.threads must be an integer >= 1 or auto"),
    ("-3", "train.threads must be an integer >= 1 or auto"),
    ("many", "train.threads must be"),
    ("1.5", "train.threads must be"),
])
def test_bad_threads_is_one_line_exit_2(tmp_path, capsys, value, message):
    code = cli.main(["train", f"train.threads={value}", f"run_dir={tmp_path}", *QUIET])
    out = capsys.readouterr()
    text = out.out + out.err + rf.read_json(tmp_path / rf.SUMMARY).get("failure", "")
    assert code == 2 and message in text and "Traceback" not in text, text
    assert not (tmp_path / rf.METRICS).exists()


def test_elapsed_excludes_start_up(tmp_path, monkeypatch):
    """Data loading (here made 2 s slower) happens before the clock starts."""
    load = train_module.load_dataset

    def slow_load(cfg, **kwargs):
        time.sleep(2.0)
        return load(cfg, **kwargs)

    monkeypatch.setattr(train_module, "load_dataset", slow_load)
    t0 = time.perf_counter()
    summary = train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=2"), tmp_path)
    total = time.perf_counter() - t0
    assert 0 < summary["elapsed"] <= total - 2.0
    assert summary["elapsed"] >= summary["wall_time"] + summary["log_time"]


def test_cpu_cores_is_positive():
    assert cpu_cores() >= 1
