"""``curvlab report RUNS_DIR...``: aggregate run and study directories into tables and figures.

Reads only the files runs wrote (``docs/run_files.md``) and the studies' ``study.json`` +
CSV, so rerunning is cheap and gives identical files. Runs are grouped by their config (all
but the seed) into curves; tables go out as Markdown, CSV and LaTeX; figures as PNG and
PDF with the mean and spread over seeds shaded. The output folder never lies inside an input.

Example::

    curvlab report results/runs/eacg_table2 results/runs/eacg_fig1_3 --out /tmp/report --steps 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from curvlab.report.figures import WALL_NOTE
from curvlab.report.files import BadFile
from curvlab.report.index import write_index
from curvlab.report.load import Runs, Study, find_studies, load_runs, load_study, say_skipped
from curvlab.report.render import render_experiment, render_study
from curvlab.report.timing import find_step_costs, with_quiet_time
from curvlab.report.views import VIEWS, select_view

__all__ = ["main", "report", "positive_int", "Runs", "Study", "load_runs", "load_study", "WALL_NOTE"]


def report(roots: list[str | Path], out: str | Path, steps: int | None = None,
           want: set[str] = frozenset({"tables", "figures"}), experiments: list[str] | None = None,
           window: tuple[int, int] | None = None, wall_note: str | None = WALL_NOTE,
           step_costs: str | Path | None = None, measured_time: bool = False) -> list[Path]:
    """Render every experiment (and study) found under ``roots`` into ``out``.

    Args:
        roots: folders holding run directories and/or study directories (any depth).
        out: output folder (created); never one of ``roots`` or inside one.
        steps: s, the number of first updates the layer-wise errors average over (all if None).
        want: ``{"tables"}``, ``{"figures"}`` or both.
        experiments: restrict to these experiment names (default: all found).
        window: average the layer-wise errors over updates ``window[0] ≤ step ≤ window[1]`` only.
        wall_note: footnote of the measured wall-clock panels (None: no footnote on any time panel).
        step_costs: the quiet Table 1 study folder (``table1_measured``) whose per-update costs give
            the time panels' quiet-machine time; default: found as :func:`curvlab.report.timing.find_step_costs`
            says (under or next to ``roots``). Runs of methods it lacks keep their measured time.
        measured_time: draw the measured (contended) solver time, ignoring any quiet study.

    Returns:
        The files written, in a fixed order; the last is ``index.md``, which lists the others by experiment.

    A run or study whose files the report cannot use is skipped with one line on stderr naming
    the file and the reason (:mod:`curvlab.report.files`); so is a selected experiment or study
    that renders nothing of ``want``.
    """
    bad = set(want) - {"tables", "figures"}
    if bad:
        raise ValueError(f"report: unknown output kind(s) {sorted(bad)}; allowed: tables, figures")
    out = Path(out)
    _check_out(roots, out)
    runs = load_runs(roots)
    costs = None if measured_time else find_step_costs(roots, step_costs)
    runs = with_quiet_time(runs, costs)
    written: list[Path] = []
    sections: list[tuple[str, list[Path]]] = []  # (experiment or study, its files) for index.md
    present = runs.experiments()
    views = {name: select_view(runs, view) for name, view in VIEWS.items()}  # Figures 9–12: Figures 1–8's runs
    views = {name: picked for name, picked in views.items() if name not in present and len(picked.runs)}
    studies = []
    for path in find_studies(roots):
        try:
            studies.append(load_study(path))
        except BadFile as e:
            say_skipped(e)
    found = [*present, *views, *(str(st.meta.get("name", st.name)) for st in studies)]
    unknown = sorted(set(experiments or ()) - set(found))
    if unknown:
        raise ValueError(f"--experiment {', '.join(unknown)}: not among the experiments and studies found "
                         f"({', '.join(found) or 'none'})")
    for exp, r in [*((e, runs.select(e)) for e in present), *views.items()]:
        if experiments is None or exp in experiments:
            files = render_experiment(r, exp, out, steps, set(want), window, wall_note, costs)
            _say_if_empty(files, exp, want)
            written += files
            sections.append((exp, files))
    for st in studies:
        name = str(st.meta.get("name", st.name))
        if experiments is None or name in experiments:
            try:
                files = render_study(st, out, set(want))
            except BadFile as e:
                say_skipped(e)
                continue
            _say_if_empty(files, f"study {name}", want)
            written += files
            sections.append((f"study {name}", files))
    return [*written, write_index(out, sections)] if written else written


def _say_if_empty(files: list[Path], what: str, want: set[str]) -> None:
    if not files:
        print(f"curvlab report: {what}: nothing to render as {' and '.join(sorted(want))}", file=sys.stderr)


def _check_out(roots: list[str | Path], out: Path) -> None:
    """The report only reads its inputs: refuse an output folder that is, or lies inside, an input folder."""
    for p in (out, *out.parents):  # the first part that exists must be a folder
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"--out {str(out)!r}: {str(p)!r} is an existing file, not a folder; choose a folder "
                                 "(e.g. /tmp/report)")
            break
    o = out.resolve()
    for root in map(Path, roots):
        r = root.resolve()
        if o == r or r in o.parents:
            raise ValueError(f"--out {str(out)!r} lies inside the input folder {str(root)!r}; the report never "
                             "writes into its inputs: choose an output folder outside it (e.g. /tmp/report)")


def positive_int(text: str) -> int:
    """argparse type of counts and sizes (``--steps`` here, ``scripts/reproduce.py``'s): an integer ≥ 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _window(text: str) -> tuple[int, int]:
    """``2000:4000`` → (2000, 4000) for ``--error-steps``."""
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST:LAST update numbers like 2000:4000, got {text!r}") from None
    if a > b:
        raise argparse.ArgumentTypeError(f"FIRST must not exceed LAST, got {text!r}")
    return a, b


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``curvlab report``; returns the process exit code."""
    p = argparse.ArgumentParser(prog="curvlab report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run or study directories, or folders that contain them")
    p.add_argument("--out", default="results/report", help="output folder (default: results/report)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="average layer-wise errors over the first S logged updates (default: all logged)")
    p.add_argument("--error-steps", type=_window, default=None, metavar="FIRST:LAST",
                   help="average layer-wise errors over updates FIRST..LAST only, e.g. 3900:4000")
    p.add_argument("--only", choices=["tables", "figures"], default=None, help="render only tables or figures")
    p.add_argument("--experiment", action="append", default=None,
                   help="render only this experiment (repeatable); default: every one found")
    p.add_argument("--no-wall-note", action="store_true",
                   help="leave out the footnote of the time panels (measured or quiet-machine time)")
    p.add_argument("--step-costs", default=None, metavar="DIR",
                   help="the quiet Table 1 study (table1_measured) whose per-update costs give the time panels' "
                        "quiet-machine time (default: one under the inputs or in studies/ next to them)")
    p.add_argument("--measured-time", action="store_true",
                   help="draw the runs' measured (contended) solver time instead of quiet-machine time")
    a = p.parse_args(argv)
    want = {a.only} if a.only else {"tables", "figures"}
    try:
        files = report(a.runs, a.out, a.steps, want, a.experiment, a.error_steps,
                       None if a.no_wall_note else WALL_NOTE, a.step_costs, a.measured_time)
    except ValueError as e:
        print(f"curvlab report: error: {e}")
        return 2
    except OSError as e:  # the output folder: full, read-only, not creatable
        print(f"curvlab report: error: cannot write into --out {a.out}: {e.strerror or e} ({e.filename})")
        return 1
    if not files:
        print(f"curvlab report: nothing written into {a.out}: no run or study under {' '.join(a.runs)} renders "
              f"{' or '.join(sorted(want))} (runs need a summary.json, studies a study.json; see the lines above)")
        return 1
    for f in files:
        print(f)
    return 0
