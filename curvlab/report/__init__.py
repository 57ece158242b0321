"""``curvlab report RUNS_DIR...``: aggregate run and study directories into tables and figures.

Reads only the files runs wrote (``docs/run_files.md``) and the studies' ``study.json`` +
CSV, so rerunning is cheap. Tables go out as Markdown, CSV and LaTeX; figures as PNG and
PDF with mean ± 1 std shaded over seeds.

Example::

    curvlab report runs/eacg_table2 runs/eacg_fig1_3 --out results/report --steps 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

from curvlab.report.load import Runs, Study, find_studies, load_runs, load_study
from curvlab.report.render import render_experiment, render_study

__all__ = ["main", "report", "Runs", "Study", "load_runs", "load_study"]


def report(roots: list[str | Path], out: str | Path, steps: int | None = None,
           want: set[str] = frozenset({"tables", "figures"}), experiments: list[str] | None = None) -> list[Path]:
    """Render every experiment (and study) found under ``roots`` into ``out``.

    Args:
        roots: folders holding run directories and/or study directories (any depth).
        out: output folder (created).
        steps: s, the number of first updates the layer-wise errors average over (all if None).
        want: ``{"tables"}``, ``{"figures"}`` or both.
        experiments: restrict to these experiment names (default: all found).

    Returns:
        The files written.
    """
    bad = set(want) - {"tables", "figures"}
    if bad:
        raise ValueError(f"report: unknown output kind(s) {sorted(bad)}; allowed: tables, figures")
    out = Path(out)
    runs = load_runs(roots)
    written: list[Path] = []
    for exp in runs.experiments():
        if experiments is None or exp in experiments:
            written += render_experiment(runs.select(exp), exp, out, steps, set(want))
    for path in find_studies(roots):
        st = load_study(path)
        if experiments is None or st.meta.get("name", st.name) in experiments:
            written += render_study(st, out, set(want))
    return written


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``curvlab report``; returns the process exit code."""
    p = argparse.ArgumentParser(prog="curvlab report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run or study directories, or folders that contain them")
    p.add_argument("--out", default="results/report", help="output folder (default: results/report)")
    p.add_argument("--steps", type=int, default=None,
                   help="average layer-wise errors over the first S updates (default: all logged)")
    p.add_argument("--only", choices=["tables", "figures"], default=None, help="render only tables or figures")
    p.add_argument("--experiment", action="append", default=None,
                   help="render only this experiment (repeatable); default: every one found")
    a = p.parse_args(argv)
    want = {a.only} if a.only else {"tables", "figures"}
    try:
        files = report(a.runs, a.out, a.steps, want, a.experiment)
    except ValueError as e:
        print(f"curvlab report: error: {e}")
        return 2
    if not files:
        print(f"curvlab report: nothing to render under {' '.join(a.runs)} (no summary.json or study.json found)")
        return 1
    for f in files:
        print(f)
    return 0
