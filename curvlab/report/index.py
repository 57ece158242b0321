"""``index.md``: every file one report wrote, grouped by experiment, one line each saying what it is.

The lines come from the files themselves: a table's Markdown caption (its first line), a figure's
title and caption from the PNG's metadata (:func:`curvlab.report.figures.save` puts them there);
the CSV, LaTeX and PDF twins point at the Markdown table or PNG figure of the same name.
"""

from __future__ import annotations

from pathlib import Path

from curvlab.report.escape import md_text
from curvlab.report.files import MAX_TEXT, new_file, read_bytes
from curvlab.report.styles import natural_key

__all__ = ["describe", "write_index", "INDEX"]

INDEX = "index.md"
_TWINS = {".csv": ("the table {stem}.md as CSV", ".md"), ".tex": ("the table {stem}.md as LaTeX (booktabs)", ".md"),
          ".pdf": ("the figure {stem}.png as PDF (vector)", ".png")}


def describe(path: Path, written: set[str] | None = None) -> str:
    """One line of Markdown saying what ``path`` (a file the report just wrote) shows; ``written``: the names
    of the other files written (a CSV without its Markdown table is a table too long to show)."""
    twin = _TWINS.get(path.suffix)
    if twin and (written is None or path.stem + twin[1] in written):
        return twin[0].format(stem=path.stem)
    if path.suffix == ".csv":
        return "table (CSV only: too many rows for a Markdown table)"
    if path.suffix == ".md":  # write_table's first line is the caption in bold, already escaped for Markdown
        head = read_bytes(path, MAX_TEXT).decode("utf-8", "replace").split("\n", 1)[0].strip()
        return "table: " + head.strip("*") if head.startswith("**") else "table"
    if path.suffix == ".png":
        from PIL import Image  # matplotlib's own dependency

        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {})
        title, cap = text.get("Title", ""), text.get("Description", "")
        return md_text("figure: " + " — ".join(t for t in (title, cap) if t)) if title or cap else "figure"
    return "file"


def _earlier_sections(out: Path, name: str) -> dict[str, list[str]]:
    """The sections of an ``index.md`` already in ``out`` (heading → its entry lines, for files that still
    exist), so that a report of some experiments keeps the others' entries."""
    path = out / name
    if not path.is_file() or path.is_symlink():
        return {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in read_bytes(path, MAX_TEXT).decode("utf-8", "replace").splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:], [])
        elif current is not None and line.startswith("- [`") and "`](" in line:
            target = line.split("`](", 1)[1].split(")", 1)[0]
            if "/" not in target and (out / target).is_file():
                current.append(line)
    return {k: v for k, v in sections.items() if v}


def write_index(out: Path, sections: list[tuple[str, list[Path]]]) -> Path:
    """Write ``out/index.md`` listing ``sections`` (experiment or study name, the files it wrote); returns its path.

    Sections of an earlier index in ``out`` for experiments not rendered now are kept (their files
    still there), so rendering one experiment into a full report's folder leaves the rest listed.
    Where an output already took the name ``index.md`` (an experiment called ``index``), the index is
    ``index_of_files.md``.
    """
    taken = {p.name for _, files in sections for p in files}
    name = INDEX if INDEX not in taken else "index_of_files.md"
    merged = _earlier_sections(out, name)
    for what, files in sections:
        if files:
            merged[md_text(what)] = [f"- [`{p.name}`]({p.name}): {describe(p, taken)}" for p in files]
    total = sum(len(entries) for entries in merged.values())
    lines = ["# Report index", "", f"Every file of this report ({total}), by experiment or study. "
             "Tables come as Markdown, CSV and LaTeX; figures as PNG and PDF.", ""]
    for what in sorted(merged, key=natural_key):
        lines += [f"## {what}", "", *merged[what], ""]
    with new_file(out, name) as f:
        f.write("\n".join(lines).encode())
    return out / name
