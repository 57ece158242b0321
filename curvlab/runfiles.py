"""The files of one run directory (see ``docs/run_files.md``), all written atomically.

Every writer goes to a temporary file in the same directory and then ``os.replace``-s it
over the target, so a run killed at any moment leaves either the old or the new file,
never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

__all__ = [
    "CONFIG", "METRICS", "HESSIAN_ERRORS", "SUMMARY", "CHECKPOINT", "METRIC_COLUMNS", "HESSIAN_COLUMNS",
    "atomic_write_bytes", "atomic_write_text", "write_csv", "write_json", "read_json",
    "save_checkpoint", "load_checkpoint",
]

CONFIG = "config.yaml"
METRICS = "metrics.csv"
HESSIAN_ERRORS = "hessian_errors.csv"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"

# Stable column names: the report reads these. Solver stats are appended after them.
METRIC_COLUMNS = ["step", "epoch", "wall_time", "batch_loss", "step_size", "lr", "train_loss", "test_loss", "test_acc"]
HESSIAN_COLUMNS = ["step", "layer", "kind", "error", "reference", "batch", "mc_samples"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: list[str]) -> None:
    """Write ``rows`` under ``columns`` first, then any extra keys in first-seen order.

    Missing values are written as empty cells (for example evaluation columns on rows
    without an evaluation).
    """
    rows = list(rows)
    header = list(columns)
    for row in rows:
        header += [k for k in row if k not in header]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` into memory, then write atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    # weights_only=False: the checkpoint holds RNG states and plain Python rows we wrote ourselves.
    return torch.load(Path(path), map_location="cpu", weights_only=False)
