"""The runner: a plain ``train(cfg)`` that writes one run directory (``docs/run_files.md``).

Everything a run needs to continue bit for bit is in ``checkpoint.pt``: parameters, solver
state, the global and batch-order RNG states, the current epoch's permutation and
position, counters and the CSV rows so far. A resumed run therefore replays exactly the
updates an uninterrupted run would have made (on CPU; CUDA kernels may be nondeterministic).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from curvlab import runfiles as rf
from curvlab.runfiles import RunDirBusy
from curvlab.config import RunConfig, Schedule, SolverConfig, field_default, parse_config, to_dict
from curvlab.data import Dataset, load_dataset
from curvlab.hessian_log import HessianLogger
from curvlab.hessian_log import summary_line as hessian_summary_line
from curvlab.loggers import RunLoggers
from curvlab.losses import Loss, make_loss
from curvlab.modules import Net, chain
from curvlab.nets import needs_images
from curvlab.registry import curvature_fields, solver_class
from curvlab.resume import check_data, check_solver_state, check_state
from curvlab.rundirs import RunDirError, check_run_dir, os_error_line
from curvlab.safety import check_experiment_name
from curvlab.threads import torch_threads

log = logging.getLogger("curvlab")

__all__ = ["TrainingFailed", "RunDirBusy", "train", "config_changes", "build_solver", "resolve_device", "lr_at", "evaluate"]

# Keys that may change between a run and its resumption (everything else must match); log.compact only
# chooses how the tables are stored (the rows are kept at full precision until written).
_RESUMABLE_CHANGES = {
    "resume", "run_dir", "device", "log.progress", "log.compact", "train.stop_after", "train.epochs", "train.max_steps",
    "train.checkpoint_every", "train.eval_batch_size", "train.flush_denormal", "train.threads",
    "logger.kinds", "logger.tensorboard_dir", "logger.mlflow_uri",
}


class TrainingFailed(RuntimeError):
    """The run stopped (NaN/Inf, diverging loss, a failed write); ``summary.json`` says why when it could be written."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``summary.json`` says ``interrupted``, and the message how to resume."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} but CUDA is not available; use device=cpu or device=auto")
    return torch.device(name)


