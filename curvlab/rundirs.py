"""Where a run may write: checks on a run (or sweep) directory before anything is written to it.

A run directory may come from a shared results folder or a downloaded record, so its
content is not trusted: a symbolic link planted there (``.lock``, ``train.log``,
``.hydra/config.yaml``) would make the next run write through it into any file the user
can write. :func:`check_run_dir` refuses such a directory, naming the link, and refuses
paths that cannot be a run directory (the working directory or above it, a file, a device,
a path under a file, names longer than the file system allows, ``/proc``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

__all__ = ["RunDirError", "check_run_dir", "links_in", "os_error_line"]

_PSEUDO = ("/proc", "/sys", "/dev")  # kernel file systems; /dev/shm is an ordinary tmpfs
_FIX = "pass run_dir=PATH (a directory of its own, e.g. under runs/)"


class RunDirError(ValueError):
    """A path that cannot be a run directory, or a directory holding links; the message names it."""


def links_in(directory: Path, depth: int = 2) -> list[Path]:
    """Symbolic links in ``directory`` and its subdirectories down to ``depth`` levels (not followed)."""
    found: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:  # not a directory (yet): nothing in it
        return found
    for entry in entries:
        if entry.is_symlink():
            found.append(Path(entry.path))
        elif depth > 1 and entry.is_dir(follow_symlinks=False):
            found += links_in(Path(entry.path), depth - 1)
    return sorted(found)


def check_run_dir(path: Any, what: str = "run_dir", depth: int = 2) -> Path:
    """The absolute run directory ``path``, after refusing every case in the module docstring.

    ``depth`` is how deep links are looked for: 2 for a run (``.hydra/``), 3 for a sweep
    directory (``<job>/.hydra/``).

    Raises:
        RunDirError: naming ``what`` (the field), the path, the reason and the fix.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise RunDirError(f"{what}={path!r}: must be one path (a string), got {type(path).__name__}; {_FIX}")
    text = os.fspath(path)
    if not text.strip() or "\0" in text:
        raise RunDirError(f"{what}={text!r}: an empty path would write the run into the working directory; {_FIX}")
    here = Path.cwd()
    full = Path(os.path.abspath(text))
    if full == here or full in here.parents:
        raise RunDirError(
            f"{what}={text!r} is the working directory {here} or above it: a run writes .hydra/, train.log and "
            f"its files there; {_FIX}"
        )
    _check_parents(full, text, what)
    real = os.path.realpath(full)
    if any(real == p or real.startswith(p + "/") for p in _PSEUDO) and not real.startswith("/dev/shm/"):
        raise RunDirError(f"{what}={text!r} lies in the kernel's file system {real}, where no run can be written; {_FIX}")
    if os.path.isdir(full):
        links = links_in(full, depth)
        if links:
            link = links[0]
            raise RunDirError(
                f"{what}={text!r}: {link} is a symbolic link (to {os.readlink(link)}); curvlab never writes through "
                f"links, which could overwrite a file elsewhere: remove {'it' if len(links) == 1 else f'the {len(links)} links'} "
                f"or {_FIX}"
            )
    return full


def _check_parents(full: Path, text: str, what: str) -> None:
    """Refuse a path that is, or lies under, an existing non-directory, or whose names are too long."""
    existing = full
    while not os.path.exists(existing) and existing != existing.parent:  # False, not an error, for too long names
        existing = existing.parent
    if existing == full and not os.path.isdir(full):
        kind = "a file" if os.path.isfile(full) else "not a directory (a device or other special file)"
        raise RunDirError(f"{what}={text!r}: {full} is {kind}; {_FIX}")
    if not os.path.isdir(existing):
        raise RunDirError(f"{what}={text!r}: {existing} is a file, so nothing can be created under it; {_FIX}")
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    new_parts = full.relative_to(existing).parts
    long = next((p for p in new_parts if len(os.fsencode(p)) > name_max), None)
    if long is not None or len(os.fsencode(str(full))) >= path_max:
        detail = f"the name {long[:40]}… has {len(os.fsencode(long))} bytes" if long else f"the path has {len(str(full))} characters"
        raise RunDirError(
            f"{what}: {detail}, more than the file system allows ({name_max} per name, {path_max} per path); "
            "use a shorter experiment_name or run_dir"
        )


_CAUSES = {
    errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def os_error_line(err: OSError, directory: Any) -> str:
    """One line for a failed write under ``directory``: the file, the cause and what to do."""
    cause = _CAUSES.get(err.errno or 0, err.strerror or str(err))
    where = f" ({err.filename})" if err.filename else ""
    return (
        f"cannot write the run directory {directory}{where}: {cause}; free space, fix the permissions or pass "
        "another run_dir, then rerun the same command (a run resumes from its last checkpoint)"
    )
