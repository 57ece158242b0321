#!/usr/bin/env python
"""Convert finished runs' tables to the compact form: ``metrics.csv`` → ``metrics.csv.gz``.

The compact form (``log.compact=true``, what the campaign writes; :mod:`curvlab.runfiles`) is the
same CSV at float32 precision (≤ 9 significant digits: the runs train in float32, so no logged
quantity had more), gzip-compressed. ``curvlab report`` and ``pandas.read_csv`` read both forms.
Runs that are not finished (``summary.json`` status ``running`` or none) are left alone, since
their runner rewrites the tables; each conversion is atomic (the plain file is removed only
after the compact one is in place).

    python scripts/compact_record.py results/runs          # convert
    python scripts/compact_record.py results/runs --check  # sizes only, change nothing
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curvlab import runfiles as rf  # noqa: E402

TABLES = (rf.METRICS, rf.HESSIAN_ERRORS)


def finished(run_dir: Path) -> bool:
    """Whether the run's summary says it has stopped (completed, failed, diverged, …)."""
    try:
        status = json.loads((run_dir / rf.SUMMARY).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return False
    return status not in (None, "running")


def convert(run_dir: Path, dry_run: bool = False) -> tuple[int, int]:
    """Compact the plain tables of one run; (bytes before, bytes after) over its tables."""
    before = after = 0
    for name in TABLES:
        plain, packed = run_dir / name, run_dir / (name + rf.COMPACT_SUFFIX)
        if packed.is_file() and not plain.is_file():
            size = packed.stat().st_size
            before, after = before + size, after + size
            continue
        if not plain.is_file():
            continue
        text = plain.read_text(encoding="utf-8")
        data = rf.gzip_text(rf.compact_text(text))
        before, after = before + len(text.encode("utf-8")), after + len(data)
        if not dry_run:
            rf.atomic_write_bytes(packed, data)
            plain.unlink()
    return before, after


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="+", help="folders holding run directories (any depth)")
    p.add_argument("--check", action="store_true", help="print the sizes the conversion would give; change nothing")
    a = p.parse_args(argv)
    runs = sorted({s.parent for r in a.roots for s in Path(r).rglob(rf.SUMMARY)})
    if not runs:
        raise SystemExit(f"compact_record: no run directories (with {rf.SUMMARY}) under {a.roots}")
    total_before = total_after = skipped = 0
    for run_dir in runs:
        if not finished(run_dir):
            skipped += 1
            continue
        before, after = convert(run_dir, dry_run=a.check)
        total_before, total_after = total_before + before, total_after + after
    verb = "would be" if a.check else "are now"
    print(f"{len(runs) - skipped} finished run(s): tables of {total_before / 1e6:.1f} MB {verb} "
          f"{total_after / 1e6:.1f} MB; {skipped} unfinished run(s) left as they are")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
