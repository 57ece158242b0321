"""Read run directories (the contract of ``docs/run_files.md``) into tidy pandas frames.

The report reads only what runs and studies wrote: ``summary.json``, ``config.yaml``,
``metrics.csv``, ``hessian_errors.csv`` of training runs, and ``study.json`` + its CSV
of the studies in ``scripts/study_*.py``. Nothing is recomputed, so rerunning is cheap.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

__all__ = ["IDENTITY", "Runs", "Study", "find_runs", "find_studies", "load_runs", "load_study", "say_skipped"]

from curvlab.report.files import BadFile, load_json, load_yaml, read_csv, safe_name
from curvlab.report.groups import method_label
from curvlab.runfiles import table_path

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


# What the report takes from a run's files, and the type each must have (a bad one skips the run).
_SUMMARY_TEXT = ("dataset", "loss", "curvature", "solver", "status")
_SUMMARY_NUMBERS = ("steps", "epochs", "wall_time", "elapsed", "log_time", "train_loss", "test_loss", "test_acc")
_CONFIG_TEXT = ("cfg.solver.name", "cfg.solver.base", "cfg.solver.curvature", "cfg.curvature.kind",
                "cfg.dataset.name", "cfg.loss.name", "cfg.net.activation")
_METRIC_NUMBERS = ("epoch", "wall_time", "batch_loss", "step_size", "lr", "train_loss", "test_loss", "test_acc",
                   "elapsed", "log_time", "cg_iters", "cg_iters_mean")
_ERROR_NUMBERS = ("error", "reference", "batch", "mc_samples")


def _typed(s: dict[str, Any], key: str, ok: bool, what: str, path: Path) -> None:
    if s.get(key) is not None and not ok:
        raise BadFile(path, f"{key!r} is {type(s[key]).__name__} {str(s[key])[:40]!r}; expected {what}")


def _check_summary(s: dict[str, Any], path: Path) -> None:
    """The summary fields the report groups and computes by have their documented types (docs/run_files.md)."""
    exp = s.get("experiment")
    if not isinstance(exp, str) or not exp.strip():
        raise BadFile(path, f"'experiment' is {exp!r}; expected the experiment's name")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    for k in _SUMMARY_TEXT:
        _typed(s, k, isinstance(s.get(k), str), "text", path)
    for k in _SUMMARY_NUMBERS:
        _typed(s, k, number(s.get(k)), "a number", path)
    _typed(s, "seed", isinstance(s.get("seed"), int) and not isinstance(s.get("seed"), bool), "an integer", path)


def _check_columns(df: pd.DataFrame, path: Path, need: tuple[str, ...], integers: tuple[str, ...],
                   numbers: tuple[str, ...]) -> pd.DataFrame:
    """``df`` unless a needed column is missing or a column the report computes with holds non-numbers."""
    missing = [c for c in need if c not in df]
    if missing:
        raise BadFile(path, f"no column {', '.join(map(repr, missing))}; its header is {', '.join(df.columns)[:120]}")
    for c in (*integers, *numbers):
        if c not in df:
            continue
        v = pd.to_numeric(df[c], errors="coerce")
        bad = (v.isna() & df[c].notna()) | ((v.isna() | (v.fillna(0) % 1 != 0)) if c in integers else False)
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise BadFile(path, f"column {c!r} row {i + 1} is {str(df[c].iloc[i])[:40]!r}; expected "
                          + ("an integer" if c in integers else "a number"))
    return df


def say_skipped(err: BadFile) -> None:
    """The one line the report prints for a run or study it leaves out."""
    print(f"curvlab report: skipped {err}", file=sys.stderr, flush=True)


def _read_run(run_dir: Path, name: str) -> tuple[dict[str, Any], list[pd.DataFrame | None]]:
    """A run's row (summary, flattened config, label) and its metrics and errors; BadFile if a file is bad."""
    summary = load_json(run_dir / "summary.json")
    _check_summary(summary, run_dir / "summary.json")
    cfg_path = run_dir / "config.yaml"
    cfg = load_yaml(cfg_path) if cfg_path.exists() or cfg_path.is_symlink() else {}
    row = {"run_dir": str(run_dir), "run": name, **{k: summary.get(k) for k in IDENTITY}}
    row.update({k: v for k, v in summary.items() if k not in row})
    for k in _CONFIG_TEXT:  # before lists are flattened into text
        node: Any = cfg
        for part in k.split(".")[1:]:
            node = node.get(part) if isinstance(node, dict) else None
        _typed({k[4:]: node}, k[4:], isinstance(node, str), "a name", cfg_path)
    row.update(_flatten(cfg))
    try:
        row["label"] = method_label(row)
    except (TypeError, ValueError) as e:
        raise BadFile(cfg_path, f"a solver option has the wrong type ({e})") from None
    frames = []
    for file, need, integers, numbers in (("metrics.csv", ("step",), ("step",), _METRIC_NUMBERS),
                                          ("hessian_errors.csv", ("step", "layer", "kind", "error"),
                                           ("step", "layer"), _ERROR_NUMBERS)):
        found = table_path(run_dir, file) or run_dir / file  # plain or compact (file + ".gz")
        df = read_csv(found)
        frames.append(None if df is None or not len(df) else
                      at_float32(_check_columns(df, found, need, integers, numbers)))
    return row, frames


