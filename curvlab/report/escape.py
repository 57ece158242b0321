"""Escaping per output format: text from run files is shown, never obeyed (issue 23).

Labels, run names, statuses and experiment names come from files that runs (or anyone who
can write a run folder) wrote, and reach the report's Markdown, CSV and LaTeX as text:

- Markdown: HTML tags and entities are escaped and line breaks become spaces (``|`` is
  escaped by the table writer, where it would split a cell);
- CSV: a text cell that a spreadsheet would run as a formula gets a leading ``'`` (OWASP's
  CSV-injection rule), while numbers, and text that reads as one, stay as they are;
- LaTeX: every special character prints as itself (``\\input{…}``, ``\\write18`` stay text).
"""

from __future__ import annotations

import re

import pandas as pd

__all__ = ["md_text", "tex_text", "csv_cell", "csv_safe"]

_HTML = re.compile(r"<(?=[A-Za-z/!?])|&(?=#?\w+;)")  # a tag or an entity starts here (a bare "<=" is text)
_LINE_BREAK = re.compile(r"[\r\n\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TEX = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
        "^": r"\textasciicircum{}", "_": r"\_", "~": r"\textasciitilde{}", "%": r"\%", "±": r"$\pm$", "|": r"$|$"}
_TEX_SPECIAL = re.compile("|".join(map(re.escape, _TEX)))
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula
_NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf|nan)"
_NUMBER_TEXT = re.compile(rf"{_NUMBER}(?: ± {_NUMBER})?|-")  # "-0.5", "1.2 ± 0.3", the "-" of an empty cell


def md_text(v: object) -> str:
    """Markdown text of a cell or caption: HTML tags and entities escaped, one line."""
    return _HTML.sub(lambda m: "&lt;" if m.group() == "<" else "&amp;", _LINE_BREAK.sub(" ", str(v)))


def tex_text(s: str) -> str:
    """LaTeX text: every special character (``\\ { } $ & # ^ _ ~ %``) printed as itself, never obeyed."""
    return _TEX_SPECIAL.sub(lambda m: _TEX[m.group()], _LINE_BREAK.sub(" ", s))


def csv_cell(v: object) -> object:
    """A CSV cell that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@`` first) gets a
    leading ``'``; numbers, and text that is a number (``-0.5``, ``1.2 ± 0.3``, ``-``), stay as they are."""
    if isinstance(v, str) and v.startswith(_FORMULA_START) and not _NUMBER_TEXT.fullmatch(v):
        return "'" + v
    return v


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with :func:`csv_cell` applied to its text cells, index and header (numeric columns untouched)."""
    text = lambda v: v.dtype == object or pd.api.types.is_string_dtype(v.dtype)  # noqa: E731
    header = [csv_cell(c) for c in df.columns]
    out = df.set_axis(range(df.shape[1]), axis=1)  # positions: column names may repeat
    for i in out.columns:
        if text(out[i]):
            out[i] = out[i].map(csv_cell)
    if text(out.index):
        out.index = out.index.map(csv_cell)
    out.index.name = csv_cell(df.index.name)
    return out.set_axis(header, axis=1)
