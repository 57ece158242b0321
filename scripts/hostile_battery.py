"""A battery of hostile inputs for ``curvlab train`` (issue 23): bad config values, bad data files, faults.

Each case runs ``curvlab.cli.main`` in-process in a fresh working directory (faults that need
a second process use one) and is classed by what happened:

* clear: refused (exit != 0) with one line naming the expected field or file;
* unclear: refused, but the message lacks it;
* traceback: an exception escaped, or a traceback was printed;
* accepted: exit 0 where the input should have been refused (a harmless oddity that must just
  run, such as a directory named like a stale temporary file, counts as clear when it does);
* code executed: a marker file that hostile code would create exists;
* wrote outside: a file outside the run's working directory appeared or changed.

Not part of the test suite (a few minutes on two cores)::

    OMP_NUM_THREADS=1 python scripts/hostile_battery.py [--only config,data,faults] [-v]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BASE = [
    "train.max_steps=2", "dataset.train_subset=128", "dataset.test_subset=32", "train.batch_size=64", "device=cpu",
    "log.hessian_every=0", "log.hessian_first=0", "log.progress=false", "solver=sgd",
]
CLASSES = ["clear", "unclear", "traceback", "accepted", "code executed", "wrote outside"]


def merge(*groups: list[str]) -> list[str]:
    """Flags first (argparse needs them before the overrides), then overrides, a later one of a key winning."""
    args = [a for g in groups for a in g]
    flags = [a for i, a in enumerate(args) if a.startswith("-") or (i and args[i - 1] in ("--experimental-rerun",
                                                                                          "--config-dir"))]
    out: dict[str, str] = {}
    for arg in (a for a in args if a not in flags):
        out[arg.split("=", 1)[0] if "=" in arg else arg] = arg
    return flags + list(out.values())


class Case:
    def __init__(self, group: str, name: str, args: list[str] | Callable[[Path], list[str]], expect: str | None,
                 setup: Callable[[Path], None] | None = None, base: bool = True,
                 process: Callable[[Path], tuple[int, str]] | None = None) -> None:
        self.group, self.name, self.args, self.expect, self.setup, self.base = group, name, args, expect, setup, base
        self.process = process  # runs the case in a process of its own: (exit code, output)


# --- bad config values (each: overrides, a word the error must hold) -------------------------------
CONFIG_VALUES: list[tuple[str, str]] = [
    ("seed=1.5", "seed"), ("seed=abc", "seed"), ("seed=[1]", "seed"), ("seed=1e30", "seed"),
    ("device=gpu", "device"), ("device=cuda:0", "device"), ("device=", "device"), ("dtype=float16", "dtype"),
    ("dtype=1", "dtype"), ("resume=0", "resume"), ("resume=1", "resume"), ("resume=yes", "resume"),
    ("resume=true", "resume"), ("resume=[true]", "resume"), ("resume=null", "resume"),
    ("experiment_name=../x", "experiment_name"), ("experiment_name=a/b", "experiment_name"),
    ("experiment_name=..", "experiment_name"), ("experiment_name=.", "experiment_name"),
    ("dataset.root=../../x experiment_name=${dataset.root}", "experiment_name"), ("experiment_name=${oc.decode:'..'}", "experiment_name"),
    ("experiment_name=''", "experiment_name"),
    ("run_dir=.", "run_dir"), ("run_dir=''", "run_dir"), ("run_dir=..", "run_dir"), ("run_dir=/", "run_dir"),  # before the fix: a run in /
    ("run_dir=/dev/null", "run_dir"), ("run_dir=/proc/x", "run_dir"), ("run_dir=[a,b]", "run_dir"),
    ("run_dir=${oc.env:CURVLAB_UNSET_VAR}", "run_dir"), ("run_dir=" + "x" * 300, "run_dir"),
    ("run_dir={a: 1}", "run_dir"), ("hydra.run.dir=.", "hydra.run.dir"), ("hydra.run.dir=''", "hydra.run.dir"),
    ("hydra.run.dir=/sys/x", "hydra.run.dir"),
    ("experiment=../../x/evil", "experiment"), ("experiment=/etc/passwd", "experiment"), ("solver=../sgd", "solver"),
    ("net=../../x", "net"), ("dataset=..", "dataset"), ("curvature=a/b", "curvature"), ("loss=..\\x", "loss"),
    ("experiment=nope", "experiment"), ("solver=nope", "solver"), ("hydra/launcher=../x", "hydra/launcher"),
    ("+experiment=../x", "experiment"),
    ("dataset.name=svhn", "dataset.name"), ("dataset.source=npz", "dataset"), ("dataset.num_classes=5", "num_classes"),
    ("dataset.num_classes=0", "num_classes"), ("dataset.num_classes=-1", "num_classes"),
    ("dataset.train_subset=0", "train_subset"), ("dataset.train_subset=-5", "train_subset"),
    ("dataset.test_subset=0", "test_subset"), ("dataset.test_fraction=0", "test_fraction"),
    ("dataset.test_fraction=1", "test_fraction"), ("dataset.test_fraction=0.001", "test_fraction"),
    ("dataset.test_fraction=nan", "test_fraction"), ("dataset.input_dim=63", "input_dim"),
    ("dataset.image_size=0", "image_size"), ("dataset.download=maybe", "download"), ("dataset.download=1", "download"),
    ("dataset.train_subset=1.5", "train_subset"), ("dataset.train_subset=abc", "train_subset"),
    ("net.widths=[64]", "net.widths"), ("net.widths=[64,0,10]", "net.widths"), ("net.widths=[64,-3,10]", "net.widths"),
    ("net.widths=[63,32,10]", "widths"), ("net.widths=[64,32,9]", "widths"), ("net.widths=64", "net.widths"),
    ("net.widths=[64,a,10]", "net.widths"), ("net.widths=[64,100000000,10]", "net.widths"),
    ("net.activation=swish", "net.activation"), ("net.init=zeros", "net.init"), ("net.init_scale=0", "init_scale"),
    ("net.init_scale=-1", "init_scale"), ("net.bias=2", "net.bias"), ("net.bias=0", "net.bias"),
    ("net.layers=[32,foo,10]", "net.layers"), ("net.layers=[0,10]", "net.layers"),
    ("loss=nonconvex loss.delta=0", "loss.delta"), ("loss=nonconvex loss.delta=-1", "loss.delta"),
    ("loss.name=mse", "loss.name"), ("+loss.foo=1", "loss.foo"),
    ("solver.lr=0", "solver.lr"), ("solver.lr=-1", "solver.lr"), ("solver.lr=nan", "solver.lr"),
    ("solver.lr=inf", "solver.lr"), ("solver.lr=abc", "solver.lr"), ("solver.lr=[0.1]", "solver.lr"),
    ("+solver.momentum=-1", "momentum"), ("+solver.dampening=-1", "dampening"), ("+solver.dampening=2", "dampening"),
    ("+solver.nesterov=2", "nesterov"), ("+solver.weight_decay=-1", "weight_decay"), ("+solver.foo=1", "solver.foo"),
    ("solver=adam +solver.betas=[2,0.9]", "betas"), ("solver=adam +solver.betas=[0.9]", "betas"),
    ("solver=adam +solver.eps=-1", "eps"), ("solver=adam +solver.betas=abc", "betas"),
    ("solver=adagrad +solver.lr_decay=-1", "lr_decay"), ("solver=adadelta +solver.rho=2", "rho"),
    ("solver=eacg solver.split=1000", "split"), ("solver=eacg solver.split=0", "split"),
    ("solver=eacg solver.split=-2", "split"), ("solver=eacg solver.alpha=0", "alpha"), ("solver=eacg solver.alpha=1", "alpha"),
    ("solver=eacg solver.alpha=-0.5", "alpha"), ("solver=eacg solver.max_cg=0", "max_cg"),
    ("solver=eacg solver.eps_cg=-1", "eps_cg"),
    ("solver=kfi curvature=exact", "curvature"), ("solver=kfi solver.damping=-1", "damping"),
    ("solver=cr +solver.base=cr", "base"), ("solver=cr +solver.base=foo", "base"),
    ("solver=exact_inverse +solver.curvature=fisher", "curvature"), ("solver.name=foo", "solver.name"),
    ("~solver.name", "solver.name"),
    ("loss=nonconvex curvature=gn solver=eacg", "curvature"), ("curvature.kind=foo", "curvature.kind"),
    ("curvature.mc_samples=0", "mc_samples"), ("curvature.mc_samples=-1", "mc_samples"),
    ("train.epochs=0", "train.epochs"), ("train.epochs=-1", "train.epochs"), ("train.epochs=1.5", "train.epochs"),
    ("train.max_steps=0", "max_steps"), ("train.max_steps=-3", "max_steps"), ("train.max_steps=1e30", "max_steps"),
    ("train.batch_size=0", "batch_size"), ("train.batch_size=-1", "batch_size"), ("train.batch_size=abc", "batch_size"),
    ("train.schedule=cosine", "schedule"), ("train.decay_rate=0", "decay_rate"), ("train.decay_rate=2", "decay_rate"),
    ("train.decay_every=0", "decay_every"), ("train.eval_every=0", "eval_every"),
    ("train.eval_batch_size=0", "eval_batch_size"), ("train.divergence_factor=1", "divergence_factor"),
    ("train.divergence_factor=-1", "divergence_factor"), ("train.checkpoint_every=0", "checkpoint_every"),
    ("train.stop_after=0", "stop_after"), ("train.flush_denormal=0", "flush_denormal"),
    ("train.flush_denormal=yes", "flush_denormal"), ("train.threads=0", "threads"), ("train.threads=-1", "threads"),
    ("+train.foo=1", "train.foo"), ("train.foo=1", "train.foo"),
    ("log.progress=2", "log.progress"), ("log.hessian_every=-1", "hessian_every"), ("log.hessian_first=-1", "hessian_first"),
    ("log.hessian_kinds=[exact]", "hessian_kinds"), ("log.hessian_kinds=[foo]", "hessian_kinds"),
    ("log.hessian_batches=[0]", "hessian_batches"), ("log.hessian_fisher_mc=[-1]", "hessian_fisher_mc"),
    ("log.hessian_kinds=fisher", "hessian_kinds"), ("log.compact=1", "compact"),
    ("foo=1", "foo"), ("+foo=1", "foo"), ("seed", "seed"), ("=1", "override"), ("seed==1", "seed"),
    ("solver=", "solver"), ("hydra.callbacks.x._target_=os.system", "CURVLAB_ALLOW_HYDRA_CALLBACKS"),
    ("+hydra.callbacks.x={_target_: os.system}", "CURVLAB_ALLOW_HYDRA_CALLBACKS"),
    ("hydra.launcher._target_=os.system", "CURVLAB_ALLOW_HYDRA_CALLBACKS"),
    ("+net.x={_target_: os.system, command: touch pwned}", "CURVLAB_ALLOW_HYDRA_CALLBACKS"),
    ("--experimental-rerun pwned.pickle", "experimental-rerun"),
]


def _config_cases() -> list[Case]:
    cases = []
    for spec, word in CONFIG_VALUES:
        args = [spec] if "={" in spec else spec.split(" ")  # a mapping value keeps its spaces
        cases.append(Case("config", spec, args, word))
    return cases


# --- bad data files (npz behind dataset.path) ------------------------------------------------------
def _npz(path: Path, **change: object) -> None:
    rng = np.random.default_rng(0)
    arrays: dict[str, object] = {
        "x_train": rng.integers(0, 255, (64, 8, 8), dtype=np.uint8), "y_train": np.arange(64) % 10,
        "x_test": rng.integers(0, 255, (16, 8, 8), dtype=np.uint8), "y_test": np.arange(16) % 10,
    }
    arrays.update(change)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


DATA_ARGS = ["dataset=mnist", "dataset.source=npz", "dataset.image_size=8", "dataset.input_dim=64",
             "dataset.train_subset=null", "dataset.test_subset=null"]
N = 64


def _data_variants() -> list[tuple[str, Callable[[Path], None], str]]:
    y, yt = np.arange(N) % 10, np.arange(16) % 10
    bad_y = {
        "inf label": y.astype(float) + np.r_[np.inf, np.zeros(N - 1)], "nan label": np.r_[np.nan, y[1:]].astype(float),
        "1e20 label": np.r_[1e20, y[1:]].astype(float), "uint64 2**63": np.r_[np.uint64(2**63), y[1:].astype(np.uint64)],
        "uint64 max": np.r_[np.iinfo(np.uint64).max, y[1:].astype(np.uint64)], "negative": np.r_[-1, y[1:]],
        "label 10": np.r_[10, y[1:]], "label 1e6": np.r_[10**6, y[1:]], "float 1.5": np.r_[1.5, y[1:]],
        "one-hot": np.eye(10)[y], "(N,2)": np.stack([y, y], 1), "empty": np.zeros(0, int), "strings": y.astype(str),
        "bool": (y > 4), "complex": y.astype(complex), "0-d": np.array(3), "short": y[:10], "-inf": np.r_[-np.inf, y[1:]],
        "int8 -1": np.r_[-1, y[1:]].astype(np.int8), "float16 big": np.r_[np.float16(60000), y[1:]].astype(np.float16),
        "(N,1,1)": y[:, None, None],
    }
    cases: list[tuple[str, Callable[[Path], None], str]] = []
    for name, value in bad_y.items():
        cases.append((f"y_train {name}", lambda p, v=value: _npz(p, y_train=v), "y_train"))
    for name, value in {"label 10": np.r_[10, yt[1:]], "inf": np.r_[np.inf, yt[1:]], "1e20": np.r_[1e20, yt[1:]]}.items():
        cases.append((f"y_test {name}", lambda p, v=value: _npz(p, y_test=v), "y_test"))
    rng = np.random.default_rng(1)
    bad_x = {
        "0-d": np.array(5, dtype=np.uint8), "1-d": np.zeros(N, np.uint8), "float32": rng.random((N, 8, 8), np.float32),
        "int64": np.zeros((N, 8, 8), np.int64), "5-d": np.zeros((N, 1, 8, 8, 1), np.uint8),
        "2 channels": np.zeros((N, 2, 8, 8), np.uint8), "flat 100": np.zeros((N, 100), np.uint8),
        "empty": np.zeros((0, 8, 8), np.uint8), "wrong size": np.zeros((N, 9, 9), np.uint8),
        "length 63": np.zeros((N - 1, 8, 8), np.uint8),
        "strings": np.array(["a"] * N), "bool": np.zeros((N, 8, 8), bool),
    }
    cases.append(("y_train object (pickled)", lambda p: _npz(p, y_train=np.array(list(y), dtype=object)), "dataset.path"))
    cases.append(("x_train object (pickled)", lambda p: _npz(p, x_train=np.array([None] * N, dtype=object)), "dataset.path"))
    for name, value in bad_x.items():
        cases.append((f"x_train {name}", lambda p, v=value: _npz(p, x_train=v), "x_train"))
    cases.append(("x_test other shape", lambda p: _npz(p, x_test=np.zeros((16, 8, 8, 3), np.uint8)), "x_test"))
    cases.append(("x_test 0-d", lambda p: _npz(p, x_test=np.array(1, np.uint8)), "x_test"))
    for key in ("x_train", "y_train", "x_test", "y_test"):
        cases.append((f"no {key}", lambda p, k=key: _npz(p, **{k: None}), key))
    files = {
        "empty file": lambda p: p.write_bytes(b""), "text file": lambda p: p.write_text("hello"),
        "truncated": lambda p: (_npz(p), p.write_bytes(p.read_bytes()[:200])),
        "flipped zip": lambda p: (_npz(p), p.write_bytes(b"PK\x03\x04" + bytes(300))),
        "a directory": lambda p: p.mkdir(), "missing": lambda p: None,
        "pickled object": lambda p: np.savez(p, x_train=np.array([{"a": 1}], dtype=object)),
        "npy not npz": lambda p: np.save(p.with_suffix(".npy"), np.zeros(3)) or p.with_suffix(".npy").rename(p),
        "fifo": lambda p: os.mkfifo(p),
    }
    for name, make in files.items():
        cases.append((name, make, "dataset.path"))
    return cases


def _data_cases() -> list[Case]:
    out = []
    for name, make, word in _data_variants():
        out.append(Case("data", name, lambda t: [*DATA_ARGS, f"dataset.path={t / 'd.npz'}"], word,
                        setup=lambda t, m=make: m(t / "d.npz")))
    return out


# --- faults -------------------------------------------------------------------------------------
def _train_once(t: Path, *extra: str) -> int:
    from curvlab import cli

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return cli.main(["train", *merge(BASE, list(extra)), f"run_dir={t / 'work' / 'run'}"])


def _planted(name: str) -> Callable[[Path], None]:
    def setup(t: Path) -> None:
        _train_once(t)
        link = t / "work" / "run" / name
        if link.is_dir():
            shutil.rmtree(link)
        link.unlink(missing_ok=True)
        link.symlink_to(t / "victim.txt")
    return setup


def _tamper(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def setup(t: Path) -> None:
        import torch

        from curvlab import runfiles as rf

        _train_once(t, "train.max_steps=4", "train.stop_after=2", "train.checkpoint_every=1")
        ckpt = t / "work" / "run" / rf.CHECKPOINT
        state = rf.load_checkpoint(ckpt)
        change(state)
        rf.save_checkpoint(ckpt, state)  # with a recomputed checksum
        del torch
    return setup


def _hold_lock(t: Path) -> None:
    (t / "work" / "run").mkdir(parents=True)
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'pid holder'); print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(t / "work" / "run" / ".lock")], stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    _HOLDERS.append(holder)
    (t / "work" / "run" / ".hydra").mkdir()
    (t / "work" / "run" / ".hydra" / "overrides.yaml").write_text("- original\n")
    _GUARDED.append(t / "work" / "run" / ".hydra" / "overrides.yaml")  # the running run's: no other run may touch it


_HOLDERS: list[subprocess.Popen] = []
_GUARDED: list[Path] = []  # files of another (running) run, inside work/ but not this run's to write


def _mount(t: Path, size: str, ro: bool = False) -> bool:
    (t / "work" / "mnt").mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(t / "work" / "mnt")],
                        capture_output=True).returncode == 0
    if ok:
        _MOUNTS.append(t / "work" / "mnt")
    return ok


_MOUNTS: list[Path] = []


def _fault_cases() -> list[Case]:
    import torch

    run = lambda t: [f"run_dir={t / 'work' / 'run'}"]  # noqa: E731
    cases = [Case("faults", f"symlink {name}", run, "symbolic link", setup=_planted(name))
             for name in (".lock", "train.log", ".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml",
                          "config.yaml", "metrics.csv", "summary.json", "checkpoint.pt", "hessian_errors.csv",
                          ".hydra")]
    cases += [
        Case("faults", ".lock is a directory", run, ".lock", setup=lambda t: (t / "work" / "run" / ".lock").mkdir(parents=True)),
        Case("faults", ".lock is a FIFO", run, ".lock",
             setup=lambda t: ((t / "work" / "run").mkdir(parents=True), os.mkfifo(t / "work" / "run" / ".lock"))),
        Case("faults", "run_dir is a file", lambda t: [f"run_dir={t / 'work' / 'f'}"], "run_dir",
             setup=lambda t: (t / "work").mkdir() or (t / "work" / "f").write_text("x")),
        Case("faults", "run_dir under a file", lambda t: [f"run_dir={t / 'work' / 'f' / 'x'}"], "run_dir",
             setup=lambda t: (t / "work").mkdir() or (t / "work" / "f").write_text("x")),
        Case("faults", "sweep dir ''", ["-m", "seed=0,1", "hydra.sweep.dir=''"], "hydra.sweep.dir", base=True),
        Case("faults", "sweep dir .", ["-m", "seed=0,1", "hydra.sweep.dir=."], "hydra.sweep.dir"),
        Case("faults", "busy run_dir", run, "in use", setup=_hold_lock),
        Case("faults", "busy hydra.run.dir", lambda t: [f"hydra.run.dir={t / 'work' / 'run'}"], "in use", setup=_hold_lock),
        Case("faults", "resume=0 after a partial run", lambda t: [*run(t), "resume=0", "train.max_steps=6"], "resume",
             setup=lambda t: _train_once(t, "train.max_steps=6", "train.stop_after=2")),
        Case("faults", "resume a 4-step run with max_steps=2", lambda t: [*run(t), "train.max_steps=2"], "max_steps",
             setup=lambda t: _train_once(t, "train.max_steps=4")),
        Case("faults", "ckpt: net key renamed", run, "net", setup=_tamper(
            lambda s: s["net"].__setitem__("evil", s["net"].pop("layers.0.weight")))),
        Case("faults", "ckpt: weight shape", run, "net.", setup=_tamper(
            lambda s: s["net"].__setitem__("layers.0.weight", torch.zeros(3, 3)))),
        Case("faults", "ckpt: step is a string", run, "step", setup=_tamper(lambda s: s.__setitem__("step", "2"))),
        Case("faults", "ckpt: no rng", run, "rng", setup=_tamper(lambda s: s.pop("rng"))),
        Case("faults", "ckpt: rng garbage", run, "rng", setup=_tamper(lambda s: s.__setitem__("rng", torch.zeros(3, dtype=torch.uint8)))),
        Case("faults", "ckpt: perm out of range", run, "perm", setup=_tamper(
            lambda s: s.__setitem__("perm", s["perm"] + 10_000))),
        Case("faults", "ckpt: pos huge", run, "pos", setup=_tamper(lambda s: s.__setitem__("pos", 99))),
        Case("faults", "ckpt: solver state a list", run, "solver", setup=_tamper(lambda s: s.__setitem__("solver", []))),
        Case("faults", "ckpt: optim state shape", run, "solver", setup=_tamper(
            lambda s: s["solver"]["optim"]["state"].__setitem__(0, {"momentum_buffer": torch.zeros(2, 2)}))),
        Case("faults", "ckpt: metrics rows ints", run, "metrics", setup=_tamper(lambda s: s.__setitem__("metrics", [1, 2]))),
        Case("faults", "ckpt: config a list", run, "config", setup=_tamper(lambda s: s.__setitem__("config", [1]))),
        Case("faults", "ckpt: no net", run, "net", setup=_tamper(lambda s: s.pop("net"))),
        Case("faults", "stale temp is a directory (runs, leaves it)", run, None,
             setup=lambda t: (t / "work" / "run" / ".metrics.csv.x.tmp").mkdir(parents=True)),
        Case("faults", "ENOSPC: 16 kB tmpfs", lambda t: [f"run_dir={t / 'work' / 'mnt' / 'run'}"], "disk is full",
             setup=lambda t: _mount(t, "16k") or _skip("mount -t tmpfs is not allowed here")),
        Case("faults", "read-only fs: new run", lambda t: [f"run_dir={t / 'work' / 'mnt' / 'run'}"], "read-only",
             setup=lambda t: _mount(t, "1m", ro=True) or _skip("mount -t tmpfs is not allowed here")),
        Case("faults", "read-only fs: resume", lambda t: [f"run_dir={t / 'work' / 'mnt' / 'run'}", "train.max_steps=4"],
             "read-only", setup=_read_only_resume),
        Case("faults", "Ctrl-C during training", [], "interrupted at update", process=_ctrl_c),
        Case("faults", "kill -9, then the same command resumes", [], None, process=_kill_and_resume),
        Case("faults", "link in a sweep job's directory", lambda t: ["-m", "seed=0,1", f"hydra.sweep.dir={t / 'work' / 'sw'}"],
             "symbolic link", setup=lambda t: ((t / "work" / "sw" / "0").mkdir(parents=True),
                                               (t / "work" / "sw" / "0" / "train.log").symlink_to(t / "victim.txt"))),
        Case("faults", "sweep with experiment_name=${dataset.root}",
             ["-m", "seed=0,1", "dataset.root=../../../x", "experiment_name=${dataset.root}"], "experiment_name"),
        Case("faults", "data replaced before a resume", lambda t: [*DATA_ARGS, f"dataset.path={t / 'd.npz'}", *run(t),
                                                                   "train.max_steps=4"], "d.npz", setup=_data_swap),
    ]
    return cases


def _background(t: Path, *extra: str) -> subprocess.Popen:
    """``curvlab train`` in a process of its own, training for long, until its metrics.csv exists."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "curvlab.cli", "train", *merge(BASE, ["train.max_steps=100000",
                            "train.checkpoint_every=5", "train.epochs=100000", f"run_dir={t / 'work' / 'run'}", *extra], ["log.progress=false"])],
                            cwd=t / "work", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (t / "work" / "run" / "metrics.csv").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    return proc


