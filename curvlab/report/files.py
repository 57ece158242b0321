"""The report's file boundary: run files read with bounds, outputs written without following links.

Run and study folders may come from elsewhere (a shared results folder, a downloaded record),
so the report treats what they hold as hostile (issue 23):

- reading: only regular files (a FIFO would block, a device never ends), at most
  :data:`MAX_TEXT` bytes of JSON/YAML and :data:`MAX_CSV` of CSV, UTF-8 only; JSON and YAML
  nested at most :data:`MAX_DEPTH` deep, YAML at most :data:`MAX_NODES` nodes once its aliases
  are expanded (a 371-byte "billion laughs" expands to 9⁹ ≈ 4·10⁸), no recursive aliases, no Python tags
  (``yaml.SafeLoader``). A file that breaks a rule raises :class:`BadFile` naming it and the rule.
- writing: output names are sanitised (:func:`safe_name`: no path separators, no leading dot),
  and each output is written to a fresh temporary file in the output folder and renamed over its
  name, so a symlink planted under an output's name is refused, never written through.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pandas as pd
import yaml

__all__ = ["BadFile", "UnsafeOutput", "MAX_TEXT", "MAX_CSV", "MAX_DEPTH", "MAX_NODES", "read_bytes", "load_json",
           "load_yaml", "read_csv", "safe_name", "new_file"]

MAX_TEXT = 16 << 20  # summary.json, config.yaml, study.json (those runs write are < 2 kB)
MAX_CSV = 512 << 20  # metrics.csv, hessian_errors.csv, a study's data (the record's largest is < 20 MB)
MAX_DEPTH = 64  # nesting of JSON arrays/objects and YAML sequences/mappings (a config.yaml nests 3 deep)
MAX_NODES = 100_000  # YAML nodes after alias expansion (a config.yaml has ~150)


class BadFile(ValueError):
    """A run or study file the report cannot use; ``str()`` is ``<path>: <reason>``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


class UnsafeOutput(ValueError):
    """An output the report will not write (its name is taken by a symbolic link)."""


