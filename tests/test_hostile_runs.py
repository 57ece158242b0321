"""Hostile files and file systems (issue 23, the runner): planted links, bad run directories, full or
read-only disks, tampered checkpoints, replaced data, Ctrl-C, group choices that are paths, dead launchers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from curvlab import cli
from curvlab import runfiles as rf
from curvlab.datafiles import DatasetError, check_labels, load_npz
from curvlab.rundirs import RunDirError, check_run_dir
from curvlab.safety import LAUNCHER_ENV
from curvlab.train import RunInterrupted, train
from test_cli import QUIET, REPO
from test_train import NO_HESSIAN, TINY, config

FAST = [*TINY, *NO_HESSIAN, "solver=sgd", *QUIET]


def _cli(tmp_path: Path, monkeypatch, *args: str) -> int:
    """``curvlab train`` in ``tmp_path``; flags (``-m``, ``--config-dir DIR``) go first, as argparse needs."""
    monkeypatch.chdir(tmp_path)
    flags = [a for i, a in enumerate(args) if a.startswith("-") or (i and args[i - 1] == "--config-dir")]
    return cli.main(["train", *flags, *FAST, "train.max_steps=2", *(a for a in args if a not in flags)])


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    return victim


# --- planted links, odd lock files, stale temporaries --------------------------------------------
@pytest.mark.parametrize("name", [".lock", "train.log", ".hydra/overrides.yaml", ".hydra/config.yaml", "summary.json"])
def test_a_link_planted_in_a_run_dir_is_refused_and_never_written_through(tmp_path, monkeypatch, capsys, name):
    run_dir, victim = tmp_path / "run", _victim(tmp_path)
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / name).symlink_to(victim)
    assert _cli(tmp_path, monkeypatch, f"run_dir={run_dir}") == 2
    err = capsys.readouterr().err
    assert f"{run_dir / name} is a symbolic link" in err and "Traceback" not in err
    assert victim.read_text() == "precious\n" and not (run_dir / rf.CHECKPOINT).exists()
    with pytest.raises(RunDirError, match="symbolic link"):  # the Python API refuses it too
        train(config(*FAST, "train.max_steps=1"), run_dir)


def test_the_lock_is_opened_without_following_a_link(tmp_path):
    victim = _victim(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / rf.LOCK).symlink_to(victim)
    with pytest.raises(RunDirError, match="symbolic link"):
        with rf.lock_run_dir(tmp_path / "run"):
            pass
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_lock_that_is_no_file_gives_one_line(tmp_path, monkeypatch, capsys, kind):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / rf.LOCK).mkdir() if kind == "directory" else os.mkfifo(run_dir / rf.LOCK)
    assert _cli(tmp_path, monkeypatch, f"run_dir={run_dir}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{run_dir / rf.LOCK} is a" in err and "remove" in err


def test_a_directory_named_like_a_stale_temporary_is_left_alone(tmp_path):
    (tmp_path / ".metrics.csv.x.tmp").mkdir()
    (tmp_path / ".summary.json.y.tmp").write_text("half")
    assert rf.remove_stale_temporaries(tmp_path) == [tmp_path / ".summary.json.y.tmp"]
    train(config(*FAST, "train.max_steps=1"), tmp_path)
    assert (tmp_path / ".metrics.csv.x.tmp").is_dir()


# --- resolved paths, checked before anything is written ----------------------------------------
@pytest.mark.parametrize("args, field", [
    (["run_dir=."], "run_dir"), (["run_dir=.."], "run_dir"), (["hydra.run.dir=."], "hydra.run.dir"),
    (["hydra.run.dir=''"], "hydra.run.dir"), (["-m", "seed=0,1", "hydra.sweep.dir=''"], "hydra.sweep.dir"),
    (["run_dir=/dev/null"], "run_dir"), (["run_dir=/proc/curvlab-test"], "run_dir"),
    (["run_dir=" + "x" * 300], "run_dir"), (["run_dir=${oc.env:CURVLAB_SURELY_UNSET}"], "run_dir"),
    (["run_dir=[a,b]"], "run_dir"), (["dataset.root=../../../x", "experiment_name=${dataset.root}"], "experiment_name"),
    (["experiment_name=${oc.decode:'..'}"], "experiment_name"),
    (["-m", "seed=0,1", "dataset.root=../../x", "experiment_name=${dataset.root}"], "experiment_name"),
])
def test_bad_resolved_run_dirs_exit_2_before_anything_is_written(tmp_path, monkeypatch, capsys, args, field):
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    assert _cli(work, monkeypatch, *args) == 2
    err = capsys.readouterr().err
    assert f"config error: {field}" in err and "Traceback" not in err
    assert list(work.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["a"]


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_run_dir_that_is_or_lies_under_a_file(tmp_path, monkeypatch, capsys, where):
    (tmp_path / "f").write_text("x")
    run_dir = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    assert _cli(tmp_path, monkeypatch, f"run_dir={run_dir}") == 2
    assert f"{tmp_path / 'f'} is a file" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "x"


def test_check_run_dir_refuses_names_longer_than_the_file_system_allows(tmp_path):
    with pytest.raises(RunDirError, match="more than the file system allows"):
        check_run_dir(tmp_path / ("y" * 300))
    assert check_run_dir(tmp_path / "ok") == tmp_path / "ok"


def test_a_busy_hydra_run_dir_is_refused_before_hydra_rewrites_its_files(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- the running run's\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(run_dir / rf.LOCK)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _cli(tmp_path, monkeypatch, f"hydra.run.dir={run_dir}") == 1
        assert "is in use by another run" in capsys.readouterr().err
        assert (run_dir / ".hydra" / "overrides.yaml").read_text() == "- the running run's\n"
        assert not (run_dir / "train.log").exists()
    finally:
        holder.kill()
        holder.wait()


# --- resume: bool fields, discarding, shorter runs ------------------------------------------------
@pytest.mark.parametrize("value", ["0", "1", "yes", "'true'"])
def test_resume_takes_only_true_false_or_auto(value):
    with pytest.raises(ValueError, match="resume: unknown value"):
        config(*FAST, f"resume={value}")


def test_discarding_a_checkpoint_is_said_and_a_shorter_resume_is_refused(tmp_path, caplog):
    train(config(*FAST, "train.max_steps=4"), tmp_path)
    written = (tmp_path / rf.CONFIG).read_text()
    with pytest.raises(ValueError, match="already holds 4 updates, more than the 2"):
        train(config(*FAST, "train.max_steps=2"), tmp_path)
    assert (tmp_path / rf.CONFIG).read_text() == written and "max_steps: 4" in written
    with caplog.at_level("WARNING", logger="curvlab"):
        train(config(*FAST, "train.max_steps=2", "resume=false"), tmp_path)
    assert "resume=false: discarding" in caplog.text and rf.read_json(tmp_path / rf.SUMMARY)["steps"] == 2


# --- Ctrl-C ----------------------------------------------------------------------------------------
def _interrupt_at(monkeypatch, step: int) -> None:
    import curvlab.train as tr

    lr_at = tr.lr_at

    def interrupted(cfg, at):
        if at == step:
            raise KeyboardInterrupt
        return lr_at(cfg, at)

    monkeypatch.setattr(tr, "lr_at", interrupted)


def test_ctrl_c_records_interrupted_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    _interrupt_at(monkeypatch, 3)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", *FAST, "train.max_steps=6", "train.checkpoint_every=2", f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 130 and "Traceback" not in err
    assert err.splitlines()[-1] == ("curvlab train: interrupted at update 3; resume with the same command "
                                    "(it continues from the checkpoint at update 2)")
    summary = rf.read_json(tmp_path / "run" / rf.SUMMARY)
    assert summary["status"] == "interrupted" and summary["steps"] == 3
    monkeypatch.undo()
    with pytest.raises(RunInterrupted):  # the Python API raises a KeyboardInterrupt too
        _interrupt_at(monkeypatch, 1)
        train(config(*FAST, "train.max_steps=3"), tmp_path / "api")


# --- full and read-only file systems (a real tmpfs where this machine lets us mount one) -----------
@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (mount -t tmpfs: {out.stderr.strip() or out.returncode})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)  # lazy: a log handler may still hold a file there


def test_a_full_disk_gives_one_line_naming_the_directory(tmp_path, monkeypatch, capsys, tmpfs):
    run_dir = tmpfs("16k") / "run"
    code = _cli(tmp_path, monkeypatch, f"run_dir={run_dir}")
    err = capsys.readouterr().err
    assert code in (1, 2) and "Traceback" not in err
    assert str(run_dir) in err and "the disk is full" in err.lower().replace("no space left on device", "the disk is full")


@pytest.mark.parametrize("when", ["new run", "resume"])
def test_a_read_only_file_system_gives_one_line(tmp_path, monkeypatch, capsys, tmpfs, when):
    point = tmpfs("4m")
    if when == "resume":
        train(config(*FAST, "train.max_steps=4", "train.stop_after=2", "train.checkpoint_every=1"), point / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
    code = _cli(tmp_path, monkeypatch, f"run_dir={point / 'run'}", "train.max_steps=4")
    err = capsys.readouterr().err
    assert code in (1, 2) and "Traceback" not in err and "read-only" in err and str(point / "run") in err


# --- checkpoints that do not fit, data that changed ----------------------------------------------
def _partial(run_dir: Path, *extra: str) -> dict:
    train(config(*FAST, "train.max_steps=4", "train.stop_after=2", "train.checkpoint_every=1", *extra), run_dir)
    return rf.load_checkpoint(run_dir / rf.CHECKPOINT)


@pytest.mark.parametrize("change, match", [
    (lambda s: s["net"].__setitem__("layers.0.weight", torch.zeros(3, 3)), r"net.layers.0.weight is shape \(3, 3\)"),
    (lambda s: s["net"].__setitem__("x", s["net"].pop("layers.0.bias")), "net parameters layers.0.bias missing, x unknown"),
    (lambda s: s.__setitem__("step", "2"), "field 'step' is a str"),
    (lambda s: s.pop("batch_rng"), "lacks the field 'batch_rng'"),
    (lambda s: s.__setitem__("perm", s["perm"][:5]), "perm has shape"),
    (lambda s: s["solver"].__setitem__("optim", []), "solver.optim is a list"),
    (lambda s: s["solver"]["optim"]["state"].__setitem__(0, {"momentum_buffer": torch.zeros(2)}), "optim.state"),
    (lambda s: s.__setitem__("rng", torch.zeros(4, dtype=torch.uint8)), "random generator state"),
])
def test_a_checkpoint_with_a_recomputed_checksum_is_checked_against_the_run(tmp_path, change, match):
    state = _partial(tmp_path, "solver.momentum=0.9")
    change(state)
    rf.save_checkpoint(tmp_path / rf.CHECKPOINT, state)
    with pytest.raises(rf.CheckpointError, match=match):
        train(config(*FAST, "train.max_steps=4", "solver.momentum=0.9", "train.checkpoint_every=1"), tmp_path)
    assert rf.read_json(tmp_path / rf.SUMMARY)["status"] == "failed"


def _npz(path: Path, shift: int = 0, **change) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (64, 8, 8), dtype=np.uint8), "y_train": (np.arange(64) + shift) % 10,
              "x_test": rng.integers(0, 255, (16, 8, 8), dtype=np.uint8), "y_test": np.arange(16) % 10, **change}
    np.savez(path, **arrays)
    return path


NPZ = ["dataset=mnist", "dataset.source=npz", "dataset.image_size=8", "dataset.input_dim=64", "dataset.train_subset=null",
       "dataset.test_subset=null"]


def test_a_resume_on_replaced_data_is_refused_naming_the_file(tmp_path):
    data = _npz(tmp_path / "d.npz")
    args = [*FAST, *NPZ, f"dataset.path={data}", "train.max_steps=4", "train.checkpoint_every=1"]
    train(config(*args, "train.stop_after=2"), tmp_path / "run")
    _npz(data, shift=1)
    with pytest.raises(ValueError, match=f"the data at dataset.path={data} are not those this run trained on"):
        train(config(*args), tmp_path / "run")
    _npz(data)  # the original back: the run goes on
    assert train(config(*args), tmp_path / "run")["status"] == "completed"


# --- code from files --------------------------------------------------------------------------------
@pytest.mark.parametrize("override", ["experiment=../../elsewhere/evil", "solver=/etc/passwd", "+experiment=a/b",
                                      "net=..", "hydra/launcher=../x"])
def test_group_choices_are_names_not_paths(tmp_path, monkeypatch, capsys, override):
    assert _cli(tmp_path, monkeypatch, override) == 2
    err = capsys.readouterr().err
    group = override.lstrip("+").split("=")[0]
    assert f"config error: {override.lstrip('+')}: the options of {group} are preset names" in err and "allowed: " in err
    assert list(tmp_path.iterdir()) == []


def test_experimental_rerun_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--experimental-rerun", str(tmp_path / "config.pickle")]) == 2
    assert "--experimental-rerun: it unpickles a file" in capsys.readouterr().err


def test_callbacks_from_a_named_config_dir_are_listed_before_they_run(tmp_path, monkeypatch, capsys):
    extra = tmp_path / "extra" / "experiment"
    extra.mkdir(parents=True)
    (extra / "with_cb.yaml").write_text(
        "# @package _global_\nhydra:\n  callbacks:\n    mine:\n      _target_: curvlab.cli.SweepStatus\n")
    code = _cli(tmp_path, monkeypatch, "--config-dir", str(tmp_path / "extra"), "experiment=with_cb",
                f"run_dir={tmp_path / 'run'}")
    err = capsys.readouterr().err
    assert code == 0
    assert f"Hydra callback mine: curvlab.cli.SweepStatus (declared in {extra / 'with_cb.yaml'})" in err
    assert "sweep_status" not in err  # curvlab's own, from its own configs, is not news


# --- config values and data files that slipped through ---------------------------------------------
@pytest.mark.parametrize("args, match", [
    (["dataset.num_classes=5"], "labels go up to 9 but dataset.num_classes=5"),
    (["+solver.dampening=-1"], r"solver.dampening must be in \[0, 1\]"),
    (["solver=eacg", "solver.split=1000"], "solver.split=1000: more groups than the 32 rows"),
    (["solver=adam", "+solver.betas=[2,0.9]"], r"solver.betas=\(2.0, 0.9\): bad option for torch.optim.Adam \(Invalid beta"),
    (["dataset.test_fraction=0.001"], "dataset.test_fraction=0.001: the digits split fails"),
])
def test_config_values_that_slipped_through_name_their_field(tmp_path, args, match):
    with pytest.raises(ValueError, match=match):
        train(config(*FAST, "train.max_steps=1", *args), tmp_path)


@pytest.mark.parametrize("labels, match", [
    (np.r_[np.inf, np.arange(9.0)], "1 infinite label"), (np.r_[1e20, np.arange(9.0)], "is no class index"),
    (np.r_[np.uint64(2**63), np.arange(9, dtype=np.uint64)], "is no class index"),
])
def test_labels_that_would_wrap_to_negative_int64_are_caught_at_load(labels, match):
    with pytest.raises(DatasetError, match=f"f.npz \\(y_train\\): .*{match}"):
        check_labels(labels, "f.npz (y_train)")


@pytest.mark.parametrize("key, value, match", [
    ("x_train", np.array(3, dtype=np.uint8), r"x_train\): an array of shape \(\)"),
    ("y_train", np.r_[10, np.arange(63) % 10], "labels go up to 10"),
])
def test_bad_npz_arrays_are_caught_at_load_naming_the_file(tmp_path, key, value, match):
    data = _npz(tmp_path / "d.npz", **{key: value})
    if key == "x_train":
        with pytest.raises(DatasetError, match=match):
            load_npz(data)
    with pytest.raises(DatasetError, match=f"{data}.*{match}"):
        train(config(*FAST, *NPZ, f"dataset.path={data}", "train.max_steps=1"), tmp_path / "run")


# --- launchers: a job stops when its launcher dies, whatever process is its parent --------------------
CONTROLLER = """
import subprocess, sys
# like submitit's controller: it outlives the launcher and is the job's parent
job = subprocess.Popen([sys.executable, "-c",
    "import time; from curvlab.safety import exit_with_parent; exit_with_parent(0.05); print('ready', flush=True); "
    "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
assert job.stdout.readline().strip() == "ready"
print(job.pid, flush=True)
job.wait()
"""


def test_a_job_whose_parent_outlives_the_launcher_stops_with_the_launcher(tmp_path):
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    env = {**os.environ, LAUNCHER_ENV: str(launcher.pid)}
    controller = subprocess.Popen([sys.executable, "-c", CONTROLLER], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  text=True, start_new_session=True)
    try:
        job = int(controller.stdout.readline())
        launcher.kill()
        launcher.wait()
        controller.wait(timeout=15)  # returns once the job has exited (143): it stopped with its launcher
        assert job > 0
    finally:
        for p in (launcher, controller):
            if p.poll() is None:
                p.kill()


def _pids_with_env(value: str) -> list[int]:
    """Live processes whose environment names launcher pid ``value`` (``CURVLAB_LAUNCHER_PID=PID@HOST``)."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = [e.split(b"=", 1) for e in environ.read_bytes().split(b"\0") if b"=" in e]
            if any(k == LAUNCHER_ENV.encode() and v.split(b"@")[0] == value.encode() for k, v in env):
                state = (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                pids += [int(environ.parent.name)] if state not in ("Z", "X") else []
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_killing_a_submitit_local_sweep_stops_its_jobs(tmp_path):
    """kill -9 of ``curvlab train -m hydra/launcher=submitit_local``: its job (a child of submitit's
    controller, not of the launcher) stops within seconds (about 60 s in all)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen(
        [sys.executable, "-m", "curvlab.cli", "train", "-m", "hydra/launcher=submitit_local", "seed=0", "solver=sgd",
         "train.epochs=100000", *NO_HESSIAN, *TINY, f"run_dir={tmp_path}", *QUIET],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "0" / rf.METRICS).exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (tmp_path / "0" / rf.METRICS).exists(), "the job never trained"
        assert _pids_with_env(str(sweep.pid)), "no job process carries the launcher's pid"
        sweep.kill()
        sweep.wait()
        deadline = time.monotonic() + 20
        while _pids_with_env(str(sweep.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _pids_with_env(str(sweep.pid))
    finally:
        for pid in _pids_with_env(str(sweep.pid)):
            os.kill(pid, 9)