def _ctrl_c(t: Path) -> tuple[int, str]:
    import signal

    from curvlab import runfiles as rf

    proc = _background(t)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    status = rf.read_json(t / "work" / "run" / rf.SUMMARY).get("status")
    return (proc.returncode if status == "interrupted" else 0), out


def _kill_and_resume(t: Path) -> tuple[int, str]:
    from curvlab import cli
    from curvlab import runfiles as rf

    proc = _background(t, "train.max_steps=300", "train.epochs=1000")
    proc.kill()
    proc.communicate()
    code = cli.main(["train", *merge(BASE, ["train.max_steps=300", "train.epochs=1000", f"run_dir={t / 'work' / 'run'}"])])
    summary = rf.read_json(t / "work" / "run" / rf.SUMMARY)
    return (code if summary.get("status") == "completed" and summary.get("steps") == 300 else 1), ""


class Skip(Exception):
    pass


def _skip(why: str) -> None:
    raise Skip(why)


def _read_only_resume(t: Path) -> None:
    if not _mount(t, "4m"):
        _skip("mount -t tmpfs is not allowed here")
    _train_once(t, "train.max_steps=4", "train.stop_after=2", f"run_dir={t / 'work' / 'mnt' / 'run'}")
    subprocess.run(["mount", "-o", "remount,ro", str(t / "work" / "mnt")], check=True)


