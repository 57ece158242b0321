"""The files of one run directory (see ``docs/run_files.md``), all written atomically.

Every writer goes to a temporary file in the same directory and then ``os.replace``-s it
over the target, so a run killed at any moment leaves either the old or the new file,
never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import gzip
import hashlib
import io
import json
import os
import pickle
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch

__all__ = [
    "CONFIG", "METRICS", "HESSIAN_ERRORS", "SUMMARY", "CHECKPOINT", "METRIC_COLUMNS", "HESSIAN_COLUMNS",
    "atomic_write_bytes", "atomic_write_text", "write_csv", "write_json", "read_json",
    "save_checkpoint", "load_checkpoint", "CheckpointError", "RunDirBusy", "lock_run_dir", "remove_stale_temporaries",
    "RUN_FILES", "WRITTEN_FILES", "LOCK", "COMPACT_SUFFIX", "table_path", "compact_text", "float32_text",
    "gzip_text",
]

CONFIG = "config.yaml"
METRICS = "metrics.csv"
HESSIAN_ERRORS = "hessian_errors.csv"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"  # held with an exclusive flock for the life of a run (never deleted: that would race)
COMPACT_SUFFIX = ".gz"  # a compact table: float32-precision CSV, gzip-compressed (``log.compact``)
RUN_FILES = (CONFIG, METRICS, HESSIAN_ERRORS, SUMMARY, CHECKPOINT)
# Every name a run may write (a run writes one form of each table: plain or compact).
WRITTEN_FILES = (*RUN_FILES, METRICS + COMPACT_SUFFIX, HESSIAN_ERRORS + COMPACT_SUFFIX)

# Stable column names: the report reads these. Solver stats are appended after them.
METRIC_COLUMNS = [
    "step", "epoch", "wall_time", "batch_loss", "step_size", "lr", "train_loss", "test_loss", "test_acc",
    "elapsed", "log_time",  # appended later: older files lack them
]
HESSIAN_COLUMNS = ["step", "layer", "kind", "error", "reference", "batch", "mc_samples", "fisher"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; run files are shared like any other file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # a failed write/fsync: say which file
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is set-and-get)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(run_dir: str | Path, names: Iterable[str] = WRITTEN_FILES) -> list[Path]:
    """Delete ``.NAME.*.tmp`` left by writes that were killed, for the run's own file ``names``.

    Call it only while holding the run directory's lock (:func:`lock_run_dir`): another
    run's write in progress would otherwise lose its temporary file.
    """
    removed = []
    for name in names:
        for tmp in Path(run_dir).glob(f".{name}.*.tmp"):
            if tmp.is_dir() and not tmp.is_symlink():  # named like one, but no file of ours: leave it
                continue
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def table_path(run_dir: str | Path, name: str) -> Path | None:
    """The run's table ``name``, plain or compact (``name.gz``), or None when it has neither.

    pandas reads both (``pd.read_csv`` infers the compression from the suffix).
    """
    for candidate in (Path(run_dir) / name, Path(run_dir) / (name + COMPACT_SUFFIX)):
        if candidate.is_file():
            return candidate
    return None


def float32_text(v: float) -> str:
    """The shortest text that reads back as the float32 nearest ``v`` (≤ 9 significant digits)."""
    return str(np.float32(v))


def compact_text(text: str) -> str:
    """A CSV text with every non-integer number cell rewritten by :func:`float32_text`.

    Integer cells (steps, counts) and text cells are kept as they are, so a table read back
    differs from the original only below float32 precision (relative 6e-8).
    """
    rows = csv.reader(io.StringIO(text))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(next(rows, []))
    for row in rows:
        writer.writerow([_compact_cell(c) for c in row])
    return buf.getvalue()


def _compact_cell(cell: str) -> str:
    if not cell or cell.lstrip("-").isdigit():
        return cell
    try:
        return float32_text(float(cell))
    except ValueError:
        return cell


def gzip_text(text: str) -> bytes:
    """Deterministic gzip (no time stamp, no file name): equal tables give equal bytes."""
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def write_csv(
    path: str | Path, rows: Iterable[Mapping[str, Any]], columns: list[str], compact: bool = False
) -> None:
    """Write ``rows`` under ``columns`` first, then any extra keys in first-seen order.

    Missing values are written as empty cells (for example evaluation columns on rows
    without an evaluation). With ``compact`` the table goes to ``path + ".gz"`` at float32
    precision, gzip-compressed (≈ 5× smaller on the record), and a plain ``path`` is removed, so that a
    run directory holds one form of each table.
    """
    rows = list(rows)
    header = list(columns)
    for row in rows:
        header += [k for k in row if k not in header]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else float32_text(v) if compact and isinstance(v, float) else v)
                         for k, v in row.items()})
    path = Path(path)
    if compact:
        atomic_write_bytes(path.with_name(path.name + COMPACT_SUFFIX), gzip_text(buf.getvalue()))
        path.unlink(missing_ok=True)
    else:
        atomic_write_text(path, buf.getvalue())
        path.with_name(path.name + COMPACT_SUFFIX).unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


STUDY = "study.json"
STUDY_DATA = "data.csv"


def write_study(out: str | Path, rows: Iterable[Mapping[str, Any]], meta: Mapping[str, Any]) -> Path:
    """Write a study (``docs/run_files.md``): tidy ``data.csv`` and ``study.json`` naming it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / STUDY_DATA, rows, [])
    write_json(out / STUDY, {**meta, "data": STUDY_DATA})
    return out / STUDY_DATA


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: unreadable, truncated, tampered with or corrupted."""


class RunDirBusy(RuntimeError):
    """Another process holds the run directory's lock."""


