"""What a checkpoint must hold before a run resumes from it.

:func:`curvlab.runfiles.load_checkpoint` proves that a checkpoint loads without running code
and that its content matches its checksum; but whoever can write the run directory can also
recompute the checksum. So the content is checked against the run itself: the top-level
fields and their types, the net's parameter names and shapes, and the solver's state
against a freshly built solver of the same config. The data the run trained on are checked
by their fingerprint (:func:`curvlab.data.Dataset.fingerprint`), so that a resume on a
replaced data file is refused. Each error names the part that does not fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from curvlab.runfiles import CheckpointError

__all__ = ["check_state", "check_solver_state", "check_data"]

# field -> allowed types (None where a field may be missing in older checkpoints)
_FIELDS: dict[str, tuple[type, ...]] = {
    "config": (dict,), "net": (dict,), "solver": (dict,), "rng": (torch.Tensor,), "batch_rng": (torch.Tensor,),
    "perm": (torch.Tensor,), "pos": (int,), "step": (int,), "wall_time": (float, int),
    "initial_loss": (float, int, type(None)), "metrics": (list,), "hessian_rows": (list,),
}


def _fix(path: Path) -> str:
    return f"start this run over with resume=false (or move {path.name} away)"


def check_state(state: Mapping[str, Any], net: torch.nn.Module, n_train: int, steps_per_epoch: int, path: Path) -> None:
    """Refuse a checkpoint whose fields, net parameters or batch position do not fit this run.

    Raises:
        CheckpointError: naming the field (``net``: the parameter and both shapes).
    """
    bad = f"{path} does not fit this run:"
    for key, types in _FIELDS.items():
        if key not in state:
            raise CheckpointError(f"{bad} it lacks the field {key!r}; {_fix(path)}")
        value = state[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise CheckpointError(
                f"{bad} field {key!r} is a {type(value).__name__}, expected {' or '.join(t.__name__ for t in types)}; "
                f"{_fix(path)}"
            )
    own = net.state_dict()
    stored = state["net"]
    missing, extra = sorted(set(own) - set(stored)), sorted(set(stored) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"{bad} net parameters {', '.join(missing) or '-'} missing, {', '.join(map(str, extra)) or '-'} unknown; "
            f"{_fix(path)}"
        )
    for name, tensor in own.items():
        theirs = stored[name]
        if not isinstance(theirs, torch.Tensor) or theirs.shape != tensor.shape or not theirs.dtype.is_floating_point:
            got = f"shape {tuple(theirs.shape)} {theirs.dtype}" if isinstance(theirs, torch.Tensor) else type(theirs).__name__
            raise CheckpointError(f"{bad} net.{name} is {got}, the net needs shape {tuple(tensor.shape)}; {_fix(path)}")
    perm, pos, step = state["perm"], state["pos"], state["step"]
    if perm.dtype != torch.long or perm.ndim != 1 or (len(perm) and len(perm) != n_train):
        raise CheckpointError(f"{bad} perm has shape {tuple(perm.shape)} {perm.dtype}, expected ({n_train},) int64; {_fix(path)}")
    if len(perm) and (int(perm.min()) < 0 or int(perm.max()) >= n_train):
        raise CheckpointError(f"{bad} perm holds indices outside 0..{n_train - 1}; {_fix(path)}")
    if not 0 <= pos < steps_per_epoch or step < 0:
        raise CheckpointError(f"{bad} pos={pos}, step={step} (an epoch has {steps_per_epoch} batches); {_fix(path)}")
    for key in ("rng", "batch_rng"):
        if state[key].dtype != torch.uint8 or state[key].ndim != 1:
            raise CheckpointError(f"{bad} {key} is not a random generator state (uint8 vector); {_fix(path)}")
    if not all(isinstance(r, dict) for r in [*state["metrics"], *state["hessian_rows"]]):
        raise CheckpointError(f"{bad} metrics/hessian_rows hold other values than rows (dicts); {_fix(path)}")


def _compare(fresh: Any, stored: Any, where: str) -> str | None:
    """Where ``stored`` departs from the structure of ``fresh`` (tensors: shape and dtype), or None."""
    if isinstance(fresh, torch.Tensor):
        if not isinstance(stored, torch.Tensor):
            return f"{where} is a {type(stored).__name__}, expected a tensor"
        if stored.shape != fresh.shape or stored.dtype.is_floating_point != fresh.dtype.is_floating_point:
            return f"{where} has shape {tuple(stored.shape)} {stored.dtype}, expected {tuple(fresh.shape)} {fresh.dtype}"
        return None
    if isinstance(fresh, Mapping):
        if not isinstance(stored, Mapping):
            return f"{where} is a {type(stored).__name__}, expected a mapping"
        for key in fresh:
            if key not in stored:
                return f"{where} lacks {key!r}"
            found = _compare(fresh[key], stored[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(fresh, (list, tuple)):
        if not isinstance(stored, (list, tuple)) or len(stored) != len(fresh):
            return f"{where} is {type(stored).__name__} of other length, expected {len(fresh)} entries"
        return next((m for m in (_compare(f, s, f"{where}[{i}]") for i, (f, s) in enumerate(zip(fresh, stored))) if m), None)
    if fresh is not None and stored is not None and isinstance(fresh, (int, float)) != isinstance(stored, (int, float)):
        return f"{where} is a {type(stored).__name__}, expected a {type(fresh).__name__}"
    return None


def check_solver_state(solver: Any, stored: Mapping[str, Any], net: torch.nn.Module, path: Path) -> None:
    """Load ``stored`` into ``solver`` after comparing it with the fresh solver's own state.

    Raises:
        CheckpointError: naming the part of the solver state that does not fit.
    """
    bad = f"{path} does not fit this run's solver ({type(solver).__name__}):"
    found = _compare(solver.state_dict(), stored, "solver")
    params = [p.shape for p in net.parameters()]
    optim = stored.get("optim") if isinstance(stored, Mapping) else None
    for idx, buffers in ((optim or {}).get("state") or {}).items() if isinstance(optim, Mapping) else ():
        for name, value in (buffers.items() if isinstance(buffers, Mapping) else ()):
            if isinstance(value, torch.Tensor) and value.ndim and (
                not isinstance(idx, int) or not 0 <= idx < len(params) or value.shape != params[idx]
            ):
                found = found or f"solver.optim.state[{idx}].{name} has shape {tuple(value.shape)}, no parameter has it there"
    if found:
        raise CheckpointError(f"{bad} {found}; {_fix(path)}")
    try:
        solver.load_state_dict(dict(stored))
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        raise CheckpointError(f"{bad} loading it raised {type(err).__name__}: {err}; {_fix(path)}") from None


def check_data(stored: Any, fingerprint: Mapping[str, str], path: Path) -> None:
    """Refuse a resume on data other than those the run trained on (checkpoints before this check have none).

    Raises:
        ValueError: naming the data file (or source) and both fingerprints.
    """
    if not isinstance(stored, Mapping) or stored.get("sha256") == fingerprint["sha256"]:
        return
    raise ValueError(
        f"resume: the data at {fingerprint['source']} are not those this run trained on (sha256 "
        f"{fingerprint['sha256'][:16]}…, the checkpoint {path} has {str(stored.get('sha256'))[:16]}… from "
        f"{stored.get('source')}); put the original file back, or use a new run_dir"
    )