def _open_regular(path: Path, limit: int) -> BinaryIO:
    """``path`` opened for reading if it is a regular file of at most ``limit`` bytes (links followed)."""
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise BadFile(path, f"cannot open ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadFile(path, "not a regular file (a folder, FIFO or device)")
    if st.st_size > limit:
        os.close(fd)
        raise BadFile(path, f"{st.st_size:,} bytes, more than the {limit:,} the report reads")
    return os.fdopen(fd, "rb")


def read_bytes(path: str | Path, limit: int = MAX_TEXT) -> bytes:
    """The content of a regular file of at most ``limit`` bytes (also if it grows while read)."""
    with _open_regular(Path(path), limit) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BadFile(path, f"more than the {limit:,} bytes the report reads")
    return data


def _text(path: Path, limit: int) -> str:
    return _utf8(read_bytes(path, limit), path)


def _utf8(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadFile(path, f"not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings (skipped) and brackets


def load_json(path: str | Path, kind: type = dict) -> Any:
    """A JSON file whose top level is a ``kind`` (an object by default), nested ≤ :data:`MAX_DEPTH` deep."""
    path = Path(path)
    text = _text(path, MAX_TEXT)
    if text.count("[") + text.count("{") > MAX_DEPTH:  # only then can it nest too deep
        depth = 0
        for m in _JSON_TOKENS.finditer(text):
            c = m.group()
            depth += 1 if c in "[{" else -1 if c in "]}" else 0
            if depth > MAX_DEPTH:
                raise BadFile(path, f"JSON nested more than {MAX_DEPTH} levels deep")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadFile(path, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise BadFile(path, "JSON nested too deep") from None
    if not isinstance(value, kind):
        raise BadFile(path, f"holds a JSON {type(value).__name__}, expected an {'object' if kind is dict else kind}")
    return value


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    return what + (f" at line {mark.line + 1} column {mark.column + 1}" if mark else "")


def _check_yaml_events(text: str, path: Path) -> None:
    """Walk the parser's events (no tree is built): depth, expanded node count and aliases stay bounded."""
    sizes: list[int] = [0]  # expanded nodes of each open collection
    anchors: dict[str, int] = {}  # finished anchors → their expanded size
    open_anchors: list[str | None] = []
    total = 0
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(ev, yaml.AliasEvent):
            if ev.anchor not in anchors:
                raise BadFile(path, f"YAML alias *{ev.anchor} refers to its own or an unknown anchor")
            n = anchors[ev.anchor]
        elif isinstance(ev, yaml.ScalarEvent):
            n = 1
            if ev.anchor:
                anchors[ev.anchor] = 1
        elif isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(sizes) > MAX_DEPTH:
                raise BadFile(path, f"YAML nested more than {MAX_DEPTH} levels deep")
            sizes.append(1)
            open_anchors.append(ev.anchor)
            total += 1
            continue
        elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            n = sizes.pop()
            anchor = open_anchors.pop()
            if anchor:
                anchors[anchor] = n
            sizes[-1] += n
            continue
        else:
            continue
        sizes[-1] += n
        total += n
        if total > MAX_NODES:
            raise BadFile(path, f"YAML expands to more than {MAX_NODES:,} nodes (nested aliases)")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping (empty file: ``{}``), read with :class:`yaml.SafeLoader` within the bounds above."""
    path = Path(path)
    text = _text(path, MAX_TEXT)
    try:
        _check_yaml_events(text, path)
        value = yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506  (SafeLoader: no Python objects)
    except yaml.YAMLError as e:
        raise BadFile(path, f"not valid YAML ({_yaml_problem(e)})") from None
    except RecursionError:
        raise BadFile(path, "YAML nested too deep") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadFile(path, f"holds a YAML {type(value).__name__}, expected a mapping of config fields")
    return value


def read_csv(path: str | Path) -> pd.DataFrame | None:
    """A CSV file (or its gzip-compacted ``.gz``) as a frame; None when it is missing or empty."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    data = read_bytes(path, MAX_CSV)
    if path.suffix == ".gz":  # a compacted table (scripts/compact_record.py): bound what it inflates to
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as z:
                data = z.read(MAX_CSV + 1)
        except (OSError, EOFError) as e:
            raise BadFile(path, f"not a readable gzip file ({e})") from None
        if len(data) > MAX_CSV:
            raise BadFile(path, f"inflates to more than the {MAX_CSV:,} bytes the report reads")
    text = _utf8(data, path)
    if not text.strip():
        return None
    try:
        return pd.read_csv(io.StringIO(text))
    except pd.errors.EmptyDataError:
        return None
    except pd.errors.ParserError as e:
        raise BadFile(path, f"malformed CSV ({str(e).strip()})") from None


_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_name(name: object) -> str:
    """A file-name stem from run text: ``[A-Za-z0-9._=+-]`` only, no leading dot, at most 200 characters.

    Names that are already safe (every name the project's presets give) are unchanged; any
    other gets a short hash of the original, so that two different names never share outputs.

    >>> safe_name("eacg_table2"), safe_name("../../escaped")
    ('eacg_table2', '_.._.._escaped-75a5a428')
    """
    text = str(name)
    clean = _UNSAFE.sub("_", text)
    if clean.startswith("."):
        clean = "_" + clean
    if clean == text and 0 < len(clean) <= 200:  # 200 + a suffix stays under the 255 bytes of a file name
        return clean
    return f"{clean[:100]}-{hashlib.sha1(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


@contextlib.contextmanager
def new_file(out_dir: Path, filename: str) -> Iterator[BinaryIO]:
    """Write ``out_dir/filename`` through a fresh temporary file renamed over it (an existing regular
    file is replaced; a symbolic link under that name is refused, its target left untouched)."""
    path = out_dir / filename
    if path.is_symlink():
        raise UnsafeOutput(f"{path} is a symbolic link; the report does not write through links: remove it "
                         "or choose another --out")
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{filename[:60]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would create it (mkstemp makes 0600)
        os.replace(tmp, path)  # replaces a name, never writes through a link planted meanwhile
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
