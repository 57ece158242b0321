"""Experiment loggers beside the run files (``logger=csv|tensorboard|mlflow|many``).

``csv`` is the run directory of ``docs/run_files.md`` (``metrics.csv``, ``hessian_errors.csv``,
``summary.json``) and is always written. ``tensorboard`` adds event files under
``<run_dir>/<logger.tensorboard_dir>``: every ``metrics.csv`` column as a scalar
``metrics/<column>`` at its ``step``, each layer-wise Hessian error as
``hessian_error/<kind>/layer<t>`` (plus ``/batch<b>``, ``/mc<k>``, ``/<fisher>`` when the run
logs several), and the run's config as hparams with the final losses and accuracy. ``mlflow`` logs the same
values as metrics (same names), the flattened config as params and the run files as
artifacts, to a local sqlite store (``logger.mlflow_uri``, default ``mlruns/mlflow.db``), one MLflow
run per run directory (tag ``curvlab.run_dir``) in the MLflow experiment ``experiment_name``.
The extra loggers are optional packages (``pip install 'curvlab[tensorboard]'``,
``'curvlab[mlflow]'``); a config that asks for a missing one stops before training with that command.

A logger sees the rows each time the run writes its files. A resumed session rewrites
the logger's record from the checkpoint's rows, so that it never holds rows the CSVs lost.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Sequence

from curvlab.curvature.options import parse_enum

__all__ = ["LoggerKind", "LoggerConfig", "RunLoggers", "hessian_tag", "flat_hparams"]


class LoggerKind(str, Enum):
    CSV = "csv"  # the run files: always written
    TENSORBOARD = "tensorboard"
    MLFLOW = "mlflow"


_PACKAGES = {LoggerKind.TENSORBOARD: "tensorboard", LoggerKind.MLFLOW: "mlflow"}  # the import each one needs


@dataclass
class LoggerConfig:
    """``logger.*``: which loggers run beside the CSV files, and where they write."""

    kinds: list[LoggerKind] = field(default_factory=lambda: [LoggerKind.CSV])
    tensorboard_dir: str = "tensorboard"  # under the run directory
    mlflow_uri: str = "sqlite:///mlruns/mlflow.db"  # an MLflow tracking URI (sqlite: relative to the working directory)

    def __post_init__(self) -> None:
        self.kinds = [parse_enum(LoggerKind, k, "logger.kinds") for k in self.kinds]
        if LoggerKind.CSV not in self.kinds:
            raise ValueError(f"logger.kinds must include csv (the run files are always written), got "
                             f"{[k.value for k in self.kinds]}")
        for kind in self.kinds:
            package = _PACKAGES.get(kind)
            if package and importlib.util.find_spec(package) is None:
                raise ValueError(f"logger {kind.value} needs the {package} package, which is not installed: "
                                 f"pip install 'curvlab[{kind.value}]' (or drop logger={kind.value})")
        if not isinstance(self.mlflow_uri, str) or not self.mlflow_uri:
            raise ValueError(f"logger.mlflow_uri must be an MLflow tracking URI such as sqlite:///mlruns/mlflow.db, "
                             f"got {self.mlflow_uri!r}")
        name = Path(self.tensorboard_dir)
        if not self.tensorboard_dir or name.is_absolute() or ".." in name.parts:
            raise ValueError(f"logger.tensorboard_dir must be a folder name inside the run directory, "
                             f"got {self.tensorboard_dir!r}")


_QUALIFIERS = {"batch": "batch", "mc_samples": "mc", "fisher": ""}  # hessian_errors.csv column -> tag prefix


def hessian_tag(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """The TensorBoard tag of one ``hessian_errors.csv`` row, e.g. ``hessian_error/pch1/layer2``; the
    batch size, MC sample count and Fisher type are added when they vary among ``rows`` of that kind."""
    same_kind = [r for r in rows if r["kind"] == row["kind"]]
    parts = [str(row["kind"]), f"layer{row['layer']}"]
    for col, label in _QUALIFIERS.items():
        if len({r.get(col) for r in same_kind}) > 1 and row.get(col) not in (None, ""):
            parts.append(f"{label}{row[col]}")
    return "hessian_error/" + "/".join(parts)


def flat_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config as TensorBoard hparams: dotted keys, values as bool/int/float/str (lists as text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            out[f"{prefix}{key}"] = value
        else:  # None, lists
            out[f"{prefix}{key}"] = str(value)
    return out


class _TensorBoard:
    """Scalars and hparams through ``torch.utils.tensorboard`` (TensorBoard's own event format)."""

    def __init__(self, log_dir: Path, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        shutil.rmtree(log_dir, ignore_errors=True)  # a resumed session writes the record anew (module docstring)
        self.writer = SummaryWriter(str(log_dir))
        self.config = flat_hparams(config)
        self.done = (0, 0)  # metrics rows, Hessian rows logged so far

    def log(self, metrics: Sequence[Mapping[str, Any]], hessian: Sequence[Mapping[str, Any]]) -> None:
        for name, value, step in _scalar_rows(metrics, hessian, self.done):
            self.writer.add_scalar(name, value, step)
        self.done = (len(metrics), len(hessian))
        self.writer.flush()

    def finish(self, summary: Mapping[str, Any]) -> None:
        final = {f"final/{k}": float(summary[k]) for k in ("train_loss", "test_loss", "test_acc")
                 if isinstance(summary.get(k), (int, float)) and math.isfinite(summary[k])}
        self.writer.add_hparams({**self.config, "status": str(summary.get("status"))}, final, run_name=".")
        self.writer.close()


def _scalar_rows(metrics: Sequence[Mapping[str, Any]], hessian: Sequence[Mapping[str, Any]],
                 done: tuple[int, int]) -> list[tuple[str, float, int]]:
    """(name, value, step) of the rows after ``done`` = (metrics rows, Hessian rows) already logged."""
    out = [(f"metrics/{key}", float(value), int(row["step"])) for row in metrics[done[0]:] for key, value in row.items()
           if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)]
    out += [(hessian_tag(row, hessian), float(row["error"]), int(row["step"])) for row in hessian[done[1]:]]
    return out


class _MLflow:
    """Params, metrics and the run files as artifacts in an MLflow tracking store (sqlite by default)."""

    def __init__(self, uri: str, run_dir: Path, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if uri.startswith("sqlite:///"):  # the store's folder must exist; the artifacts go beside it
            Path(uri[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.client, self.run_dir = MlflowClient(tracking_uri=uri), run_dir
        name = str(config.get("experiment_name") or "curvlab")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:  # a sqlite store keeps the artifacts beside it; a server decides itself
            sqlite = Path(uri[len("sqlite:///"):]).expanduser() if uri.startswith("sqlite:///") else None
            location = (sqlite.parent / "artifacts" / name).resolve().as_uri() if sqlite else None
            exp_id = self.client.create_experiment(name, artifact_location=location)
        else:
            exp_id = experiment.experiment_id
        tag = str(run_dir.resolve())
        old = self.client.search_runs([exp_id], filter_string=f"tags.`curvlab.run_dir` = '{tag}'") if "'" not in tag else []
        for previous in old:
            self.client.delete_run(previous.info.run_id)  # a resumed session writes the record anew (module docstring)
        self.run_id = self.client.create_run(exp_id, run_name=run_dir.name, tags={"curvlab.run_dir": tag}).info.run_id
        params = [Param(k, str(v)) for k, v in flat_hparams(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.done = (0, 0)

    def log(self, metrics: Sequence[Mapping[str, Any]], hessian: Sequence[Mapping[str, Any]]) -> None:
        from mlflow.entities import Metric

        rows = [Metric(name, value, 0, step) for name, value, step in _scalar_rows(metrics, hessian, self.done)]
        for i in range(0, len(rows), 1000):  # and at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=rows[i:i + 1000])
        self.done = (len(metrics), len(hessian))

    def finish(self, summary: Mapping[str, Any]) -> None:
        for name in sorted(p.name for p in self.run_dir.iterdir() if p.is_file() and p.suffix in (".csv", ".json",
                                                                                                   ".yaml", ".gz")):
            self.client.log_artifact(self.run_id, str(self.run_dir / name))
        status = "FINISHED" if summary.get("status") == "completed" else "FAILED"
        self.client.set_terminated(self.run_id, status)


class RunLoggers:
    """The extra loggers of one run session (the CSV files are :mod:`curvlab.train`'s own)."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: Mapping[str, Any]) -> None:
        makers = {
            LoggerKind.TENSORBOARD: (lambda: _TensorBoard(run_dir / cfg.tensorboard_dir, config), "logger.tensorboard_dir"),
            LoggerKind.MLFLOW: (lambda: _MLflow(cfg.mlflow_uri, run_dir, config), "logger.mlflow_uri"),
        }
        self.loggers: list[Any] = []
        for kind in (k for k in cfg.kinds if k in makers):
            make, field_name = makers[kind]
            try:
                self.loggers.append(make())
            except Exception as err:  # an unreachable store, a read-only folder: stop before training
                reason = str(err).splitlines()[0] if str(err) else ""
                raise ValueError(f"logger {kind.value} cannot start ({type(err).__name__}: {reason}); fix "
                                 f"{field_name} or drop logger={kind.value}") from None

    def log(self, metrics: Sequence[Mapping[str, Any]], hessian: Sequence[Mapping[str, Any]],
            summary: Mapping[str, Any]) -> None:
        """New rows since the last call; a final ``summary`` (not ``running``) also closes the loggers."""
        for logger in self.loggers:
            logger.log(metrics, hessian)
            if summary.get("status") != "running":
                logger.finish(summary)
        if summary.get("status") != "running":
            self.loggers = []
