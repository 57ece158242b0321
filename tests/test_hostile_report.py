"""Hostile report inputs and outputs (issue 23): names, links, escaping, bounded reading, bad runs, bad options."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from curvlab.report import main
from curvlab.report.escape import csv_cell, md_text, tex_text
from curvlab.report.files import MAX_TEXT, safe_name
from report_fixtures import write_run

ROOT = Path(__file__).resolve().parents[1]


def _runs(tmp: Path, **bad_summary: object) -> tuple[Path, Path]:
    """A folder with one good run (experiment ``good_exp``) and one more run (``bad``), its summary patched."""
    runs = tmp / "deep" / "er" / "runs"
    write_run(runs, "good", experiment="good_exp", curvature="pch1", solver="eacg", seed=0, kinds=("fisher", "pch1"))
    bad = write_run(runs, "bad", experiment="good_exp", curvature="pch1", solver="eacg", seed=1)
    s = bad / "summary.json"
    s.write_text(json.dumps({**json.loads(s.read_text()), **bad_summary}))
    return runs, bad


def _report(runs: Path, out: Path, *extra: str) -> int:
    return main([str(runs), "--out", str(out), "--only", "tables", *extra])


def _files_outside(base: Path, out: Path, runs: Path) -> list[Path]:
    return [p for p in base.rglob("*") if p.is_file() and out not in p.parents and runs not in p.parents]


def _skipped_once(err: str, file: str) -> None:
    lines = [ln for ln in err.splitlines() if "skipped" in ln]
    assert len(lines) == 1 and f"bad/{file}" in lines[0], err


# --- output names and links ------------------------------------------------------------

@pytest.mark.parametrize("experiment", ["../../escaped", "ABS/escaped", "a/b", "..", "x" * 300])
def test_experiment_name_never_leaves_out(tmp_path: Path, experiment: str) -> None:
    name = str(tmp_path / "deep" / "escaped") if experiment.startswith("ABS") else experiment
    runs, _ = _runs(tmp_path, experiment=name)
    out = tmp_path / "deep" / "er" / "out"
    assert _report(runs, out) == 0
    assert _files_outside(tmp_path, out, runs) == []
    stem = safe_name(name)
    assert "/" not in stem and not stem.startswith(".") and len(stem) <= 200
    assert (out / f"{stem}_runs.md").is_file() and (out / "good_exp_runs.md").is_file()
    assert safe_name("eacg_table2") == "eacg_table2"  # the presets' names are kept


@pytest.mark.parametrize("dangling", [False, True])
def test_symlink_under_an_output_name_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 dangling: bool) -> None:
    runs, _ = _runs(tmp_path)
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    if not dangling:
        victim.write_text("precious\n")
    (out / "good_exp_runs.csv").symlink_to(victim)
    assert _report(runs, out) == 2
    assert "good_exp_runs.csv is a symbolic link" in capsys.readouterr().out
    assert (victim.read_text() == "precious\n") if not dangling else not victim.exists()
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []  # no temporary left behind


def test_study_name_and_data_file_stay_inside(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs, _ = _runs(tmp_path)
    for name, meta in (("s1", {"study": "s1", "name": "../../escaped_study"}),
                       ("s2", {"study": "s2", "data": "/etc/passwd"})):
        (runs / name).mkdir()
        (runs / name / "study.json").write_text(json.dumps(meta))
        (runs / name / "data.csv").write_text("a,b\n1,2\n")
    out = tmp_path / "deep" / "er" / "out"
    assert _report(runs, out) == 0
    assert _files_outside(tmp_path, out, runs) == []
    assert any(p.name.startswith("_.._.._escaped_study") for p in out.iterdir())
    assert "s2/study.json: 'data' is '/etc/passwd'" in capsys.readouterr().err


# --- escaping per format ---------------------------------------------------------------

def test_csv_formula_cells_get_a_quote_numbers_stay_numbers(tmp_path: Path) -> None:
    assert [csv_cell(v) for v in ("=1+2", "+cmd", "-2+3+cmd|'", "@SUM(A1)", "-0.5", "1.2 ± 0.3", "-", "-inf", -3.0)] \
        == ["'=1+2", "'+cmd", "'-2+3+cmd|'", "'@SUM(A1)", "-0.5", "1.2 ± 0.3", "-", "-inf", -3.0]
    runs, bad = _runs(tmp_path, status="=cmd|' /C calc'!A0")
    assert _report(runs, tmp_path / "out") == 0
    rows = list(csv.reader((tmp_path / "out" / "good_exp_runs.csv").open()))
    status = [r[rows[0].index("status")] for r in rows[1:]]
    assert sorted(status) == ["'=cmd|' /C calc'!A0", "completed"]
    tab = pd.read_csv(tmp_path / "out" / "good_exp_runs.csv")
    assert pd.api.types.is_numeric_dtype(tab["seed"]) and pd.api.types.is_numeric_dtype(tab["steps"])


def test_latex_special_characters_are_printed_not_obeyed(tmp_path: Path) -> None:
    assert tex_text(r"\input{/etc/passwd} a^b~c$d$ 50% #1 &") == (
        r"\textbackslash{}input\{/etc/passwd\} a\textasciicircum{}b\textasciitilde{}c\$d\$ 50\% \#1 \&")
    runs, _ = _runs(tmp_path, status=r"\immediate\write18{touch x}")
    assert _report(runs, tmp_path / "out") == 0
    tex = (tmp_path / "out" / "good_exp_runs.tex").read_text()
    assert r"\write18" not in tex and r"\textbackslash{}immediate\textbackslash{}write18\{touch x\}" in tex


def test_markdown_html_and_pipes_are_escaped(tmp_path: Path) -> None:
    assert md_text("<script>alert(1)</script> c <= 0.05 &amp;\nx") == "&lt;script>alert(1)&lt;/script> c <= 0.05 " \
                                                                       "&amp;amp; x"
    runs, _ = _runs(tmp_path, status="<img src=x onerror=alert(1)>|\n| x |")
    assert _report(runs, tmp_path / "out") == 0
    md = (tmp_path / "out" / "good_exp_runs.md").read_text()
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)>\\| \\| x \\|" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len({r.count(" | ") for r in rows[2:]}) == 1  # every row has the same number of cells


def test_mathtext_in_a_label_does_not_break_the_figure(tmp_path: Path) -> None:
    runs, bad = _runs(tmp_path, solver="$\\fake{$")
    (bad / "config.yaml").write_text((bad / "config.yaml").read_text().replace("name: eacg", "name: $\\fake{$"))
    assert main([str(runs), "--out", str(tmp_path / "out"), "--only", "figures"]) == 0
    assert (tmp_path / "out" / "good_exp.png").stat().st_size > 0


# --- bounded reading and bad runs: skipped with one line, the rest renders ----------------

def _config(text: str | bytes) -> object:
    return lambda bad: (bad / "config.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())


def _summary(text: str) -> object:
    return lambda bad: (bad / "summary.json").write_text(text)


def _billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{x}: &{x} [{','.join(['*' + y] * 9)}]" for x, y in zip("bcdefghi", "abcdefgh")]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("file, spoil, reason", [
    ("config.yaml", _config(_billion_laughs()), "more than 100,000 nodes"),
    ("config.yaml", _config("a: &a [*a]\n"), "refers to its own"),
    ("config.yaml", _config("a: [1, 2\nb: {\n"), "not valid YAML"),
    ("config.yaml", _config("- 1\n- 2\n"), "holds a YAML list"),
    ("config.yaml", _config(b"\xff\xfe"), "not UTF-8"),
    ("config.yaml", _config("solver: {name: eacg, split: abc}\n"), "wrong type"),
    ("summary.json", _summary("[" * 100_000 + "]" * 100_000), "nested more than 64"),
    ("summary.json", _summary("[1, 2]"), "holds a JSON list"),
    ("summary.json", _summary("{not json"), "not valid JSON"),
    ("summary.json", _summary(json.dumps({"experiment": "good_exp", "seed": [1, 2]})), "'seed' is list"),
    ("summary.json", _summary(json.dumps({"experiment": "good_exp", "steps": {"a": 1}})), "'steps' is dict"),
    ("summary.json", _summary(json.dumps({"experiment": None})), "'experiment' is None"),
    ("metrics.csv", lambda bad: (bad / "metrics.csv").write_text("step,test_acc\nx,0.1\n"), "'step' row 1"),
    ("metrics.csv", lambda bad: (bad / "metrics.csv").write_text("epoch\n0\n"), "no column 'step'"),
    ("metrics.csv", lambda bad: (bad / "metrics.csv").write_text("step,a\n0,1\n1,2,3\n"), "malformed CSV"),
    ("hessian_errors.csv", lambda bad: (bad / "hessian_errors.csv").write_text("step,layer,kind,error\n0,1,gn,abc\n"),
     "'error' row 1"),
])
def test_bad_run_is_skipped_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], file: str,
                                         spoil: object, reason: str) -> None:
    runs, bad = _runs(tmp_path)
    spoil(bad)  # type: ignore[operator]
    assert _report(runs, tmp_path / "out") == 0
    err = capsys.readouterr().err
    _skipped_once(err, file)
    assert reason in err
    tab = pd.read_csv(tmp_path / "out" / "good_exp_runs.csv")
    assert list(tab["run"]) == ["runs/good"]  # the rest still renders


def test_oversized_and_special_files_are_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs, bad = _runs(tmp_path)
    with open(bad / "config.yaml", "r+b") as f:
        f.truncate(MAX_TEXT + 1)  # sparse: no disk used
    (bad / "metrics.csv").unlink()
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    os.mkfifo(bad / "metrics.csv")  # opening it to read would wait for a writer forever
    bad2 = write_run(runs, "bad2", experiment="good_exp", curvature="pch1", solver="eacg", seed=2)
    (bad2 / "summary.json").unlink()
    os.mkfifo(bad2 / "summary.json")
    assert _report(runs, tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert f"bad/config.yaml: {MAX_TEXT + 1:,} bytes, more than" in err
    assert "bad2/summary.json: not a regular file" in err


def test_compacted_table_is_bounded_by_what_it_inflates_to(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    from curvlab.report import files

    runs, bad = _runs(tmp_path)
    (bad / "metrics.csv").unlink()
    body = "step,epoch\n" + "".join(f"{i},0\n" for i in range(2000))  # ~14 kB, compresses to ~4 kB
    (bad / "metrics.csv.gz").write_bytes(gzip.compress(body.encode()))
    monkeypatch.setattr(files, "MAX_CSV", 8000)  # a gzip bomb in small
    assert _report(runs, tmp_path / "out") == 0
    assert "bad/metrics.csv.gz: inflates to more than the 8,000 bytes" in capsys.readouterr().err


# --- curvlab report options ------------------------------------------------------------

def test_report_options_that_would_write_nothing_or_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs, _ = _runs(tmp_path)
    out = tmp_path / "out"
    for steps in ("-1", "0"):
        with pytest.raises(SystemExit) as e:
            _report(runs, out, "--steps", steps)
        assert e.value.code == 2 and "--steps" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    for target in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert _report(runs, target) == 2
        assert "is an existing file, not a folder" in capsys.readouterr().out
    assert _report(runs, out, "--experiment", "good_expp") == 2
    assert "--experiment good_expp: not among the experiments and studies found (good_exp)" in capsys.readouterr().out
    study = tmp_path / "t1"
    study.mkdir()
    (study / "study.json").write_text(json.dumps({"study": "table1_measured"}))
    (study / "data.csv").write_text("method,step_seconds,cg_iters\nsgd,0.1,\n")
    assert main([str(study), "--out", str(out), "--only", "figures", "--measured-time"]) == 1
    said = capsys.readouterr()
    assert "study table1_measured: nothing to render as figures" in said.err and "nothing written" in said.out


# --- scripts/reproduce.py --------------------------------------------------------------

_spec = importlib.util.spec_from_file_location("reproduce_hostile", ROOT / "scripts" / "reproduce.py")
reproduce = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["reproduce_hostile"] = reproduce
_spec.loader.exec_module(reproduce)  # type: ignore[union-attr]


def _reproduce(tmp: Path, *extra: str) -> list[str]:
    return ["tables", "--scale", "ci", "--data-root", "none", "--runs-dir", str(tmp / "runs"), "--only",
            "eacg_table2", "--list", "--set", "net=tiny", *extra]


@pytest.mark.parametrize("extra, said", [
    (["--set", "solver.lr"], "--set 'solver.lr': expected KEY=VALUE"),
    (["--sweep", "foo"], "--sweep 'foo': expected KEY=VALUE"),
    (["--where", "solver"], "--where 'solver': expected KEY=VALUE"),
    (["--threads", "0"], "argument --threads: expected a positive integer, got '0'"),
    (["--threads", "-1"], "argument --threads: expected a positive integer, got '-1'"),
    (["--steps", "-3"], "argument --steps: expected a positive integer, got '-3'"),
    (["--seeds", "-1"], "argument --seeds: expected a positive integer, got '-1'"),
    (["--train-subset", "0"], "argument --train-subset: expected a positive integer, got '0'"),
])
def test_reproduce_refuses_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                       said: str) -> None:
    with pytest.raises(SystemExit) as e:
        reproduce.main(_reproduce(tmp_path, *extra))
    assert e.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("extra, said", [
    (["--set", "nokey.x=1"], "Could not override 'nokey.x'"),
    (["--set", "solver.lr=-1"], "solver.lr must be > 0"),
    (["--set", "train.max_steps=-3"], "train.max_steps must be >= 1"),
    (["--where", "nokey=1"], "--where nokey: not a sweep key of eacg_table2"),
])
def test_reproduce_refuses_bad_config_values_before_any_job(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            extra: list[str], said: str) -> None:
    with pytest.raises(SystemExit) as e:
        reproduce.main(_reproduce(tmp_path, *extra))
    err = capsys.readouterr().err
    assert e.value.code == 2 and said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_reproduce_lists_an_unreadable_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "runs" / "eacg_table2" / "run"
    d.mkdir(parents=True)
    (d / "summary.json").write_text("[1]")
    assert reproduce.main(_reproduce(tmp_path)) == 0
    assert "run: unreadable: " in capsys.readouterr().out and "holds a JSON list" in str(reproduce.read_summary(d))
    assert reproduce.run_job(reproduce.Job("eacg_table2", []), d, force=False).startswith("failed: ")
