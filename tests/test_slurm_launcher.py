"""The SLURM presets (``hydra/launcher=submitit_slurm_gpu|submitit_slurm_cpu``), issue 21 item 3.

Without ``sbatch`` the GPU preset's sweep goes through Hydra's submitit plugin and submitit up to
the ``sbatch`` call, which is intercepted: the test reads the batch script submitit wrote (its
``#SBATCH`` resources and command line) and the jobs it pickled. With ``sbatch`` a tiny sweep is
really submitted to the CPU preset's partition (``CURVLAB_SLURM_PARTITION``, default ``cpu``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from curvlab import cli, safety
from curvlab.safety import LAUNCHER_ENV
from test_cli import QUIET, curvlab, summaries

submitit = pytest.importorskip("submitit", reason="submitit is not installed (a curvlab dependency)")

SWEEP = ["seed=0,1", "solver.alpha=0.01,0.02", "train.max_steps=2", "log.hessian_every=0", *QUIET]


class Submitted(BaseException):
    """Raised instead of running ``sbatch``: nothing is submitted (a BaseException passes through Hydra)."""


@pytest.fixture
def sbatch_intercepted(monkeypatch, tmp_path_factory):
    """The batch scripts submitit prepares, with its executor parameters, instead of submitting them
    (an ``srun`` that does nothing is put on PATH: submitit and curvlab look for it on a login node)."""
    from submitit.slurm.slurm import SlurmExecutor

    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    seen: list[dict] = []

    def submit(self, command: str):
        seen.append({"script": self._make_submission_file_text(command, "test"), "params": dict(self.parameters),
                     "folder": Path(self.folder), "environ": dict(os.environ)})
        raise Submitted

    monkeypatch.setattr(SlurmExecutor, "_submit_command", submit)
    return seen


def test_gpu_preset_prepares_one_sbatch_array_with_its_resources(sbatch_intercepted, tmp_path):
    sweep = tmp_path / "sweep"
    with pytest.raises(Submitted):
        cli.main(["train", "-m", "hydra/launcher=submitit_slurm_gpu", f"hydra.sweep.dir={sweep}", *SWEEP])
    (sub,) = sbatch_intercepted  # one job array for the whole sweep
    lines = sub["script"].splitlines()
    flags = dict(line.removeprefix("#SBATCH --").split("=", 1) for line in lines if line.startswith("#SBATCH --"))
    assert flags["partition"] == "gpu" and flags["gpus-per-node"] == "1" and flags["cpus-per-task"] == "4"
    assert flags["mem"] == "32GB" and flags["time"] == "240" and flags["nodes"] == "1"
    assert flags["ntasks-per-node"] == "1" and flags["job-name"] == "train"
    assert flags["array"] == "0-3%4"  # 4 runs, at most min(4, array_parallelism=32) at a time
    assert flags["signal"] == "USR2@120"  # submitit's warning before the wall time: requeue, then resume
    assert flags["output"] == f"{sweep}/.submitit/%A_%a/%A_%a_0_log.out"  # the logs next to the runs
    # The command: srun runs this interpreter on submitit's entry point, which unpickles one job.
    assert f"srun --unbuffered --output {sweep}/.submitit/%A_%a/%A_%a_%t_log.out" in sub["script"]
    assert f"{sys.executable} -u -m submitit.core._submit {sweep}/.submitit/%j" in sub["script"]
    # The pickled jobs: Hydra's launcher with each sweep point's overrides, numbered 0..3.
    from submitit.core.utils import DelayedSubmission

    jobs = [DelayedSubmission.load(p) for p in sorted(sub["folder"].parent.glob("*.pkl"))]
    points = sorted((job.args[2], tuple(o for o in job.args[0] if o.startswith(("seed=", "solver.alpha=")))) for job in jobs)
    assert points == [(0, ("seed=0", "solver.alpha=0.01")), (1, ("seed=0", "solver.alpha=0.02")),
                      (2, ("seed=1", "solver.alpha=0.01")), (3, ("seed=1", "solver.alpha=0.02"))]
    assert all(job.args[1] == "hydra.sweep.dir" and "train.max_steps=2" in job.args[0] for job in jobs)
    # sbatch passes the environment on: the launcher's pid is marked with its host (see the next test).
    assert sub["environ"][LAUNCHER_ENV].endswith(f"@{socket.gethostname()}")


def test_cpu_preset_resources(sbatch_intercepted, tmp_path):
    with pytest.raises(Submitted):
        cli.main(["train", "-m", "hydra/launcher=submitit_slurm_cpu", "hydra.launcher.partition=short",
                  f"hydra.sweep.dir={tmp_path}", *SWEEP])
    flags = {line.removeprefix("#SBATCH --").split("=", 1)[0]: line.split("=", 1)[1]
             for line in sbatch_intercepted[0]["script"].splitlines() if line.startswith("#SBATCH --")}
    assert flags["partition"] == "short" and flags["time"] == "1440" and flags["mem"] == "8GB"
    assert flags["cpus-per-task"] == "4" and "gpus-per-node" not in flags  # 0 GPUs: no GPU request


def test_slurm_preset_without_slurm_is_one_config_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    assert cli.main(["train", "-m", "hydra/launcher=submitit_slurm_gpu", f"hydra.sweep.dir={tmp_path / 'sweep'}", *SWEEP]) == 2
    assert not (tmp_path / "sweep").exists()
    assert capsys.readouterr().err.strip() == (
        "curvlab train: config error: hydra/launcher=submitit_slurm_gpu: no SLURM on this machine (no srun on PATH); "
        "run the command on the cluster's login node, or try the same code path here with hydra/launcher=submitit_local")


@pytest.mark.parametrize("host, stops", [("compute-node-that-is-not-this-one", False), (None, True)])
def test_a_job_on_another_host_ignores_the_login_nodes_launcher_pid(host, stops):
    """``sbatch`` copies the login node's environment into the job, the launcher's pid included; on the
    compute node that pid names nothing (or another process), so only a launcher on the same host is watched."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists
    env = {**os.environ, LAUNCHER_ENV: f"{dead.pid}@{host or socket.gethostname()}"}
    code = ("import importlib.util, sys, time; spec = importlib.util.spec_from_file_location('safety', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "  # not the package: no torch import
            "m.exit_with_parent(poll=0.05); time.sleep(1)")
    out = subprocess.run([sys.executable, "-c", code, safety.__file__], env=env, capture_output=True, text=True, timeout=60)
    assert (out.returncode, "is gone" in out.stderr) == ((143, True) if stops else (0, False)), out.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sbatch") is None, reason="no sbatch here: the real SLURM submission needs a SLURM login node")
def test_cpu_preset_on_a_real_slurm_cluster(tmp_path):
    """Submits 4 tiny runs to ``CURVLAB_SLURM_PARTITION`` (tmp_path must be on a file system the nodes share)."""
    partition = os.environ.get("CURVLAB_SLURM_PARTITION", "cpu")
    out = curvlab("train", "-m", "hydra/launcher=submitit_slurm_cpu", f"hydra.launcher.partition={partition}",
                  "hydra.launcher.timeout_min=10", "hydra.launcher.mem_gb=2", "hydra.launcher.cpus_per_task=1",
                  f"hydra.sweep.dir={tmp_path}", *SWEEP, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = summaries(tmp_path)
    assert len(runs) == 4 and all(s["status"] == "completed" and s["steps"] == 2 for s in runs.values())
