"""Read run directories (the contract of ``docs/run_files.md``) into tidy pandas frames.

The report reads only what runs and studies wrote: ``summary.json``, ``config.yaml``,
``metrics.csv``, ``hessian_errors.csv`` of training runs, and ``study.json`` + its CSV
of the studies in ``scripts/study_*.py``. Nothing is recomputed, so rerunning is cheap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import yaml

__all__ = ["IDENTITY", "Runs", "Study", "find_runs", "find_studies", "load_runs", "load_study"]

from curvlab.report.groups import method_label

# The run's identity, as summary.json states it (docs/run_files.md).
IDENTITY = ["experiment", "dataset", "loss", "curvature", "solver", "seed"]


@dataclass
class Runs:
    """All runs found under some roots.

    Attributes:
        runs: one row per run: ``run_dir`` (absolute), ``run`` (its path from the folder above
            the root it was found under: the same on every machine), ``label`` (the method),
            identity, summary fields and the flattened config (``cfg.<dotted key>``).
        metrics: ``metrics.csv`` rows of every run, with ``run_dir``, ``label`` and identity.
        errors: ``hessian_errors.csv`` rows of every run, with ``run_dir`` and identity.
    """

    runs: pd.DataFrame
    metrics: pd.DataFrame
    errors: pd.DataFrame

    def experiments(self) -> list[str]:
        return sorted(self.runs["experiment"].dropna().astype(str).unique()) if len(self.runs) else []

    def select(self, experiment: str) -> "Runs":
        """The runs of one experiment."""
        keep = lambda df: df[df["experiment"].astype(str) == experiment].reset_index(drop=True)  # noqa: E731
        return Runs(keep(self.runs), keep(self.metrics), keep(self.errors))


@dataclass
class Study:
    """One study output: ``study.json`` (name, parameters, machine) and its tidy ``data.csv``."""

    path: Path
    meta: dict[str, Any]
    data: pd.DataFrame = field(repr=False)

    @property
    def name(self) -> str:
        return str(self.meta.get("study", self.path.name))


def find_runs(roots: Iterable[str | Path]) -> list[Path]:
    """Every directory under ``roots`` (recursively, roots included) that holds a ``summary.json``."""
    return sorted(_named_runs(roots))


def _named_runs(roots: Iterable[str | Path]) -> dict[Path, str]:
    """Run directory → its path relative to the parent of the first root it lies under."""
    found: dict[Path, str] = {}
    for root in map(Path, roots):
        if not root.exists():
            raise ValueError(f"runs directory {str(root)!r} does not exist; pass folders that hold run directories")
        base = root.resolve().parent
        for p in sorted(root.resolve().rglob("summary.json")):
            found.setdefault(p.parent, p.parent.relative_to(base).as_posix())
    return found


def find_studies(roots: Iterable[str | Path]) -> list[Path]:
    """Every directory under ``roots`` that holds a ``study.json``."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if root.exists():
            found.update(p.parent.resolve() for p in root.rglob("study.json"))
    return sorted(found)


def _flatten(d: Any, prefix: str = "cfg") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"cfg.a.b": 1}``; lists become strings so frames stay flat."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    return {prefix: str(d) if isinstance(d, list) else d}


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None


def load_runs(roots: Iterable[str | Path], completed_only: bool = False) -> Runs:
    """Read every run under ``roots`` into :class:`Runs`.

    Args:
        roots: folders that are run directories or contain them (any depth).
        completed_only: drop runs whose ``summary.json`` status is not ``completed``.
    """
    rows, metrics, errors = [], [], []
    for run_dir, name in sorted(_named_runs(roots).items()):
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{run_dir / 'summary.json'}: not valid JSON ({e}); move the run away or rerun it") from e
        if completed_only and summary.get("status") != "completed":
            continue
        cfg_path = run_dir / "config.yaml"
        cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
        row = {"run_dir": str(run_dir), "run": name, **{k: summary.get(k) for k in IDENTITY}}
        row.update({k: v for k, v in summary.items() if k not in row})
        row.update(_flatten(cfg or {}))
        row["label"] = method_label(row)
        rows.append(row)
        ident = {k: row[k] for k in ["run_dir", "label", *IDENTITY]}
        for file, sink in (("metrics.csv", metrics), ("hessian_errors.csv", errors)):
            df = _read_csv(run_dir / file)
            if df is not None and len(df):
                sink.append(df.assign(**ident))
    runs = pd.DataFrame(rows, columns=None if rows else ["run_dir", "run", "label", *IDENTITY])
    cat = lambda parts, cols: pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)  # noqa: E731
    return Runs(
        runs,
        cat(metrics, ["run_dir", "label", *IDENTITY, "step", "epoch", "wall_time"]),
        cat(errors, ["run_dir", "label", *IDENTITY, "step", "layer", "kind", "error"]),
    )


def load_study(path: str | Path) -> Study:
    """Read one study folder (``study.json`` + the CSV it names, ``data.csv`` by default)."""
    path = Path(path)
    meta = json.loads((path / "study.json").read_text())
    data = _read_csv(path / meta.get("data", "data.csv"))
    if data is None:
        raise ValueError(f"study {str(path)!r}: its data file is missing or empty; rerun the study script")
    return Study(path, meta, data)
