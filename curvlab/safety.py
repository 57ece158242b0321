"""What ``curvlab train`` refuses before Hydra acts, and how a sweep job ends with its launcher.

* ``experiment_name`` is a directory name under ``runs/``: no path separators, ``.`` or ``..``.
* ``run_dir=''`` would make Hydra write the run into the working directory (the checkout).
* Overrides that make Hydra instantiate objects (``hydra.callbacks``, any ``_target_``) run
  arbitrary code from a command line; they are refused unless ``CURVLAB_ALLOW_HYDRA_CALLBACKS=1``
  (README, "Safety").
* A sweep job running in a worker process (joblib/loky, submitit) exits when the process that
  launched it dies (:func:`exit_with_parent`), instead of training on for hours.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any, Iterable

__all__ = ["ALLOW_ENV", "LAUNCHER_ENV", "check_experiment_name", "check_overrides", "exit_with_parent", "launcher_id"]

ALLOW_ENV = "CURVLAB_ALLOW_HYDRA_CALLBACKS"
LAUNCHER_ENV = "CURVLAB_LAUNCHER_PID"  # set by `curvlab train` for the processes it launches


def check_experiment_name(name: Any) -> None:
    """Raise ``ValueError`` unless ``name`` is a plain directory name (it goes under ``runs/``)."""
    text = str(name)
    if not text or text in (".", "..") or any(c in text for c in ("/", "\\", "\0")):
        raise ValueError(
            f"experiment_name={text!r}: must be a plain name (no '/', '\\', '.' or '..'), because the run "
            "goes to runs/<experiment_name>/; to write elsewhere pass run_dir=PATH"
        )


def _values(override: Any) -> list[Any]:
    """The value(s) of a parsed override (every choice of a sweep)."""
    if override.is_sweep_override():
        try:
            return list(override.sweep_string_iterator())
        except Exception:  # an interval sweep: no strings to check
            return []
    return [override.value()]


def _instantiates(override: Any) -> bool:
    """Whether Hydra would instantiate (import and call) something named by this override."""
    key = override.key_or_group
    if key.startswith(("hydra.callbacks", "hydra/callbacks")):
        return True
    return "_target_" in (override.input_line or "")


def check_overrides(argv: Iterable[str]) -> None:
    """Refuse the command-line overrides listed in the module docstring, before Hydra runs.

    Flags (``-m``, ``--config-name X``) and anything Hydra cannot parse are left to Hydra.

    Raises:
        ValueError: names the override and the fix.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    allow_instantiation = os.environ.get(ALLOW_ENV, "") == "1"
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            (override,) = parser.parse_overrides([arg])
        except Exception:  # Hydra reports its own parse errors
            continue
        key = override.key_or_group
        if _instantiates(override) and not allow_instantiation:
            raise ValueError(
                f"{arg}: overrides that make Hydra instantiate objects (hydra.callbacks, _target_) run code "
                f"from the command line and are refused; set {ALLOW_ENV}=1 to allow them"
            )
        if key == "experiment_name":
            for value in _values(override):
                check_experiment_name(value)
        if key == "run_dir" and any(v is not None and str(v).strip() == "" for v in _values(override)):
            raise ValueError(
                "run_dir='': an empty run_dir would write the run into the working directory; pass "
                "run_dir=PATH, or leave it out (runs/<experiment_name>/<time>)"
            )


_WATCHING = False


def exit_with_parent(poll: float = 1.0) -> None:
    """Exit this process (as if killed: resumable) soon after the process that launched it dies.

    A joblib (loky) worker is a child of the ``curvlab train -m`` process; when that one is
    killed the worker is re-parented, which ``os.getppid`` shows. A ``submitit_local`` job is a
    child of submitit's controller, which outlives the launcher: so the launcher's pid
    (``CURVLAB_LAUNCHER_PID``, inherited through the environment) is watched as well. The run
    directory's lock is released by the OS and the run resumes from its last checkpoint.
    """
    global _WATCHING
    if _WATCHING:
        return
    _WATCHING = True
    parent = os.getppid()
    launcher = _launcher(os.environ.get(LAUNCHER_ENV, ""))

    def watch() -> None:
        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                gone = parent
            elif launcher is not None and not _alive(*launcher):
                gone = launcher[0]
            else:
                continue
            print(f"curvlab: launcher process {gone} is gone; stopping job process {os.getpid()}",
                  file=sys.stderr, flush=True)
            os._exit(143)  # like SIGTERM's exit status; no cleanup that could write half a file

    threading.Thread(target=watch, name="curvlab-exit-with-parent", daemon=True).start()


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a reused pid apart), or None when it is gone or a zombie."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def launcher_id(pid: int) -> str:
    """The ``CURVLAB_LAUNCHER_PID`` value for launcher process ``pid`` of this machine: ``PID@HOST``."""
    return f"{pid}@{socket.gethostname()}"


def _launcher(value: str) -> tuple[int, str | None] | None:
    """``(pid, start time)`` of the launcher named by ``CURVLAB_LAUNCHER_PID``; None when unset, us, bad,
    or on another host: a SLURM or Ray job on a compute node inherits the login node's pid, which
    means nothing there (it would stop every job at once)."""
    pid, _, host = value.partition("@")
    if not pid.isdigit() or int(pid) in (os.getpid(), 0) or (host and host != socket.gethostname()):
        return None
    return int(pid), _start_time(int(pid))


def _alive(pid: int, started: str | None) -> bool:
    if started is None:  # no /proc: signal 0 says whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return _start_time(pid) == started
