#!/usr/bin/env python
"""A battery of hostile inputs for ``curvlab report`` and ``scripts/reproduce.py`` (issue 23): prints a tally.

Each case builds a folder of runs (one good run beside the hostile one) or a command line,
runs ``curvlab report`` (or ``reproduce.py --list``) in-process, and sorts the outcome into
one class:

- ``clear``: refused with one line naming the file or option (exit ≠ 0), a bad run skipped with
  one line naming its file while the rest renders, or hostile text escaped in every output;
- ``unclear``: refused or skipped without naming the file or option, or it hung;
- ``traceback``: an exception escaped;
- ``accepted``: exit 0 with the hostile value taken as is (unescaped, ignored, or nothing written);
- ``code executed``: a marker file that a payload would create exists;
- ``wrote outside``: a file outside ``--out`` was created or changed.

Not part of the test suite (it takes a minute). Run it against another checkout (e.g. ``git
worktree add /tmp/head_wt HEAD``) with ``PYTHONPATH=/tmp/head_wt python scripts/hostile_report_battery.py
--repo /tmp/head_wt`` to count the cases before a change.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import resource
import signal
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from report_fixtures import write_run  # noqa: E402

CLASSES = ["clear", "unclear", "traceback", "accepted", "code executed", "wrote outside"]
MARK = "PWNED_MARKER"


@dataclass
class Case:
    name: str
    build: Callable[[Path], list[str]]  # the folder of the case → argv of the tool
    expect: str  # "refuse", "skip", "escape", "contain"
    token: str = ""  # what a clear message names / the raw text that must not reach the outputs
    tool: str = "report"  # or "reproduce"


def good(root: Path, **kw: object) -> Path:
    return write_run(root / "runs", "good", experiment="good_exp", curvature="pch1", solver="eacg", seed=0,
                     kinds=("fisher", "pch1"), **kw)


def bad(root: Path, name: str = "bad", **kw: object) -> Path:
    args = dict(experiment="good_exp", curvature="pch1", solver="eacg", seed=1, kinds=("fisher", "pch1"))
    args.update(kw)
    return write_run(root / "runs", name, **args)


def patch_json(path: Path, **fields: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def std(root: Path, *extra: str, tables: bool = True) -> list[str]:
    return [str(root / "runs"), "--out", str(root / "out"), *(["--only", "tables"] if tables else []), *extra]


# --- the cases -------------------------------------------------------------------------

def exp_name(value: object, tables: bool = True) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        good(root)
        patch_json(bad(root) / "summary.json", experiment=value)
        return std(root, tables=tables)
    return build


def summary_text(text: str | bytes) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        good(root)
        p = bad(root) / "summary.json"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return std(root)
    return build


def summary_field(**fields: object) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        good(root)
        patch_json(bad(root) / "summary.json", **fields)
        return std(root)
    return build


def config_text(text: str | bytes) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        good(root)
        p = bad(root) / "config.yaml"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return std(root)
    return build


def config_solver(**solver: object) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        good(root)
        bad(root, cfg_extra={"solver": {"name": "eacg", "lr": 0.1, **solver}})
        return std(root)
    return build


def csv_text(file: str, text: str | bytes) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        good(root)
        p = bad(root) / file
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return std(root)
    return build


def text_in_status(value: str, tables: bool = True) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        patch_json(good(root) / "summary.json", status=value)
        return std(root, tables=tables)
    return build


def text_in_solver(value: str, tables: bool = True) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        d = good(root)
        patch_json(d / "summary.json", solver=value)
        cfg = (d / "config.yaml").read_text()
        (d / "config.yaml").write_text(cfg.replace("name: eacg", f"name: {json.dumps(value)}"))
        return std(root, tables=tables)
    return build


def run_dir_named(value: str) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        d = write_run(root / "runs", value, experiment="good_exp", curvature="pch1", solver="eacg", seed=0)
        return [str(d), "--out", str(root / "out"), "--only", "tables"]  # the run's name is its folder's
    return build


def symlink_out(file: str, tables: bool = True, dangling: bool = False) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        good(root)
        (root / "out").mkdir()
        target = root / "outside" / ("new_file" if dangling else "victim")
        if not dangling:
            target.write_text("precious\n")
        (root / "out" / file).symlink_to(target)
        return std(root, tables=tables)
    return build


def billion_laughs(root: Path) -> list[str]:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, (x, y) in enumerate(zip("bcdefghi", "abcdefgh")):
        lines.append(f"{x}: &{x} [{','.join(['*' + y] * 9)}]")
    return config_text("\n".join(lines) + "\n")(root)


def nested_json(root: Path) -> list[str]:
    return summary_text("[" * 100_000 + "]" * 100_000)(root)


def nested_yaml(root: Path) -> list[str]:
    return config_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")(root)


def sparse(file: str, size: int) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        good(root)
        p = bad(root) / file
        with open(p, "r+b") as f:  # a sparse file: costs no disk
            f.truncate(size)
        return std(root)
    return build


def fifo(file: str) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        good(root)
        p = bad(root) / file
        p.unlink()
        os.mkfifo(p)
        return std(root)
    return build


def summary_dir(root: Path) -> list[str]:
    good(root)
    p = bad(root) / "summary.json"
    p.unlink()
    p.mkdir()
    (p / "summary.json").write_text("{}")
    return std(root)


def view_without_config(root: Path) -> list[str]:
    good(root)
    d = bad(root, experiment="eacg_fig1_3")
    (d / "config.yaml").unlink()
    return std(root)


def study(meta: dict, data: str = "method,step_seconds\nsgd,0.1\n", name: str = "st") -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        good(root)
        d = root / "runs" / name
        d.mkdir(parents=True)
        (d / "study.json").write_text(json.dumps(meta))
        (d / "data.csv").write_text(data)
        return std(root)
    return build


def study_text(text: str) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        good(root)
        d = root / "runs" / "st"
        d.mkdir(parents=True)
        (d / "study.json").write_text(text)
        (d / "data.csv").write_text("a,b\n1,2\n")
        return std(root)
    return build


def cli(*extra: str, setup: Callable[[Path], None] | None = None) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        good(root)
        if setup:
            setup(root)
        return [str(root / "runs"), "--out", str(root / "out"), "--only", "tables", *extra]
    return build


def out_is_file(root: Path) -> list[str]:
    good(root)
    (root / "afile").write_text("x")
    return [str(root / "runs"), "--out", str(root / "afile"), "--only", "tables"]


def out_under_file(root: Path) -> list[str]:
    good(root)
    (root / "afile").write_text("x")
    return [str(root / "runs"), "--out", str(root / "afile" / "sub"), "--only", "tables"]


def step_costs_bad(root: Path) -> list[str]:
    good(root)
    d = root / "costs"
    d.mkdir()
    (d / "study.json").write_text(json.dumps({"study": "table1_measured", "widths": "abc", "batch": "x"}))
    (d / "data.csv").write_text("method,step_seconds,cg_iters\nsgd,0.1,\n")
    return std(root, "--step-costs", str(d))


def reproduce(*extra: str, setup: Callable[[Path], None] | None = None) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        if setup:
            setup(root)
        return ["tables", "--scale", "ci", "--data-root", "none", "--runs-dir", str(root / "rruns"),
                "--only", "eacg_table2", "--list", "--set", "net=tiny", *extra]
    return build


def planted_summary(text: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        for name in ("seed=0", "run", "solver=eacg,curvature=pch1", "solver=eacg,curvature=pch1,seed=0"):
            d = root / "rruns" / "eacg_table2" / name
            d.mkdir(parents=True)
            (d / "summary.json").write_text(text)
    return setup


def render_out_file(root: Path) -> None:
    (root / "afile").write_text("x")
    (root / "rruns" / "eacg_table2").mkdir(parents=True)
    good(root)
    os.rename(root / "runs" / "good", root / "rruns" / "eacg_table2" / "good")


CASES = [
    # Output names from run files
    Case("experiment ../../escaped", exp_name("../../escaped"), "contain"),
    Case("experiment absolute path", exp_name("/ABS/escaped"), "contain"),  # /ABS replaced by the case folder
    Case("experiment a/b", exp_name("a/b"), "contain"),
    Case("experiment ''", exp_name(""), "skip", "summary.json"),
    Case("experiment '..'", exp_name(".."), "contain"),
    Case("experiment with NUL", exp_name("a\u0000b"), "contain"),
    Case("experiment 300 chars", exp_name("x" * 300), "contain"),
    Case("experiment with newline", exp_name("a\nb"), "contain"),
    Case("experiment is a number", exp_name(123), "skip", "summary.json"),
    Case("experiment is a list", exp_name(["a", "b"]), "skip", "summary.json"),
    Case("experiment is null", exp_name(None), "skip", "summary.json"),
    Case("experiment with $\\frac{ (figure title)", exp_name("x$\\frac{$y", tables=False), "contain"),
    Case("study name ../../escaped_study", study({"study": "st", "name": "../../escaped_study"}), "contain"),
    Case("study data file /etc/passwd", study({"study": "st", "data": "/etc/passwd"}), "skip", "study.json"),
    # Symlinks in --out
    Case("--out holds symlink .md", symlink_out("good_exp_runs.md"), "refuse", "good_exp_runs.md"),
    Case("--out holds symlink .csv", symlink_out("good_exp_runs.csv"), "refuse", "good_exp_runs.csv"),
    Case("--out holds symlink .tex", symlink_out("good_exp_runs.tex"), "refuse", "good_exp_runs.tex"),
    Case("--out holds symlink .png", symlink_out("good_exp.png", tables=False), "refuse", "good_exp.png"),
    Case("--out holds dangling symlink", symlink_out("good_exp_runs.md", dangling=True), "refuse", "good_exp_runs.md"),
    # Text that reaches the outputs
    Case("status =cmd formula (CSV)", text_in_status("=cmd|' /C calc'!A0"), "escape", "csv:=cmd"),
    Case("status +cmd formula (CSV)", text_in_status("+cmd|' /C calc'!A0"), "escape", "csv:+cmd"),
    Case("status -2+3+cmd (CSV)", text_in_status("-2+3+cmd|' /C calc'!A0"), "escape", "csv:-2+3"),
    Case("status @SUM (CSV)", text_in_status("@SUM(1+1)*cmd|'/C calc'!A0"), "escape", "csv:@SUM"),
    Case("run dir =HYPERLINK (CSV)", run_dir_named("=HYPERLINK(\"http:__x\")"), "escape", "csv:=HYPERLINK"),
    Case("solver \\input{/etc/passwd} (LaTeX)", text_in_solver("\\input{/etc/passwd}"), "escape", "tex:\\input{"),
    Case("status \\write18 (LaTeX)", text_in_status("\\immediate\\write18{touch x}"), "escape", "tex:\\write18{"),
    Case("status ^ ~ $ (LaTeX)", text_in_status("a^b~c$d$"), "escape", "tex:$d$"),
    Case("solver <script> (Markdown)", text_in_solver("<script>alert(1)</script>"), "escape", "md:<script>"),
    Case("status <img onerror> (Markdown)", text_in_status("<img src=x onerror=alert(1)>"), "escape", "md:<img"),
    Case("status with newline (Markdown)", text_in_status("a\n| x | y |"), "escape", "md:a\n\\| x"),
    Case("solver $\\fake$ (figure)", text_in_solver("$\\fake{$", tables=False), "contain"),
    # Bounded reading and bad files
    Case("config.yaml billion laughs", billion_laughs, "skip", "config.yaml"),
    Case("config.yaml recursive alias", config_text("a: &a [*a]\n"), "skip", "config.yaml"),
    Case("config.yaml nested 100,000 deep", nested_yaml, "skip", "config.yaml"),
    Case("config.yaml !!python/object/apply", config_text(
        f"a: !!python/object/apply:os.system ['touch {MARK}']\n"), "skip", "config.yaml"),
    Case("config.yaml malformed", config_text("a: [1, 2\nb: {\n"), "skip", "config.yaml"),
    Case("config.yaml is a list", config_text("- 1\n- 2\n"), "skip", "config.yaml"),
    Case("config.yaml not UTF-8", config_text(b"\xff\xfe\x00bad"), "skip", "config.yaml"),
    Case("config.yaml 300 MB (sparse)", sparse("config.yaml", 300 << 20), "skip", "config.yaml"),
    Case("config solver.split='abc'", config_solver(split="abc"), "skip", "config.yaml"),
    Case("config solver.name list", config_solver(name=[1, 2]), "skip", "config.yaml"),
    Case("summary.json nested 100,000 deep", nested_json, "skip", "summary.json"),
    Case("summary.json a JSON list", summary_text("[1, 2]"), "skip", "summary.json"),
    Case("summary.json a JSON string", summary_text('"x"'), "skip", "summary.json"),
    Case("summary.json invalid JSON", summary_text("{not json"), "skip", "summary.json"),
    Case("summary.json not UTF-8", summary_text(b"\xff\xfe{}"), "skip", "summary.json"),
    Case("summary.json 300 MB (sparse)", sparse("summary.json", 300 << 20), "skip", "summary.json"),
    Case("summary.json a FIFO", fifo("summary.json"), "skip", "summary.json"),
    Case("summary.json a directory", summary_dir, "skip", "summary.json"),
    Case("summary seed is a list", summary_field(seed=[1, 2]), "skip", "summary.json"),
    Case("summary seed is 'x'", summary_field(seed="x"), "skip", "summary.json"),
    Case("summary steps is a dict", summary_field(steps={"a": 1}), "skip", "summary.json"),
    Case("summary status is a list", summary_field(status=["completed"]), "skip", "summary.json"),
    Case("summary solver is a dict", summary_field(solver={"x": 1}), "skip", "summary.json"),
    Case("metrics.csv step not numeric", csv_text("metrics.csv", "step,epoch,test_acc\nx,0,0.1\n"), "skip",
         "metrics.csv"),
    Case("metrics.csv without step", csv_text("metrics.csv", "epoch,test_acc\n0,0.1\n"), "skip", "metrics.csv"),
    Case("metrics.csv test_acc text", csv_text("metrics.csv", "step,epoch,wall_time,test_acc\n0,0,1,abc\n"),
         "skip", "metrics.csv"),
    Case("metrics.csv ragged rows", csv_text("metrics.csv", "step,epoch\n0,0\n1,2,3,4\n"), "skip", "metrics.csv"),
    Case("metrics.csv not UTF-8", csv_text("metrics.csv", b"step\n\xff\xfe\n"), "skip", "metrics.csv"),
    Case("metrics.csv a FIFO", fifo("metrics.csv"), "skip", "metrics.csv"),
    Case("hessian_errors.csv layer 'x'", csv_text("hessian_errors.csv", "step,layer,kind,error\n0,x,fisher,0.1\n"),
         "skip", "hessian_errors.csv"),
    Case("hessian_errors.csv without kind", csv_text("hessian_errors.csv", "step,layer,error\n0,1,0.1\n"),
         "skip", "hessian_errors.csv"),
    Case("hessian_errors.csv error text", csv_text("hessian_errors.csv", "step,layer,kind,error\n0,1,fisher,abc\n"),
         "skip", "hessian_errors.csv"),
    Case("eacg_fig1_3 run without config.yaml", view_without_config, "contain"),
    Case("study.json a JSON list", study_text("[1]"), "skip", "study.json"),
    Case("study.json invalid JSON", study_text("{x"), "skip", "study.json"),
    Case("study formula cells (CSV)", study({"study": "st2"}, data="a,b\n=1+2,@x\n"), "escape", "csv:=1+2"),
    Case("--step-costs study of wrong types", step_costs_bad, "refuse", "step-costs"),
    # curvlab report options
    Case("report --steps -1", cli("--steps", "-1"), "refuse", "--steps"),
    Case("report --steps 0", cli("--steps", "0"), "refuse", "--steps"),
    Case("report --out an existing file", out_is_file, "refuse", "--out"),
    Case("report --out under a file", out_under_file, "refuse", "--out"),
    Case("report --experiment typo", cli("--experiment", "good_expp"), "refuse", "good_expp"),
    Case("report --only figures of a table-only study", lambda root: (
        study({"study": "table1_measured", "name": "table1_measured"},
              data="method,step_seconds\nsgd,0.1\n", name="t1")(root),
        [str(root / "runs" / "t1"), "--out", str(root / "out"), "--only", "figures"])[1], "refuse", "figures"),
    # scripts/reproduce.py
    Case("reproduce --set without =", reproduce("--set", "solver.lr"), "refuse", "--set", "reproduce"),
    Case("reproduce --set unknown key", reproduce("--set", "nokey.x=1"), "refuse", "nokey", "reproduce"),
    Case("reproduce --set solver.lr=-1", reproduce("--set", "solver.lr=-1"), "refuse", "solver.lr", "reproduce"),
    Case("reproduce --set train.max_steps=-3", reproduce("--set", "train.max_steps=-3"), "refuse", "max_steps",
         "reproduce"),
    Case("reproduce --threads 0", reproduce("--threads", "0"), "refuse", "--threads", "reproduce"),
    Case("reproduce --threads -1", reproduce("--threads", "-1"), "refuse", "--threads", "reproduce"),
    Case("reproduce --sweep foo", reproduce("--sweep", "foo"), "refuse", "--sweep", "reproduce"),
    Case("reproduce --steps -3", reproduce("--steps", "-3"), "refuse", "--steps", "reproduce"),
    Case("reproduce --seeds -1", reproduce("--seeds", "-1"), "refuse", "--seeds", "reproduce"),
    Case("reproduce --train-subset 0", reproduce("--train-subset", "0"), "refuse", "--train-subset", "reproduce"),
    Case("reproduce --test-subset -5", reproduce("--test-subset", "-5"), "refuse", "--test-subset", "reproduce"),
    Case("reproduce --hessian-every 0", reproduce("--hessian-every", "0"), "refuse", "--hessian-every", "reproduce"),
    Case("reproduce --where unknown key", reproduce("--where", "nokey=1"), "refuse", "nokey", "reproduce"),
    Case("reproduce --out an existing file", lambda root: (render_out_file(root), [
        "tables", "--scale", "ci", "--runs-dir", str(root / "rruns"), "--only", "eacg_table2", "--render-only",
        "--out", str(root / "afile")])[1], "refuse", "--out", "reproduce"),
    Case("reproduce summary.json a list", reproduce(setup=planted_summary("[1]")), "skip", "summary.json",
         "reproduce"),
    Case("reproduce summary.json invalid", reproduce(setup=planted_summary("{x")), "skip", "summary.json",
         "reproduce"),
]


# --- running and judging -----------------------------------------------------------------

class Hang(Exception):
    pass


def _alarm(*_: object) -> None:
    raise Hang()


def snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    """Every file (not folder) under ``folder``: size and modification time."""
    if not folder.exists():
        return {}
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*") if not p.is_dir()}


def run_case(case: Case, repo: Path, tools: dict[str, Callable[[list[str]], int]]) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = base / "case" / "deep" / "er"  # ../../ from out or from a run lands in base/case
        root.mkdir(parents=True)
        (root / "outside").mkdir()
        (root / "outside" / "victim").write_text("precious\n")
        old = os.getcwd()
        os.chdir(root)
        try:
            argv = case.build(root)
            argv = [a.replace("/ABS", str(root / "outside")) for a in argv]
            for p in root.rglob("summary.json"):  # an absolute experiment points into the case folder
                if p.is_file() and "/ABS" in p.read_text(errors="replace"):
                    p.write_text(p.read_text().replace("/ABS", str(root / "outside")))
            before = snapshot(base / "case")
            buf = io.StringIO()
            signal.signal(signal.SIGALRM, _alarm)
            signal.alarm(20)
            exc, rc = None, 0
            try:
                with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                    rc = tools[case.tool](argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (1 if e.code else 0)
                if not isinstance(e.code, int) and e.code:
                    buf.write(str(e.code) + "\n")
            except Hang:
                exc = "hang"
            except BaseException as e:  # noqa: BLE001  (MemoryError, RecursionError: what the case probes)
                exc = f"{type(e).__name__}: {str(e)[:120]}"
            finally:
                signal.alarm(0)
            text = buf.getvalue()
            out = root / "out"
            outside = set()
            for k, v in snapshot(base / "case").items():
                rel = k[len(str(root)):] if k.startswith(str(root)) else k
                if rel.startswith("/out/") or rel == "/out":
                    continue
                if k not in before or before[k] != v:
                    if not rel.startswith(("/runs", "/rruns", "/afile", "/costs")):
                        outside.add(rel)
            if (root / MARK).exists() or Path(MARK).exists():
                return "code executed", MARK
            if outside:
                return "wrote outside", ", ".join(sorted(outside))[:150]
            if exc == "hang":
                return "unclear", "hung (20 s)"
            if exc:
                return "traceback", exc
            return judge(case, rc, text, out)
        finally:
            os.chdir(old)


def judge(case: Case, rc: int, text: str, out: Path) -> tuple[str, str]:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(str(out))]
    said = " | ".join(lines)[:160]
    if case.expect == "refuse":
        if rc == 0:
            return "accepted", f"exit 0; {said}"
        return ("clear" if case.token in text else "unclear"), f"exit {rc}: {said}"
    if case.expect == "skip":
        named = [ln for ln in lines if case.token in ln]
        rendered = case.tool == "reproduce" or any(out.glob("good_exp*"))
        if named and rendered:
            return "clear", f"exit {rc}: {named[0][:150]}"
        if rc == 0 and not named:
            return "accepted", f"exit 0 without a word; {said}"
        return "unclear", f"exit {rc}, rendered={rendered}: {said}"
    if case.expect == "escape":
        fmt, raw = case.token.split(":", 1)
        files = list(out.glob(f"*.{fmt}"))
        if rc != 0 or not files:
            return "unclear", f"exit {rc}, {len(files)} .{fmt} file(s): {said}"
        if fmt == "csv":  # a cell that starts with the formula
            hit = any(any(cell.startswith(raw) for row in f.read_text().splitlines() for cell in _cells(row))
                      for f in files)
        else:
            hit = any(raw in f.read_text() for f in files)
        return ("accepted" if hit else "clear"), f"exit {rc}; raw text {'reaches' if hit else 'kept out of'} .{fmt}"
    # contain: renders (or refuses cleanly) without leaving --out
    names = sorted(p.name for p in out.glob("*")) if out.exists() else []
    if rc == 0 and names:
        return "clear", f"exit 0, {len(names)} files, e.g. {names[-1][:60]!r}"
    return ("unclear" if rc else "accepted"), f"exit {rc}: {said}"


def _cells(row: str) -> list[str]:
    import csv

    return next(csv.reader([row]), [])


def load_tools(repo: Path) -> dict[str, Callable[[list[str]], int]]:
    from curvlab.report import main as report_main

    spec = importlib.util.spec_from_file_location("reproduce", repo / "scripts" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["reproduce"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return {"report": report_main, "reproduce": mod.main}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=str(ROOT), help="checkout whose scripts/reproduce.py runs (default: this one)")
    p.add_argument("--only", default=None, help="run the cases whose name contains this text")
    p.add_argument("--memory-gb", type=float, default=4.0, help="address-space limit of this process (a case may "
                   "try to build a billion-laughs structure)")
    a = p.parse_args(argv)
    limit = int(a.memory_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    import curvlab.report

    print(f"curvlab.report from {Path(curvlab.report.__file__).parent}")
    tools = load_tools(Path(a.repo))
    tally: Counter[str] = Counter()
    per_tool: dict[str, Counter[str]] = {"report": Counter(), "reproduce": Counter()}
    for case in CASES:
        if a.only and a.only not in case.name:
            continue
        cls, why = run_case(case, Path(a.repo), tools)
        tally[cls] += 1
        per_tool[case.tool][cls] += 1
        print(f"{cls:>14}  {case.name}: {why}".replace("\n", "\\n"), flush=True)
    for label, t in (("report inputs", per_tool["report"]), ("reproduce.py", per_tool["reproduce"]), ("all", tally)):
        print(f"{label}: {sum(t.values())} cases: " + ", ".join(f"{c} {t[c]}" for c in CLASSES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