def _data_swap(t: Path) -> None:
    _npz(t / "d.npz")
    _train_once(t, *DATA_ARGS, f"dataset.path={t / 'd.npz'}", "train.max_steps=4", "train.stop_after=2")
    _npz(t / "d.npz", y_train=(np.arange(N) + 1) % 10)


# --- running ------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, float]:
    """Every path under ``root`` but ``root/work`` with its mtime (what 'outside' means)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath) == root and "work" in dirs:
            dirs.remove("work")
        for name in files + dirs:
            p = Path(dirpath) / name
            with contextlib.suppress(OSError):
                out[str(p)] = p.lstat().st_mtime_ns
    return out


def run_case(case: Case, verbose: bool) -> str:
    from curvlab import cli

    t = Path(tempfile.mkdtemp(prefix="hostile-"))
    victim = t / "victim.txt"
    victim.write_text("precious\n")
    old_cwd = os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        try:
            if case.setup:
                case.setup(t)
        except Skip as why:
            print(f"  [skipped] {case.group}: {case.name}: {why}")
            return "skipped"
        except Exception as why:  # noqa: BLE001 - the battery's own setup failed: say so, go on
            print(f"  [setup failed] {case.group}: {case.name}: {type(why).__name__}: {why}")
            return "skipped"
        (t / "work").mkdir(exist_ok=True)
        before = snapshot(t)
        guarded = {p: p.read_bytes() for p in _GUARDED}
        args = case.args(t) if callable(case.args) else case.args
        argv = merge(BASE, args) if case.base else args
        os.chdir(t / "work")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                if case.process is not None:
                    code, text = case.process(t)
                    err.write(text)
                else:
                    code = cli.main(["train", *argv])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
        except BaseException:  # noqa: BLE001 - an escaped exception is what is being counted
            code, _ = None, err.write(traceback.format_exc())
        finally:
            os.chdir(old_cwd)
        text = out.getvalue() + err.getvalue()
        after = snapshot(t)
        if (t / "work" / "pwned").exists() or (t / "pwned").exists():
            outcome = "code executed"
        elif victim.read_text() != "precious\n" or set(after) - set(before) or any(
            not p.exists() or p.read_bytes() != data for p, data in guarded.items()
        ):
            outcome = "wrote outside"
        elif code is None or "Traceback (most recent call last)" in text:
            outcome = "traceback"
        elif code == 0:
            outcome = "clear" if case.expect is None else "accepted"  # None: a harmless input that must just run
        elif case.expect is None:
            outcome = "unclear"
        else:
            lines = [ln for ln in text.splitlines() if "error" in ln.lower() or "curvlab" in ln or "refus" in ln]
            outcome = "clear" if case.expect.lower() in "\n".join(lines).lower() else "unclear"
        if verbose or outcome != "clear":
            last = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or [""]
            print(f"  [{outcome}] {case.group}: {case.name} (exit {code}): {last[0][:300]}")
        return outcome
    finally:
        for holder in _HOLDERS:
            holder.kill()
            holder.wait()
        _HOLDERS.clear()
        _GUARDED.clear()
        for mnt in _MOUNTS:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        _MOUNTS.clear()
        shutil.rmtree(t, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="config,data,faults", help="comma-separated groups")
    parser.add_argument("-k", default="", help="run only cases whose name contains this")
    parser.add_argument("-v", action="store_true", help="print every case, not only the ones not clear")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(REPO))
    makers = {"config": _config_cases, "data": _data_cases, "faults": _fault_cases}
    tally: dict[str, Counter] = {}
    start = time.monotonic()
    for group in args.only.split(","):
        for case in makers[group]():
            if args.k in case.name:
                tally.setdefault(group, Counter())[run_case(case, args.v)] += 1
    print(f"\n{'group':<8}" + "".join(f"{c:>15}" for c in CLASSES) + f"{'skipped':>10}{'total':>8}")
    for group, counts in tally.items():
        skipped = sum(v for k, v in counts.items() if k.startswith("skipped"))
        print(f"{group:<8}" + "".join(f"{counts[c]:>15}" for c in CLASSES) + f"{skipped:>10}{sum(counts.values()):>8}")
    print(f"({time.monotonic() - start:.0f} s)")
    bad = sum(counts[c] for counts in tally.values() for c in CLASSES[2:])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