def at_float32(df: pd.DataFrame) -> pd.DataFrame:
    """The table's float columns rounded to float32 precision (in float64).

    The runs train in float32, so no logged quantity has more precision than that; rounding here
    makes a plain table and its compact form (``log.compact``: float32 text) render identically.
    """
    floats = [c for c in df.columns if pd.api.types.is_float_dtype(df[c])]
    if floats:
        df[floats] = df[floats].astype(np.float32).astype(np.float64)
    return df


def load_runs(roots: Iterable[str | Path], completed_only: bool = False,
              on_skip: Callable[[BadFile], None] | None = say_skipped) -> Runs:
    """Read every run under ``roots`` into :class:`Runs`.

    A run with a file the report cannot use (unreadable, beyond the bounds of
    :mod:`curvlab.report.files`, or of wrong types) is left out and reported to ``on_skip``
    (default: one line on stderr naming the file and the reason); the other runs still load.

    Args:
        roots: folders that are run directories or contain them (any depth).
        completed_only: drop runs whose ``summary.json`` status is not ``completed``.
        on_skip: called with each bad run's :class:`BadFile`; None raises it instead.
    """
    rows, metrics, errors = [], [], []
    for run_dir, name in sorted(_named_runs(roots).items()):
        try:
            row, frames = _read_run(run_dir, name)
        except BadFile as e:
            if on_skip is None:
                raise
            on_skip(e)
            continue
        if completed_only and row.get("status") != "completed":
            continue
        rows.append(row)
        ident = {k: row[k] for k in ["run_dir", "label", *IDENTITY]}
        for df, sink in zip(frames, (metrics, errors)):
            if df is not None:
                sink.append(df.assign(**ident))
    runs = pd.DataFrame(rows, columns=None if rows else ["run_dir", "run", "label", *IDENTITY])
    cat = lambda parts, cols: pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)  # noqa: E731
    errs = cat(errors, ["run_dir", "label", *IDENTITY, "step", "layer", "kind", "error"])
    if "block" in errs:  # conv weight-block rows (``hessian_log``): the tables and figures are of bias blocks
        errs = errs[errs["block"].isna()].drop(columns="block")
    return Runs(runs, cat(metrics, ["run_dir", "label", *IDENTITY, "step", "epoch", "wall_time"]), errs)


def load_study(path: str | Path) -> Study:
    """Read one study folder (``study.json`` + the CSV it names, ``data.csv`` by default)."""
    path = Path(path)
    meta = load_json(path / "study.json")
    data_name = meta.get("data", "data.csv")
    if not isinstance(data_name, str) or safe_name(data_name) != data_name:
        raise BadFile(path / "study.json", f"'data' is {str(data_name)[:60]!r}; expected a file name in the study "
                      "folder")
    for k in ("study", "name"):
        if k in meta and (not isinstance(meta[k], str) or not meta[k]):
            raise BadFile(path / "study.json", f"{k!r} is {str(meta[k])[:40]!r}; expected a name")
    data = read_csv(path / data_name)
    if data is None:
        raise BadFile(path / data_name, "missing or empty; rerun the study script")
    return Study(path, meta, data)
