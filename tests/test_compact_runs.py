"""Compact run tables (``log.compact``, ``scripts/compact_record.py``): float32 precision, gzip, read back alike."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curvlab import runfiles as rf
from curvlab.report.load import load_runs
from curvlab.train import train
from test_train import NO_HESSIAN, TINY, TIMES, config

REPO = Path(__file__).resolve().parents[1]


def test_compact_text_keeps_integers_and_text_and_rounds_floats_to_float32():
    text = "step,loss,status,empty\n3,0.30934569800001555,ok,\n-4,1e-45,nan,\n5,2.5,inf,\n"
    rows = rf.compact_text(text).splitlines()
    assert rows[0] == "step,loss,status,empty"
    assert rows[1] == "3,0.3093457,ok," and rows[2].startswith("-4,1e-45,nan")
    assert np.float32(rows[1].split(",")[1]) == np.float32(0.30934569800001555)


def test_float32_text_reads_back_as_the_same_float32():
    values = np.random.default_rng(0).standard_normal(1000) * 10.0 ** np.random.default_rng(1).integers(-30, 30, 1000)
    for v in values:
        assert np.float32(float(rf.float32_text(float(v)))) == np.float32(v)


def test_compact_write_replaces_the_plain_table_and_is_deterministic(tmp_path):
    rows = [{"step": i, "loss": 1.0 / (i + 1), "note": None} for i in range(50)]
    rf.write_csv(tmp_path / rf.METRICS, rows, ["step", "loss"])
    assert rf.table_path(tmp_path, rf.METRICS) == tmp_path / rf.METRICS
    rf.write_csv(tmp_path / rf.METRICS, rows, ["step", "loss"], compact=True)
    packed = tmp_path / (rf.METRICS + rf.COMPACT_SUFFIX)
    assert not (tmp_path / rf.METRICS).exists() and rf.table_path(tmp_path, rf.METRICS) == packed
    first = packed.read_bytes()
    rf.write_csv(tmp_path / rf.METRICS, rows, ["step", "loss"], compact=True)
    assert packed.read_bytes() == first  # no time stamp in the gzip header
    df = pd.read_csv(packed)
    assert df["step"].tolist() == list(range(50))
    np.testing.assert_allclose(df["loss"], [1.0 / (i + 1) for i in range(50)], rtol=6e-8)
    rf.write_csv(tmp_path / rf.METRICS, rows, ["step", "loss"])  # back to plain: one form only
    assert not packed.exists() and (tmp_path / rf.METRICS).is_file()


def test_a_compact_run_writes_gz_tables_that_the_report_reads_like_plain_ones(tmp_path):
    common = [*TINY, "solver=sgd", "train.max_steps=4", "log.hessian_every=2", "log.hessian_first=0"]
    train(config(*common), tmp_path / "plain")
    train(config(*common, "log.compact=true"), tmp_path / "compact")
    names = {p.name for p in (tmp_path / "compact").iterdir()}
    assert {rf.METRICS + ".gz", rf.HESSIAN_ERRORS + ".gz"} <= names and not {rf.METRICS, rf.HESSIAN_ERRORS} & names
    runs = load_runs([tmp_path])
    assert len(runs.runs) == 2
    for table in (runs.metrics, runs.errors):
        by = {Path(d).name: g.drop(columns=["run_dir", *TIMES], errors="ignore").reset_index(drop=True)
              for d, g in table.groupby("run_dir")}
        pd.testing.assert_frame_equal(by["plain"], by["compact"], rtol=1e-6, check_dtype=False)


def test_a_compact_run_resumes_and_a_restart_removes_both_forms(tmp_path):
    done = train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=3", "log.compact=true",
                        "train.checkpoint_every=1", "train.stop_after=2"), tmp_path)
    assert done["status"] != "completed"
    done = train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=3", "log.compact=true"), tmp_path)
    assert done["status"] == "completed"
    assert pd.read_csv(tmp_path / (rf.METRICS + ".gz"))["step"].tolist() == [0, 1, 2, 3]


def test_log_compact_takes_only_a_bool():
    with pytest.raises(Exception, match="log.compact must be true or false"):
        config(*TINY, "log.compact=1")


def test_compact_record_converts_finished_runs_only(tmp_path):
    finished, running = tmp_path / "a", tmp_path / "b"
    train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=3"), finished)
    train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=3"), running)
    summary = rf.read_json(running / rf.SUMMARY)
    rf.write_json(running / rf.SUMMARY, {**summary, "status": "running"})
    plain = pd.read_csv(finished / rf.METRICS)
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "compact_record.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "1 finished run(s)" in out and "1 unfinished" in out
    assert not (finished / rf.METRICS).exists() and (running / rf.METRICS).is_file()
    with gzip.open(finished / (rf.METRICS + ".gz"), "rt") as f:
        packed = pd.read_csv(f)
    pd.testing.assert_frame_equal(plain, packed, rtol=1e-6, check_dtype=False)


def test_the_report_renders_a_converted_record_identically(tmp_path):
    """Every table and figure of the committed report sample, byte for byte, before and after conversion."""
    import shutil

    from curvlab.report import main as report_main

    sample = Path(__file__).parent / "fixtures" / "report_sample"
    for form in ("plain", "compact"):
        shutil.copytree(sample, tmp_path / form / "report_sample")
    subprocess.run([sys.executable, str(REPO / "scripts" / "compact_record.py"), str(tmp_path / "compact")],
                   capture_output=True, text=True, check=True)
    assert list((tmp_path / "compact").rglob("metrics.csv.gz")) and not list((tmp_path / "compact").rglob("metrics.csv"))
    for form in ("plain", "compact"):
        assert report_main([str(tmp_path / form / "report_sample"), "--out", str(tmp_path / f"out_{form}")]) == 0
    a = sorted((tmp_path / "out_plain").iterdir())
    b = sorted((tmp_path / "out_compact").iterdir())
    assert [f.name for f in a] == [f.name for f in b] and len(a) > 10
    for fa, fb in zip(a, b):
        assert fa.read_bytes() == fb.read_bytes(), fa.name
