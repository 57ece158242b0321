"""``logger=tensorboard``: what TensorBoard's own reader finds in the event files equals the CSV files."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from curvlab import runfiles as rf
from curvlab.loggers import LoggerConfig, hessian_tag
from curvlab.train import train
from test_train import TINY, config

RUN = [*TINY, "train.epochs=2", "train.eval_every=3", "log.hessian_every=2", "log.hessian_first=1",
       "log.hessian_fisher_mc=[1,4]"]


def read_events(log_dir):
    pytest.importorskip("tensorboard", reason="logger=tensorboard needs the optional tensorboard package")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return acc


def scalars(acc, tag) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def assert_events_equal_csv(run_dir) -> None:
    acc = read_events(run_dir / "tensorboard")
    metrics = pd.read_csv(run_dir / rf.METRICS)
    for column in metrics.columns.drop("step"):
        rows = metrics[["step", column]].dropna()
        expected = list(zip(rows["step"].astype(int), rows[column].astype(np.float32)))
        got = scalars(acc, f"metrics/{column}")
        assert [s for s, _ in got] == [s for s, _ in expected], column
        np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=1e-6, err_msg=column)
    table = pd.read_csv(run_dir / rf.HESSIAN_ERRORS, dtype={"batch": "Int64", "mc_samples": "Int64"})
    hessian = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in table.to_dict("records")]
    tags = {hessian_tag(r, hessian) for r in hessian}
    assert len(hessian) > 20 and {t for t in acc.Tags()["scalars"] if t.startswith("hessian_error/")} == tags
    for tag in tags:
        expected = [(int(r["step"]), np.float32(r["error"])) for r in hessian if hessian_tag(r, hessian) == tag]
        assert [s for s, _ in scalars(acc, tag)] == [s for s, _ in expected], tag
        np.testing.assert_allclose([v for _, v in scalars(acc, tag)], [v for _, v in expected], rtol=1e-6)


def test_tensorboard_scalars_equal_metrics_and_hessian_csv(tmp_path):
    pytest.importorskip("tensorboard", reason="logger=tensorboard needs the optional tensorboard package")
    summary = train(config(*RUN, "logger=tensorboard"), tmp_path)
    assert summary["status"] == "completed"
    assert_events_equal_csv(tmp_path)
    acc = read_events(tmp_path / "tensorboard")
    # Two MC sample counts of the Fisher: its tags say which; the other kinds' stay plain.
    assert {"hessian_error/fisher/layer1/mc1", "hessian_error/fisher/layer1/mc4",
            "hessian_error/pch1/layer1"} <= set(acc.Tags()["scalars"])
    assert scalars(acc, "final/test_acc")[0][1] == pytest.approx(summary["test_acc"], rel=1e-6)


def test_tensorboard_hparams_hold_the_run_config(tmp_path):
    pytest.importorskip("tensorboard", reason="logger=tensorboard needs the optional tensorboard package")
    from tensorboard.plugins.hparams import plugin_data_pb2

    train(config(*TINY, "solver=sgd", "solver.lr=0.05", "train.max_steps=2", "logger=tensorboard",
                 "log.hessian_every=0", "log.hessian_first=0"), tmp_path)
    acc = read_events(tmp_path / "tensorboard")
    content = acc.PluginTagToContent("hparams")
    start = next(plugin_data_pb2.HParamsPluginData.FromString(c).session_start_info for c in content.values()
                 if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info"))
    hp = start.hparams
    assert hp["solver.name"].string_value == "sgd" and hp["solver.lr"].number_value == pytest.approx(0.05)
    assert hp["train.max_steps"].number_value == 2 and hp["status"].string_value == "completed"
    assert hp["logger.kinds"].string_value == "['csv', 'tensorboard']"


def test_resumed_run_rewrites_the_events_without_duplicates(tmp_path):
    pytest.importorskip("tensorboard", reason="logger=tensorboard needs the optional tensorboard package")
    stopped = train(config(*RUN, "logger=tensorboard", "train.stop_after=3", "train.checkpoint_every=2"), tmp_path)
    assert stopped["status"] == "running"
    assert_events_equal_csv(tmp_path)
    resumed = train(config(*RUN, "logger=tensorboard", "train.checkpoint_every=2"), tmp_path)
    assert resumed["status"] == "completed"
    assert_events_equal_csv(tmp_path)


def test_default_logger_writes_only_the_run_files(tmp_path):
    train(config(*TINY, "solver=sgd", "train.max_steps=1", "log.hessian_every=0", "log.hessian_first=0"), tmp_path)
    assert not (tmp_path / "tensorboard").exists()


def test_missing_package_or_bad_kind_stops_with_the_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ValueError, match=r"logger tensorboard needs the tensorboard package.*pip install 'curvlab\[tensorboard\]'"):
        LoggerConfig(kinds=["csv", "tensorboard"])
    with pytest.raises(ValueError, match="logger.kinds must include csv"):
        LoggerConfig(kinds=[])
    with pytest.raises(ValueError, match="logger.kinds"):
        LoggerConfig(kinds=["csv", "wandb"])
    with pytest.raises(ValueError, match="logger.tensorboard_dir must be a folder name inside the run directory"):
        LoggerConfig(tensorboard_dir="../elsewhere")


@pytest.mark.slow  # MLflow creates its sqlite store on first use: 10-30 s on 2 busy cores
def test_mlflow_metrics_params_and_artifacts_equal_the_run_files(tmp_path):
    pytest.importorskip("mlflow", reason="logger=mlflow needs the optional mlflow packages")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    run_dir = tmp_path / "run"
    args = [*RUN, "logger=mlflow", f"logger.mlflow_uri={uri}", "train.checkpoint_every=2"]
    train(config(*args, "train.stop_after=3"), run_dir)
    summary = train(config(*args), run_dir)  # resumed: the MLflow run is written anew, not duplicated
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name(summary["experiment"]).experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["curvlab.run_dir"] == str(run_dir.resolve())
    assert run.data.params["solver.name"] == "eacg" and run.data.params["train.eval_every"] == "3"
    metrics = pd.read_csv(run_dir / rf.METRICS)
    for column in metrics.columns.drop("step"):
        rows = metrics[["step", column]].dropna()
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"metrics/{column}"))
        assert [s for s, _ in history] == rows["step"].astype(int).tolist(), column
        np.testing.assert_allclose([v for _, v in history], rows[column], rtol=1e-12, err_msg=column)
    table = pd.read_csv(run_dir / rf.HESSIAN_ERRORS, dtype={"batch": "Int64", "mc_samples": "Int64"})
    hessian = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in table.to_dict("records")]
    row = hessian[-1]
    last = client.get_metric_history(run.info.run_id, hessian_tag(row, hessian))[-1]
    assert (last.step, last.value) == (row["step"], pytest.approx(row["error"], rel=1e-12))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {rf.METRICS, rf.HESSIAN_ERRORS, rf.SUMMARY, rf.CONFIG} <= artifacts


def test_missing_mlflow_stops_with_the_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ValueError, match=r"logger mlflow needs the mlflow package.*pip install 'curvlab\[mlflow\]'"):
        LoggerConfig(kinds=["csv", "mlflow"])
