"""Fault injection with real processes: concurrent runs, kills, dead launchers, hostile overrides, consoles."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from curvlab import cli
from curvlab import runfiles as rf
from curvlab.hessian_log import HessianLogger
from curvlab.safety import ALLOW_ENV, check_overrides
from curvlab.train import TrainingFailed, train
from test_cli import QUIET, REPO, curvlab
from test_train import TINY, config

SHORT = ["dataset.train_subset=256", "dataset.test_subset=64", "train.batch_size=64", "device=cpu"]


def _popen_niced(*args: str, cwd: Path = REPO) -> subprocess.Popen:
    """``curvlab`` in the background at the lowest priority (it trains while the test goes on)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "curvlab.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(19))


def _wait_until(check, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _locked(run_dir: Path) -> bool:
    try:
        with rf.lock_run_dir(run_dir):
            return False
    except rf.RunDirBusy:
        return True


def _holder(run_dir: Path) -> int | None:
    """The pid written into the run directory's lock file (without touching the lock)."""
    try:
        return int((run_dir / rf.LOCK).read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (PID 1 of a container may not reap it)


# --- security (items 1-3 of issue 11; checkpoints are in test_runfiles.py) -------------------
@pytest.mark.parametrize("override", [
    "experiment_name=../../../x", "experiment_name=a/b", "experiment_name=..", "experiment_name=ok,../x",
    "run_dir=''", "run_dir=",
    "+hydra.callbacks.x={_target_: shutil.copyfile, src: a, dst: b}",
    "hydra.callbacks.sweep_status._target_=os.system", "hydra.launcher._target_=os.system",
    "+hydra.job_logging.handlers.x={_target_: os.system, command: id}",
])
def test_hostile_overrides_exit_2_before_anything_is_written(tmp_path, capsys, monkeypatch, override):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", override, "train.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and ("experiment_name" in err or "run_dir" in err or ALLOW_ENV in err)
    assert list(tmp_path.iterdir()) == []  # no run, no .hydra/, no log in the working directory


def test_an_override_value_with_a_path_stays_one_folder_under_runs(tmp_path, monkeypatch):
    """Ad-hoc runs are named by their overrides; a value holding '../' must not climb out of runs/."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "train.schedule=../../../../x/evil", "train.max_steps=1"]) == 2  # a bad value too
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]
    (named,) = (tmp_path / "runs" / "demo").iterdir()
    assert named.name == "train.max_steps=1,train.schedule=.._.._.._.._x_evil"


def test_instantiating_overrides_are_allowed_by_the_env_var(monkeypatch):
    override = "+hydra.callbacks.x={_target_: curvlab.cli.SweepStatus}"
    with pytest.raises(ValueError, match=ALLOW_ENV):
        check_overrides([override])
    monkeypatch.setenv(ALLOW_ENV, "1")
    check_overrides([override, "-m", "--config-name", "config", "experiment_name=fine", "run_dir=/tmp/x"])


def test_experiment_name_is_checked_by_train_too(tmp_path):
    """Presets and the Python API do not pass through the command-line check."""
    with pytest.raises(ValueError, match="experiment_name='a/b'.*run_dir=PATH"):
        train(config(*TINY, "experiment_name=a/b", "train.max_steps=1"), tmp_path)


# --- item 4: one run per directory ------------------------------------------------------------
def test_second_run_on_a_run_dir_is_refused_and_the_lock_dies_with_the_process(tmp_path):
    run_dir = tmp_path / "run"
    first = _popen_niced("train", "solver=sgd", "train.epochs=100000", "log.hessian_every=0", "log.hessian_first=0",
                   *SHORT, f"run_dir={run_dir}", *QUIET)
    try:
        _wait_until(lambda: _holder(run_dir) == first.pid or first.poll() is not None, 120, "the first run's lock")
        assert first.poll() is None, first.communicate()
        assert _locked(run_dir)
        second = curvlab("train", "solver=sgd", "seed=1", "train.max_steps=1", *SHORT, f"run_dir={run_dir}", *QUIET)
        assert second.returncode == 1
        assert f"run_dir {run_dir} is in use by another run (pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        overrides = run_dir / ".hydra" / "overrides.yaml"  # the refused run wrote nothing, not even Hydra's copy
        assert not overrides.exists() or "seed=1" not in overrides.read_text()
        with pytest.raises(rf.RunDirBusy, match=str(run_dir)):
            train(config(*TINY, "train.max_steps=1"), run_dir)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert not _locked(run_dir)  # the OS dropped the lock of the killed process: no stale marker


# --- item 8: sweep jobs die with their launcher ------------------------------------------------
WATCHED_CHILD = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c",
    "import time; from curvlab.safety import exit_with_parent; exit_with_parent(0.05); print('ready', flush=True); "
    "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
print(child.pid, flush=True)
"""


def test_a_job_process_exits_when_its_launcher_dies():
    """The watchdog a joblib/submitit job starts (cli._task): the launcher exits, the job follows."""
    out = subprocess.run([sys.executable, "-c", WATCHED_CHILD], capture_output=True, text=True, timeout=60,
                         cwd=REPO)
    pid = int(out.stdout.split()[-1])
    try:
        _wait_until(lambda: not _alive(pid), 10, f"job process {pid} to exit after its launcher")
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _processes_in_group(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow
def test_killing_a_joblib_sweep_stops_its_workers(tmp_path):
    """SIGKILL to ``curvlab train -m`` (joblib): its loky workers exit within seconds (about 20 s in all)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen(
        [sys.executable, "-m", "curvlab.cli", "train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "seed=0,1", "solver=sgd", "train.epochs=100000", "log.hessian_every=0", "log.hessian_first=0", *SHORT,
         f"run_dir={tmp_path}", *QUIET],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        _wait_until(lambda: all(_holder(tmp_path / j) for j in "01"), 180, "both jobs to run")
        sweep.kill()
        sweep.wait()
        _wait_until(lambda: not _processes_in_group(sweep.pid), 15, "the loky workers to exit")
        assert not _locked(tmp_path / "0") and not _locked(tmp_path / "1")
    finally:
        for pid in _processes_in_group(sweep.pid):
            os.kill(pid, signal.SIGKILL)


# --- item 5: NaN/Inf in the Hessian-error logging ----------------------------------------------
def _poison_at(monkeypatch, step: int) -> None:
    """Parameters turn NaN right before the Hessian errors of ``step`` are computed."""
    rows = HessianLogger.rows

    def poisoned(self, net, x, y, at, *args, **kwargs):
        if at == step:
            with torch.no_grad():
                next(net.parameters()).fill_(float("nan"))
        return rows(self, net, x, y, at, *args, **kwargs)

    monkeypatch.setattr(HessianLogger, "rows", poisoned)


def test_nan_in_hessian_logging_fails_the_run_like_any_nan(tmp_path, monkeypatch):
    _poison_at(monkeypatch, 2)
    with pytest.raises(TrainingFailed, match="parameters are NaN/Inf after 2 updates.*lower solver.lr"):
        train(config(*TINY, "solver=sgd", "log.hessian_first=4", "log.hessian_kinds=[fisher]", "train.checkpoint_every=1"),
              tmp_path)
    summary = rf.read_json(tmp_path / rf.SUMMARY)
    assert summary["status"] == "failed" and "Hessian-error logging" in summary["failure"] and summary["steps"] == 2
    assert pd.read_csv(tmp_path / rf.METRICS)["step"].tolist() == [0, 1, 2]
    assert sorted(pd.read_csv(tmp_path / rf.HESSIAN_ERRORS)["step"].unique()) == [0, 1]


def test_breakdown_in_hessian_logging_names_the_way_out(tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(HessianLogger, "rows", broken)
    with pytest.raises(TrainingFailed, match="log.hessian_every=0 log.hessian_first=0"):
        train(config(*TINY, "solver=sgd", "log.hessian_first=1"), tmp_path)
    assert rf.read_json(tmp_path / rf.SUMMARY)["status"] == "failed"


def test_nan_in_hessian_logging_is_listed_in_a_sweep_without_traceback(tmp_path, monkeypatch, capsys):
    _poison_at(monkeypatch, 2)
    code = cli.main(["train", "-m", "solver=sgd", "log.hessian_first=1,3", "train.max_steps=4", *SHORT,
                     f"run_dir={tmp_path}", *QUIET])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "1 job(s) of the sweep failed" in err and f"{tmp_path / '1'}: parameters are NaN/Inf" in err
    assert rf.read_json(tmp_path / "0" / rf.SUMMARY)["status"] == "completed"
    failed = rf.read_json(tmp_path / "1" / rf.SUMMARY)
    assert failed["status"] == "failed" and "NaN/Inf" in failed["failure"]


# --- items 15-17: what a run shows and writes --------------------------------------------------
def test_console_without_a_terminal_times_and_file_modes(tmp_path):
    """Under nohup/SLURM/a pipe: a line per evaluation; times in every file; the umask is followed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "curvlab.cli", "train", "solver=sgd", "train.epochs=2", "train.eval_every=3",
         "log.hessian_first=2", "log.hessian_every=0", *SHORT, f"run_dir={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o027),
    )
    assert out.returncode == 0, out.stderr
    console = out.stdout + out.stderr  # Hydra's log handler writes to stdout
    lines = [line for line in console.splitlines() if "] - step " in line]
    assert [line.split("] - step ")[1].split()[0] for line in lines] == ["3/8", "4/8", "6/8", "8/8"]
    assert all("test acc" in line and "s elapsed" in line and "Hessian-error logging" in line for line in lines)
    assert "completed: 8 steps in " in console and "s solver, " in console
    df = pd.read_csv(tmp_path / rf.METRICS)
    assert list(df.columns[: len(rf.METRIC_COLUMNS)]) == rf.METRIC_COLUMNS
    assert df["elapsed"].is_monotonic_increasing and (df["elapsed"] >= df["wall_time"] + df["log_time"]).all()
    assert df["log_time"].iloc[-1] > 0 and df["log_time"].iloc[2] == df["log_time"].iloc[-1]  # logged at 0, 1
    summary = rf.read_json(tmp_path / rf.SUMMARY)
    assert summary["elapsed"] >= summary["wall_time"] + summary["log_time"] and summary["log_time"] > 0
    for name in rf.RUN_FILES:
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


# --- item 18: make test-gpu ---------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, `make test-gpu` itself is the check")
def test_make_test_gpu_skips_each_part_without_cuda():
    out = subprocess.run(["sh", "scripts/test_gpu.sh"], cwd=REPO, env={**os.environ, "PYTHON": sys.executable},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    skipped = [line for line in out.stdout.splitlines() if "skipped: no CUDA device" in line]
    assert len(skipped) == 3 and "pytest -m gpu" in skipped[0] and "bench" in skipped[1]
