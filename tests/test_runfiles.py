"""Run files under faults: safe and verified checkpoints, the lock, stale temporaries, umask, full disks."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch

from curvlab import runfiles as rf
from curvlab.train import TrainingFailed, train
from test_train import NO_HESSIAN, TINY, config

SOLVER_CONFIGS = ["sgd", "adagrad", "adadelta", "adam", "kfi", "eacg", "cr", "exact_inverse"]


def _run(tmp_path: Path, *overrides: str) -> Path:
    train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=2", *overrides), tmp_path)
    return tmp_path / rf.CHECKPOINT


@pytest.mark.parametrize("solver", SOLVER_CONFIGS)
def test_every_solver_checkpoint_loads_with_weights_only(tmp_path, solver):
    """What a run stores (solver state, RNG states, rows) is tensors and plain values only."""
    ckpt = _run(tmp_path, f"solver={solver}", "train.max_steps=1")
    raw = torch.load(ckpt, weights_only=True)  # raises on anything that would need pickle's code paths
    assert raw["sha256"] == rf.checksum({k: v for k, v in raw.items() if k != "sha256"})
    state = rf.load_checkpoint(ckpt)
    assert state["step"] == 1 and isinstance(state["rng"], torch.Tensor)


class _RunsCode:
    """A pickled object that calls a function on load (what a hostile checkpoint holds)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_code_is_refused_and_never_run(tmp_path):
    ckpt = _run(tmp_path / "run")
    marker = tmp_path / "pwned"
    torch.save({"net": _RunsCode(marker)}, ckpt)
    with pytest.raises(rf.CheckpointError, match="other than tensors.*resume=false") as err:
        _run(tmp_path / "run")
    assert not marker.exists() and "will likely succeed" not in str(err.value)  # torch's advice is not passed on


def test_flipped_byte_in_a_weight_is_detected(tmp_path):
    ckpt = _run(tmp_path)
    weight = torch.load(ckpt, weights_only=True)["net"]["layers.0.weight"]
    data = bytearray(ckpt.read_bytes())
    at = data.find(weight.numpy().tobytes()[:64])
    assert at > 0
    data[at + 5] ^= 0x10
    ckpt.write_bytes(bytes(data))
    assert not torch.equal(torch.load(ckpt, weights_only=True)["net"]["layers.0.weight"], weight)
    with pytest.raises(rf.CheckpointError, match="corrupted.*resume=false"):
        _run(tmp_path)
    summary = rf.read_json(tmp_path / rf.SUMMARY)  # what a sweep lists: the reason, the run's identity kept
    assert summary["status"] == "failed" and "corrupted" in summary["failure"] and summary["solver"] == "sgd"
    assert _run(tmp_path, "resume=false").exists()  # the fix the message names works


def test_truncated_missing_checksum_and_garbage_are_refused(tmp_path):
    ckpt = _run(tmp_path)
    full = ckpt.read_bytes()
    cases = {
        "truncated": lambda: ckpt.write_bytes(full[: len(full) // 2]),
        "empty": lambda: ckpt.write_bytes(b""),
        "garbage": lambda: ckpt.write_bytes(b"not a checkpoint" * 10),
        "no checksum": lambda: torch.save({"step": 1}, ckpt),
    }
    for name, corrupt in cases.items():
        corrupt()
        with pytest.raises(rf.CheckpointError, match="resume=false") as err:
            rf.load_checkpoint(ckpt)
        assert str(ckpt) in str(err.value), name


def test_lock_is_exclusive_reentrant_and_named(tmp_path):
    with rf.lock_run_dir(tmp_path):
        with rf.lock_run_dir(tmp_path):  # the CLI and train() both take it in one process
            pass
        # a second open file description conflicts like another process would
        with open(tmp_path / rf.LOCK) as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / rf.LOCK) as f:  # released at the end of the block
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(rf.RunDirBusy, match=f"run_dir {tmp_path} is in use"):
            with rf.lock_run_dir(tmp_path):
                pass


def test_stale_temporaries_of_the_run_files_are_removed_on_start(tmp_path):
    stale = [tmp_path / f".{name}.k1ll3d.tmp" for name in rf.RUN_FILES]
    other = tmp_path / ".notes.txt.abc.tmp"  # not a run file: left alone
    for path in [*stale, other]:
        path.write_text("half")
    _run(tmp_path)
    assert not any(p.exists() for p in stale) and other.exists()


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_run_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        rf.atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o666 & ~mask


def _fail_writes(monkeypatch, names: set[str], after: int) -> None:
    """Writes of files in ``names`` raise ENOSPC once ``after`` writes have gone through."""
    real, calls = rf.atomic_write_bytes, [0]

    def write(path, data):
        calls[0] += 1
        if calls[0] > after and Path(path).name in names:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(rf, "atomic_write_bytes", write)


def test_disk_full_marks_the_run_failed_when_the_summary_fits(tmp_path, monkeypatch):
    _fail_writes(monkeypatch, {rf.CHECKPOINT, rf.METRICS, rf.HESSIAN_ERRORS}, after=6)
    with pytest.raises(TrainingFailed, match="No space left on device.*resume"):
        train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.checkpoint_every=1"), tmp_path)
    summary = rf.read_json(tmp_path / rf.SUMMARY)
    assert summary["status"] == "failed" and "No space left on device" in summary["failure"]
    assert summary["steps"] >= 1 and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.undo()  # space again: the same command resumes from the last good checkpoint
    done = train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.checkpoint_every=1"), tmp_path)
    assert done["status"] == "completed" and pd.read_csv(tmp_path / rf.METRICS)["step"].tolist() == list(range(5))


def test_disk_full_everywhere_still_raises_a_clear_error(tmp_path, monkeypatch):
    _fail_writes(monkeypatch, set(rf.RUN_FILES), after=6)
    with pytest.raises(TrainingFailed, match="summary.json could not be written either"):
        train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.checkpoint_every=1"), tmp_path)
    assert rf.read_json(tmp_path / rf.SUMMARY)["status"] == "running"  # the last summary that fitted