_CHECKSUM = "sha256"


def _digest(obj: Any, h: Any) -> None:
    """Feed a checkpoint's content into hash ``h``: keys, types, shapes and every tensor's bytes."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _digest(v, h)
    else:  # None, bool, int, float, str: the types weights_only=True loads
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def checksum(state: Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint's content (not of the file: it survives ``torch.save``'s framing)."""
    h = hashlib.sha256()
    _digest({k: v for k, v in state.items() if k != _CHECKSUM}, h)
    return h.hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` into memory with the content's checksum inside, then write atomically.

    ``state`` must hold only tensors and plain Python values (what ``weights_only=True`` loads).
    """
    buf = io.BytesIO()
    torch.save({**state, _CHECKSUM: checksum(state)}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without running code (``weights_only=True``) and verify its checksum.

    Raises:
        CheckpointError: unreadable, truncated, holding other objects than tensors and plain
            values, or with a checksum that does not match its content; the message names the
            fix (``resume=false``).
    """
    path = Path(path)
    fix = f"start this run over with resume=false (or move {path.name} away)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refuses objects that would run code
        # torch's own message suggests weights_only=False, which is exactly what must not happen here
        what = next((line.strip().rstrip(".") for line in str(err).splitlines() if "unsupported" in line.lower()), "")
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain values ({what or 'refused by weights_only=True'}) "
            f"and was not loaded: loading it could run code; {fix}"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        raise CheckpointError(f"{path} is unreadable or truncated ({type(err).__name__}: {err}); {fix}") from err
    if not isinstance(state, dict) or _CHECKSUM not in state:
        raise CheckpointError(f"{path} has no {_CHECKSUM} checksum (not written by this curvlab); {fix}")
    stored = state.pop(_CHECKSUM)
    if stored != checksum(state):
        raise CheckpointError(f"{path} is corrupted: its content does not match its {_CHECKSUM} checksum; {fix}")
    return state


@contextlib.contextmanager
def lock_run_dir(run_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive OS lock (``flock``) on ``run_dir/.lock`` for the duration of the block.

    The kernel releases it when the process dies, however it dies, so a killed run never
    leaves a stale lock. Re-entrant within one process (the CLI and :func:`curvlab.train.train`
    both take it).

    Raises:
        RunDirBusy: another process holds the lock.
    """
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(run_dir / LOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        fd = -1
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            holder = Path(run_dir / LOCK).read_text().strip() or "another process"
            raise RunDirBusy(
                f"run_dir {run_dir} is in use by another run ({holder}); wait for it to finish, or pass another "
                "run_dir (with Hydra's default run_dir=null every run gets its own directory)"
            ) from None
        # a file system without locks (ENOLCK, EOPNOTSUPP): run, but say that nothing guards the directory
        warnings.warn(f"run_dir {run_dir}: cannot lock {LOCK} ({err.strerror}); running without the lock")
    if fd >= 0:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        if fd >= 0:
            os.close(fd)  # releases the flock


_HELD: dict[str, list[int]] = {}  # resolved run_dir -> [lock fd, depth]


def _open_lock(path: Path) -> int:
    """Open (create) the lock file without following a link or blocking on a FIFO; it must be a plain file.

    Raises:
        RunDirError: ``path`` is a link, a directory, a FIFO or another special file.
    """
    from curvlab.rundirs import RunDirError

    fix = f"remove {path} (a run makes its own), or pass another run_dir"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EISDIR):
            kind = "a symbolic link" if err.errno == errno.ELOOP else "a directory"
            raise RunDirError(f"{path} is {kind}, not the run's lock file; {fix}") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(f"{path} is a FIFO or other special file, not the run's lock file; {fix}")
    return fd