def lr_at(cfg: RunConfig, step: int) -> float:
    """Learning rate of update ``step + 1``; exponential: lr · rate^(step // every) (Bakker et al.)."""
    lr, loop = cfg.solver.lr, cfg.train
    if loop.schedule is Schedule.EXPONENTIAL:
        return lr * loop.decay_rate ** (step // loop.decay_every)
    return lr


def build_solver(cfg: RunConfig, net: Net, loss: Loss) -> Any:
    """The configured solver; one that reads the ``curvature`` group (also as CR's base) gets
    ``cfg.curvature``, the only place a run's curvature is set (and what ``summary.json`` records)."""
    cls = solver_class(cfg.solver.name)
    return cls(net, loss, lr=cfg.solver.lr, **cls.with_curvature(cfg.solver.options, cfg.curvature))


@torch.no_grad()
def evaluate(net: Net, loss: Loss, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy over ``(x, y)``, in batches.

    A conv net on the CPU is evaluated through a channels-last copy of itself, fed channels-last
    images, where oneDNN's convolutions run ≈ 2× faster (mnist_2c2d, cifar10_3c3d); the values agree to
    float32 round-off, and the net that trains is left as it is.
    """
    images = x.dim() == 4 and x.device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in net.modules())
    if images:
        net = copy.deepcopy(net).to(memory_format=torch.channels_last)
    total, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        xb = x[i : i + batch_size]
        out = net(xb.contiguous(memory_format=torch.channels_last) if images else xb)  # (b, C)
        total += float(loss.values(out, y[i : i + batch_size]).sum())
        correct += int((out.argmax(-1) == y[i : i + batch_size]).sum())
    return total / len(y), correct / len(y)


def curvature_gap(net: Net) -> str | None:
    """Why the curvature recursion cannot walk ``net`` (a module without a rule), or None when it can;
    the first-order solvers train such a net all the same, without the Hessian-error logging."""
    try:
        chain(net)
    except (TypeError, ValueError) as err:
        return str(err).splitlines()[0]
    return None


class _Run:
    """The state of one run; :meth:`checkpoint` and :meth:`restore` are exact inverses."""

    def __init__(self, cfg: RunConfig, run_dir: Path) -> None:
        self.cfg, self.dir = cfg, run_dir
        self.started = time.perf_counter()  # this session's start (reset in _loop); elapsed = earlier sessions + this one
        self.device = resolve_device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype.value)
        torch.manual_seed(cfg.seed)
        images = needs_images(cfg.net.layers)  # a conv net takes (N, C, H, W)
        data = load_dataset(cfg.dataset, images=images)
        self.data: Dataset = data.to(self.device, self.dtype)
        n, n_test = len(data.y_train), len(data.y_test)
        # A fixed random training subset the size of the test set (DeepOBS, HBP) for train_loss.
        self.eval_idx = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 1))[:n_test]
        self.net = cfg.net.build(tuple(data.x_train.shape[1:]) if images else None)
        self.net.to(self.device, self.dtype)
        self.loss = make_loss(cfg.loss.name, **cfg.loss.options)
        gap = curvature_gap(self.net)
        if gap and curvature_fields(cfg.solver.name, cfg.solver.options):
            raise ValueError(f"solver={cfg.solver.name} needs the curvature recursion, which cannot walk this net yet "
                             f"({gap}); train it with a first-order solver (solver=sgd, adam, or cr on base sgd/adam)")
        self.solver = build_solver(cfg, self.net, self.loss)
        # a conv net's logging is sized by the logger itself (its notes say what it skipped)
        self.hessian = HessianLogger(
            [] if gap else cfg.log.hessian_kinds, cfg.curvature, self.loss, cfg.log.hessian_every,
            cfg.log.hessian_first, cfg.log.hessian_fisher_mc, cfg.log.hessian_fisher_types, cfg.log.hessian_hvp_budget,
        )
        if gap and cfg.log.hessian_kinds and (cfg.log.hessian_every or cfg.log.hessian_first):
            self.hessian.notes.append(f"log.hessian_*: no layer-wise Hessian errors on this net ({gap})")
        self.batches = torch.Generator().manual_seed(cfg.seed)  # batch order, on CPU for every device
        self.steps_per_epoch = math.ceil(n / cfg.train.batch_size)
        total = cfg.train.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.train.max_steps or total)
        self.step, self.pos, self.wall_time = 0, 0, 0.0
        self.saved_step = 0  # the update of the last checkpoint (a resume continues from there)
        self.elapsed_before, self.log_time = 0.0, 0.0  # seconds: earlier sessions; Hessian-error logging
        self.perm = torch.empty(0, dtype=torch.long)
        self.initial_loss: float | None = None
        self.metrics: list[dict[str, Any]] = []
        self.hessian_rows: list[dict[str, Any]] = []
        self.loggers: RunLoggers | None = None  # TensorBoard etc. (logger.kinds), opened when the loop starts

    # --- state -----------------------------------------------------------------------
    def checkpoint(self) -> None:
        state = {
            "config": to_dict(self.cfg), "net": self.net.state_dict(), "solver": self.solver.state_dict(),
            "rng": torch.get_rng_state(), "batch_rng": self.batches.get_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "perm": self.perm, "pos": self.pos, "step": self.step, "wall_time": self.wall_time,
            "elapsed": self.elapsed(), "log_time": self.log_time, "initial_loss": self.initial_loss, "metrics": self.metrics, "hessian_rows": self.hessian_rows,
            "data": self.data.fingerprint,
        }
        rf.save_checkpoint(self.dir / rf.CHECKPOINT, state)
        self.saved_step = self.step

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` after checking that it fits this run (:mod:`curvlab.resume`)."""
        path = self.dir / rf.CHECKPOINT
        check_state(state, self.net, len(self.data.y_train), self.steps_per_epoch, path)
        changed = config_changes(state["config"], to_dict(self.cfg))
        if changed:
            raise ValueError(
                f"resume: the config in {self.dir} differs in {', '.join(changed)}; "
                "use a new run_dir, or resume=false to start this directory over"
            )
        check_data(state.get("data"), self.data.fingerprint, path)
        if state["step"] > self.total_steps:  # the files must describe what ran, not the shorter run asked for
            raise ValueError(
                f"resume: {self.dir} already holds {state['step']} updates, more than the {self.total_steps} that "
                "train.max_steps/train.epochs ask for; pass at least as many to continue it, or use a new run_dir"
            )
        self.net.load_state_dict(state["net"])
        check_solver_state(self.solver, state["solver"], self.net, path)
        try:
            torch.set_rng_state(state["rng"])
            self.batches.set_state(state["batch_rng"])
        except RuntimeError as err:
            raise rf.CheckpointError(f"{path}: a random generator state does not load ({err}); start over with resume=false") from None
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.perm, self.pos, self.step = state["perm"], state["pos"], state["step"]
        self.wall_time, self.initial_loss = state["wall_time"], state["initial_loss"]
        self.elapsed_before, self.log_time = state.get("elapsed", 0.0), state.get("log_time", 0.0)
        self.metrics, self.hessian_rows = state["metrics"], state["hessian_rows"]
        self.saved_step = self.step

    def elapsed(self) -> float:
        """Seconds since the run started, over all its sessions (resumes)."""
        return self.elapsed_before + time.perf_counter() - self.started

    def times(self) -> dict[str, float]:
        """The time columns of ``metrics.csv`` and the summary (``wall_time``: solver steps only)."""
        return {"wall_time": self.wall_time, "elapsed": self.elapsed(), "log_time": self.log_time}

    # --- files -----------------------------------------------------------------------
    def write(self, status: str, failure: str | None = None) -> dict[str, Any]:
        """Rewrite the CSVs, then ``summary.json`` (last: a summary never announces rows not yet written)."""
        compact = self.cfg.log.compact
        rf.write_csv(self.dir / rf.METRICS, self.metrics, rf.METRIC_COLUMNS, compact=compact)
        rf.write_csv(self.dir / rf.HESSIAN_ERRORS, self.hessian_rows, rf.HESSIAN_COLUMNS, compact=compact)
        summary = self.summary(status, failure)
        rf.write_json(self.dir / rf.SUMMARY, summary)
        if self.loggers is not None:
            self.loggers.log(self.metrics, self.hessian_rows, summary)
        return summary

    def summary(self, status: str, failure: str | None) -> dict[str, Any]:
        """The content of ``summary.json`` (``docs/run_files.md``)."""
        last = next((r for r in reversed(self.metrics) if r.get("test_loss") is not None), {})
        cfg = self.cfg
        return {
            "status": status, "failure": failure, "steps": self.step,
            "epochs": self.step / self.steps_per_epoch, **self.times(),
            "train_loss": last.get("train_loss"), "test_loss": last.get("test_loss"), "test_acc": last.get("test_acc"),
            "experiment": cfg.experiment_name, "dataset": cfg.dataset.name.value, "loss": cfg.loss.name.value,
            "curvature": cfg.curvature.kind.value, "solver": cfg.solver.name, "seed": cfg.seed,
            "device": str(self.device), "threads": torch.get_num_threads(), "notes": list(self.hessian.notes),
        }

    def fail(self, reason: str) -> TrainingFailed:
        """Mark the run failed with ``reason`` (rows kept) and return the error to raise.

        When the files cannot be written (disk full, read-only), only ``summary.json`` is
        tried, so that the status says why whenever a small file still fits.
        """
        try:
            self.write("failed", reason)
        except OSError:
            try:
                rf.write_json(self.dir / rf.SUMMARY, self.summary("failed", reason))
            except OSError as err:
                reason += f" (summary.json could not be written either: {err})"
        return TrainingFailed(f"run {self.dir} failed: {reason}")

    # --- loop ------------------------------------------------------------------------
    def eval_row(self, row: dict[str, Any]) -> None:
        bs, d = self.cfg.train.eval_batch_size, self.data
        row["train_loss"], _ = evaluate(self.net, self.loss, d.x_train[self.eval_idx], d.y_train[self.eval_idx], bs)
        row["test_loss"], row["test_acc"] = evaluate(self.net, self.loss, d.x_test, d.y_test, bs)

    def log_hessian(self, x: torch.Tensor | None, y: torch.Tensor | None) -> None:
        """:meth:`_log_hessian`, timed; a NaN/Inf or breakdown in it fails the run like a NaN loss."""
        t0, noted = time.perf_counter(), len(self.hessian.notes)
        try:
            self._log_hessian(x, y)
        except (RuntimeError, ValueError, ArithmeticError) as err:
            raise self.fail(self._hessian_error(err)) from err
        finally:
            self.log_time += time.perf_counter() - t0
        for note in self.hessian.notes[noted:]:  # what the logger skipped and why, in the run's log too
            log.info("%s", note)

    def _hessian_error(self, err: Exception) -> str:
        """Why Hessian-error logging before update ``step + 1`` raised, and what to change."""
        where = f"Hessian-error logging before update {self.step + 1} raised {type(err).__name__}: {err}"
        if not all(bool(torch.isfinite(p).all()) for p in self.net.parameters()):
            return f"parameters are NaN/Inf after {self.step} updates ({where}); {stabilise_hint(self.cfg.solver)}"
        return (
            f"{where} -- the curvature of this batch is NaN/Inf or numerically singular; check the loss and solver "
            "options, train in float64 (dtype=float64), or turn the logging off (log.hessian_every=0 "
            "log.hessian_first=0)"
        )

    def _log_hessian(self, x: torch.Tensor | None, y: torch.Tensor | None) -> None:
        """Hessian errors on this batch; the Fisher's label sampling must not move the training RNG,
        so that a run trains the same with or without this logging."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(self.cfg.seed * 1_000_003 + self.step)
            if not self.cfg.log.hessian_batches:
                assert x is not None and y is not None  # the training batch
                self.hessian_rows += self.hessian.rows(self.net, x, y, self.step)
            n = len(self.data.y_train)
            for size in self.cfg.log.hessian_batches:  # fresh samples of the training set, off the training RNG
                idx = torch.randperm(n)[: min(int(size), n)].to(self.device)
                self.hessian_rows += self.hessian.rows(self.net, self.data.x_train[idx], self.data.y_train[idx], self.step)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos == 0:
            self.perm = torch.randperm(len(self.data.y_train), generator=self.batches)
        b = self.cfg.train.batch_size
        idx = self.perm[self.pos * b : (self.pos + 1) * b].to(self.device)
        return self.data.x_train[idx], self.data.y_train[idx]

    def fail_reason(self, loss: float, step: int) -> str | None:
        """Why the run must stop at update ``step`` (NaN/Inf or diverging ``loss``), or None."""
        if not math.isfinite(loss):
            return f"loss is {loss} at step {step}; {stabilise_hint(self.cfg.solver)}"
        limit = self.cfg.train.divergence_factor * max(self.initial_loss or 0.0, 1e-12)
        if loss > limit:
            return (
                f"diverged: loss {loss:.4g} at step {step} exceeds train.divergence_factor="
                f"{self.cfg.train.divergence_factor:g} × the initial loss {self.initial_loss:.4g}; "
                f"{stabilise_hint(self.cfg.solver)}"
            )
        return None

    def progress_line(self, row: Mapping[str, Any]) -> str:
        """One log line per evaluation, for when stderr is no terminal (nohup, SLURM, a pipe)."""
        batch = row.get("batch_loss")
        return (
            f"step {row['step']}/{self.total_steps} (epoch {row['epoch']:.2f}): "
            f"batch loss {'n/a' if batch is None else f'{batch:.4g}'}, train loss {row['train_loss']:.4g}, "
            f"test loss {row['test_loss']:.4g}, test acc {row['test_acc']:.4f}, {row['elapsed']:.1f} s elapsed "
            f"({row['wall_time']:.1f} s solver, {row['log_time']:.1f} s Hessian-error logging)"
        )

    def run(self) -> dict[str, Any]:
        """Train to the end (or ``train.stop_after``); a failed write (disk full) fails the run."""
        try:
            return self._loop()
        except KeyboardInterrupt:
            raise self.interrupted() from None
        except OSError as err:
            where = f" ({err.filename})" if err.filename else ""
            raise self.fail(
                f"writing the run files failed: {type(err).__name__}: {err.strerror or err}{where}; free disk "
                f"space or fix the permissions of {self.dir}, then rerun the same command to resume from the "
                "last checkpoint"
            ) from err

    def interrupted(self) -> RunInterrupted:
        """Ctrl-C: record ``interrupted`` (best effort) and return the one line to print."""
        line = f"interrupted at update {self.step}; resume with the same command"
        if self.saved_step != self.step:
            line += f" (it continues from the checkpoint at update {self.saved_step})"
        try:
            self.write("interrupted", line)
        except OSError:
            pass
        return RunInterrupted(line)

    def _loop(self) -> dict[str, Any]:
        cfg, loop = self.cfg, self.cfg.train
        self.loggers = RunLoggers(cfg.logger, self.dir, to_dict(cfg))  # MLflow's first store takes seconds
        self.started = time.perf_counter()  # elapsed times training, not start-up (imports, data, a worker's spawn)
        rf.atomic_write_text(self.dir / rf.CONFIG, OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
        if not self.metrics:  # step 0: evaluate the initialisation
            row: dict[str, Any] = {"step": 0, "epoch": 0.0, **self.times()}
            self.eval_row(row)
            self.initial_loss = row["train_loss"]
            self.metrics.append(row)
        tty = cfg.log.progress and sys.stderr.isatty()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not tty, desc=cfg.experiment_name, leave=False)
        # On a terminal the console's log lines go through tqdm (above the bar); train.log gets every line either way.
        console = contextlib.ExitStack()
        if tty:
            console.enter_context(logging_redirect_tqdm(loggers=[logging.getLogger()]))
        session_steps = 0
        try:
            while self.step < self.total_steps:
                x, y = self.next_batch()
                if self.hessian.due(self.step):
                    self.log_hessian(x, y)
                lr = lr_at(cfg, self.step)
                self.solver.lr = lr
                t0 = time.perf_counter()
                try:
                    res = self.solver.step(x, y)
                except (RuntimeError, ValueError, ArithmeticError) as err:  # numerical breakdown
                    raise self.fail(_step_error(err, self.step + 1, self.cfg.solver)) from err
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                self.wall_time += time.perf_counter() - t0
                reason = self.fail_reason(float(res.loss), self.step + 1)
                if reason is not None:
                    raise self.fail(reason)
                self.step, self.pos, session_steps = self.step + 1, self.pos + 1, session_steps + 1
                if self.pos == self.steps_per_epoch:
                    self.pos = 0
                row = {
                    "step": self.step, "epoch": round(self.step / self.steps_per_epoch, 6),
                    **self.times(), "batch_loss": float(res.loss), "step_size": float(res.step_size),
                    "lr": lr, **{k: float(v) for k, v in res.stats.items()},
                }
                last = self.step == self.total_steps
                if self.pos == 0 or last or (loop.eval_every and self.step % loop.eval_every == 0):
                    self.eval_row(row)
                    reason = self.fail_reason(row["train_loss"], self.step)
                    if reason is not None:
                        self.metrics.append(row)
                        raise self.fail(reason)
                    if cfg.log.progress:
                        log.info("%s", self.progress_line(row))
                self.metrics.append(row)
                bar.update(1)
                bar.set_postfix(loss=f"{res.loss:.4f}", refresh=False)
                if self.pos == 0 or last or self.step % loop.checkpoint_every == 0:
                    self.checkpoint()
                    self.write("running")
                if loop.stop_after and session_steps >= loop.stop_after and not last:
                    self.checkpoint()  # as if killed here: status stays "running"
                    return self.write("running")
        finally:
            bar.close()
            console.close()
        self.log_final_hessian()
        line = hessian_summary_line(self.hessian_rows)
        if line and cfg.log.progress:
            log.info("%s", line)
        self.checkpoint()
        return self.write("completed")

    def log_final_hessian(self) -> None:
        """Errors at the final θ^T too, when due and not yet logged (also on resuming a finished
        run), so that errors along training reach the last update. Only with fresh logging batches
        (``log.hessian_batches``): the errors on the training batch need a batch no update uses."""
        if not self.cfg.log.hessian_batches or not self.hessian.due(self.step):
            return
        if any(r["step"] == self.step for r in self.hessian_rows):
            return
        self.log_hessian(None, None)  # fresh samples: no training batch needed


# The options that damp a solver's step: EA-CG's and KFI's α, the exact inverse's damping, CR's cubic weight σ.
_DAMPING = ("alpha", "damping", "sigma")


def stabilise_hint(solver: SolverConfig) -> str:
    """What to change when a run's loss or parameters blow up: the step size, and the solver's damping where it
    has one (``lower solver.lr or raise solver.alpha`` for EA-CG and KFI; ``lower solver.lr`` for SGD)."""
    return " or ".join(["lower solver.lr", *_raise_damping(solver)])


def _raise_damping(solver: SolverConfig) -> list[str]:
    """``raise solver.<option>`` for each damping option the solver has (none for SGD or Adam)."""
    return [f"raise solver.{k}" for k in _DAMPING if k in solver.options]


def _step_error(err: Exception, step: int, solver: SolverConfig) -> str:
    """Why a solver step raised, with the fix for the numerical cases (singular pivots)."""
    reason = f"solver step {step} raised {type(err).__name__}: {err}"
    if isinstance(err, torch.linalg.LinAlgError) or "singular" in str(err) or "is zero" in str(err):
        reason += (" -- the damped curvature matrix is numerically singular or not positive definite; "
                   + " or ".join([*_raise_damping(solver), "train in float64 (dtype=float64)", "lower solver.lr"]))
    return reason


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The dotted fields in which config ``new`` would not continue the run made with ``old``.

    Bookkeeping (:data:`_RESUMABLE_CHANGES`: run length, threads, paths of the run itself) may change,
    and a field added to the schema after ``old`` was written may appear at its default.
    """
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUMABLE_CHANGES
                  and not (k not in a and b[k] == field_default(k)))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def train(cfg: RunConfig | Mapping[str, Any], run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train one run and write its directory; returns the content of ``summary.json``.

    Args:
        cfg: a validated :class:`RunConfig`, or a plain/Omega mapping to validate.
        run_dir: output directory; defaults to ``cfg.run_dir``.

    Raises:
        ValueError: bad config or data, an untrustworthy checkpoint (before any training).
        RunDirBusy: another process is running in ``run_dir`` (nothing touched).
        TrainingFailed: NaN/Inf, diverging loss or a failed write (status ``failed`` when it could be written).
    """
    if not isinstance(cfg, RunConfig):
        cfg = parse_config(cfg)
    check_experiment_name(cfg.experiment_name)
    run_dir = Path(check_run_dir(run_dir or cfg.run_dir or "", "run_dir"))  # no links, no '.', no file
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(os_error_line(err, run_dir)) from None
    threads = cfg.train.threads if isinstance(cfg.train.threads, int) else None  # auto: torch's default
    # The lock is held until the run ends; the OS drops it if the process dies.
    with rf.lock_run_dir(run_dir), torch_threads(threads):
        rf.remove_stale_temporaries(run_dir)
        run = _Run(cfg, run_dir)
        ckpt = run_dir / rf.CHECKPOINT
        if cfg.resume is True and not ckpt.exists():
            raise ValueError(f"resume=true but {ckpt} does not exist; use resume=auto or resume=false")
        if cfg.resume in (True, "auto") and ckpt.exists():
            try:
                run.restore(rf.load_checkpoint(ckpt))
            except rf.CheckpointError as err:  # the run cannot go on as it is: say so where a sweep looks
                summary = rf.read_json(run_dir / rf.SUMMARY) if (run_dir / rf.SUMMARY).exists() else {}
                rf.write_json(run_dir / rf.SUMMARY, {**summary, "status": "failed", "failure": str(err)})
                raise
        else:
            if ckpt.exists():  # resume=false: the one word that throws a checkpoint away, said out loud
                log.warning("resume=false: discarding %s and the run's files; starting over", ckpt)
            for name in (n for n in rf.WRITTEN_FILES if n != rf.CONFIG):  # Hydra has just written config.yaml
                (run_dir / name).unlink(missing_ok=True)
        flush = cfg.train.flush_denormal and run.device.type == "cpu"
        if flush:  # process-wide (torch has no getter): set for this run, back to torch's default after it
            torch.set_flush_denormal(True)
        try:
            return run.run()
        finally:
            if flush:
                torch.set_flush_denormal(False)
