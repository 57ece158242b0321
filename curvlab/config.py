"""Structured run configuration: dataclasses that validate a composed Hydra config.

The Hydra entry point (:mod:`curvlab.cli`) turns its ``DictConfig`` into a plain dict and
calls :func:`parse_config`; everything below it sees only these dataclasses. Every check
runs before any data is loaded, and every error names the field, the allowed values and
the fix.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from curvlab.curvature.options import CurvatureOptions, FisherType, Kind, parse_enum
from curvlab.hessian_reference import HVP_BUDGET
from curvlab.loggers import LoggerConfig
from curvlab.losses import LossKind, make_loss
from curvlab.nets import MLP, Activation, Init, check_image_layers, make_net, needs_images, parse_layers
from curvlab.registry import solver_class, solver_names
from curvlab.solvers.options import check_step_options
from curvlab.typecheck import INT_LIMIT, check_fields, check_value, type_hints

__all__ = [
    "DatasetName", "DataSource", "Schedule", "DType", "DatasetConfig", "NetConfig", "LossConfig",
    "SolverConfig", "LoopConfig", "LogConfig", "RunConfig", "parse_config", "known_keys", "compose_error_message",
]

# Resolvers the configs use: ``${prod:3,${dataset.image_size},${dataset.image_size}}`` is the
# flattened image width; ``${if_null:${run_dir},runs/...}`` falls back when run_dir is null.
if not OmegaConf.has_resolver("prod"):
    OmegaConf.register_new_resolver("prod", lambda *xs: _prod(xs))
if not OmegaConf.has_resolver("if_null"):
    OmegaConf.register_new_resolver("if_null", lambda value, default: default if value is None else value)
if not OmegaConf.has_resolver("solver_names"):  # `curvlab train --help` lists the registered solvers
    OmegaConf.register_new_resolver("solver_names", lambda: ", ".join(solver_names()))
if not OmegaConf.has_resolver("one_dir"):  # an override value may hold '/' or '..': keep it one folder name
    OmegaConf.register_new_resolver("one_dir", lambda name: str(name).replace("/", "_").replace("\\", "_"))


def _prod(xs: tuple[Any, ...]) -> int:
    out = 1
    for x in xs:
        out *= check_value(x, int, "${prod:...} argument")
    return out


class DatasetName(str, Enum):
    DIGITS = "digits"  # scikit-learn's 8×8 digits, ships with the package
    MNIST = "mnist"
    CIFAR10 = "cifar10"
    IMAGENET10 = "imagenet10"  # Imagenette, the 10-class ImageNet subset


class DataSource(str, Enum):
    TORCHVISION = "torchvision"  # (mnist, cifar10, imagenet10) torchvision's dataset class
    NPZ = "npz"  # uint8 x_train, y_train, x_test, y_test
    SKLEARN = "sklearn"  # (digits) sklearn.datasets.load_digits


class Schedule(str, Enum):
    CONSTANT = "constant"
    EXPONENTIAL = "exponential"  # lr · decay_rate^(step // decay_every), Bakker et al. Appendix A


class DType(str, Enum):
    FLOAT32 = "float32"
    FLOAT64 = "float64"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass
class DatasetConfig:
    """Which data, from where, and how much of it (``*_subset``: first N after loading)."""

    name: DatasetName = DatasetName.DIGITS
    source: DataSource = DataSource.SKLEARN
    root: str = "data"
    download: bool = False
    path: str | None = None
    image_size: int = 32
    input_dim: int = 64
    num_classes: int = 10
    train_subset: int | None = None
    test_subset: int | None = None
    test_fraction: float = 0.2  # digits only: held-out share (sklearn has no split)

    def __post_init__(self) -> None:
        self.name = parse_enum(DatasetName, self.name, "dataset.name")
        self.source = parse_enum(DataSource, self.source, "dataset.source")
        if self.name is DatasetName.DIGITS:
            _check(self.source is DataSource.SKLEARN, "dataset.source: digits loads only from 'sklearn'")
        else:
            _check(
                self.source in (DataSource.TORCHVISION, DataSource.NPZ),
                f"dataset.source: {self.name.value} loads from 'torchvision' or 'npz', got {self.source.value!r}",
            )
        if self.source is DataSource.NPZ:
            _check(bool(self.path), "dataset.path: dataset.source=npz needs dataset.path=FILE.npz")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            _check(value is None or int(value) >= 1, f"dataset.{name} must be >= 1 or null, got {value}")
        _check(int(self.image_size) >= 1, f"dataset.image_size must be >= 1, got {self.image_size}")
        _check(int(self.num_classes) >= 2, f"dataset.num_classes must be >= 2, got {self.num_classes}")
        _check(int(self.input_dim) >= 1, f"dataset.input_dim must be >= 1, got {self.input_dim}")
        _check(0 < float(self.test_fraction) < 1, f"dataset.test_fraction must lie in (0, 1), got {self.test_fraction}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images, with C = input_dim / image_size² (digits, MNIST: 1; CIFAR-10: 3)."""
        side = int(self.image_size)
        _check(
            int(self.input_dim) % (side * side) == 0,
            f"dataset.input_dim={self.input_dim} is not a whole number of image_size² = {side * side} pixel planes; "
            "set dataset.image_size to the images' side",
        )
        return (int(self.input_dim) // (side * side), side, side)


@dataclass
class NetConfig:
    """Arguments of :class:`curvlab.MLP`, or with ``layers`` of :func:`curvlab.nets.sequential`.

    ``layers`` lists the modules one by one (an int is an ``nn.Linear`` of that width, a name an
    activation, see :data:`curvlab.nets.LAYER_NAMES`); ``widths[0]`` is then the input width,
    the rest of ``widths`` is filled from the Linear widths, and ``activation`` is not used.
    """

    widths: list[int] = field(default_factory=lambda: [64, 32, 10])
    activation: Activation = Activation.SIGMOID
    init: Init = Init.DEFAULT
    init_scale: float = 0.2
    bias: bool = True
    layers: list[int | str] | None = None
    # (C, H, W) of the images a net with image layers was made for (net=mnist_2c2d: [1, 28, 28]); null: the dataset's
    input_shape: list[int] | None = None

    def __post_init__(self) -> None:
        self.activation = parse_enum(Activation, self.activation, "net.activation")
        self.init = parse_enum(Init, self.init, "net.init")
        if self.layers is not None:
            _check(len(self.widths) >= 1, "net.widths must give the input width (widths[0]) when net.layers is set")
            self.layers = parse_layers(self.layers, "net.layers")
            self.widths = [self.widths[0], *(w for w in self.layers if isinstance(w, int))]
        if self.input_shape is not None:
            _check(len(self.input_shape) == 3 and all(int(n) >= 1 for n in self.input_shape),
                   f"net.input_shape must be [C, H, W] of positive sizes or null, got {self.input_shape}")
            _check(needs_images(self.layers), "net.input_shape is only for nets with image layers "
                   "(net.layers with conv(...), maxpool(...), ...); drop it or set it to null")
        _check(
            len(self.widths) >= 2 and all(int(w) >= 1 for w in self.widths),
            f"net.widths must list at least two positive sizes, got {list(self.widths)}",
        )
        self.widths = [int(w) for w in self.widths]
        n_params = sum(a * b + b for a, b in zip(self.widths, self.widths[1:]))
        _check(
            n_params <= INT_LIMIT,
            f"net.widths={self.widths} make {n_params:,} parameters, more than the {INT_LIMIT:,} allowed",
        )
        _check(float(self.init_scale) > 0, f"net.init_scale must be > 0, got {self.init_scale}")

    def build(self, input_shape: Sequence[int] | None = None) -> MLP | nn.Sequential:
        """The net this config describes (:func:`curvlab.nets.make_net`).

        ``input_shape`` (C, H, W), e.g. the dataset's image shape, takes the place of ``net.input_shape``.
        """
        shape = input_shape if input_shape is not None else self.input_shape
        return make_net(self.widths, self.activation, self.init, self.init_scale, self.bias, self.layers, shape)


@dataclass
class LossConfig:
    """The criterion; ``delta``/``eps`` are the parameters of EA-CG Eq. (14)."""

    name: LossKind = LossKind.CROSS_ENTROPY
    delta: float = 5.0
    eps: float = 0.2

    def __post_init__(self) -> None:
        self.name = parse_enum(LossKind, self.name, "loss.name")
        _check(float(self.delta) > 0, f"loss.delta must be > 0, got {self.delta}")

    @property
    def options(self) -> dict[str, float]:
        return {"delta": self.delta, "eps": self.eps} if self.name is LossKind.NONCONVEX else {}


@dataclass
class SolverConfig:
    """A registered solver (``name``), its learning rate and its keyword ``options``.

    The names, option types and ranges are the solver's own (:mod:`curvlab.registry`), the same
    checks its constructor makes, so that a config that passes here builds.
    """

    name: str = "sgd"
    lr: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cls = solver_class(self.name)
        self.lr = check_value(self.lr, float, "solver.lr")
        _check(self.lr > 0, f"solver.lr must be > 0, got {self.lr}; pick e.g. solver.lr=0.1")
        self.options = cls.check_options(check_value(self.options, dict[str, Any], "solver"), "solver")

    @property
    def base(self) -> str:
        """The solver whose direction is used (``cr`` wraps ``solver.base``)."""
        return solver_class(self.name).curvature_reader(self.options).name


@dataclass
class LoopConfig:
    """The training loop (``train.*``). ``max_steps`` caps the total over all epochs."""

    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 128
    schedule: Schedule = Schedule.CONSTANT
    decay_rate: float = 0.95
    decay_every: int = 100
    eval_every: int | None = None  # also evaluate every N steps (always at each epoch end)
    eval_batch_size: int = 2048
    divergence_factor: float = 1e3  # fail when a batch loss exceeds this × the initial loss
    checkpoint_every: int = 200
    stop_after: int | None = None  # test hook: stop (as if killed) after N steps of this session
    # On CPU, float32 values below 1.2e-38 (denormals) become 0: the CPU handles them ≈ 100× slower,
    # and a sigmoid net near saturation is full of them (a step ≈ 4× slower, Hessian logging ≈ 28×).
    flush_denormal: bool = True
    # torch's CPU threads (curvlab.threads): auto = all cores for one run, the launcher's share of them
    # (one per job at joblib's n_jobs=-1, cpus_per_task for submitit) when jobs run side by side
    threads: int | Literal["auto"] | None = "auto"

    def __post_init__(self) -> None:
        self.schedule = parse_enum(Schedule, self.schedule, "train.schedule")
        _check(self.threads in (None, "auto") or int(self.threads) >= 1,
               f"train.threads must be an integer >= 1 or auto (all cores; one per job when a launcher runs "
               f"jobs side by side), got {self.threads}")
        _check(isinstance(self.flush_denormal, bool),
               f"train.flush_denormal must be true or false, got {self.flush_denormal!r}")
        _check(int(self.epochs) >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _check(int(self.batch_size) >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        for name in ("max_steps", "eval_every", "stop_after"):
            value = getattr(self, name)
            _check(value is None or int(value) >= 1, f"train.{name} must be >= 1 or null, got {value}")
        _check(0 < float(self.decay_rate) <= 1, f"train.decay_rate must lie in (0, 1], got {self.decay_rate}")
        _check(int(self.decay_every) >= 1, f"train.decay_every must be >= 1, got {self.decay_every}")
        _check(float(self.divergence_factor) > 1, f"train.divergence_factor must be > 1, got {self.divergence_factor}")
        _check(int(self.checkpoint_every) >= 1, f"train.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        _check(int(self.eval_batch_size) >= 1, f"train.eval_batch_size must be >= 1, got {self.eval_batch_size}")


@dataclass
class LogConfig:
    """What is logged besides the metrics (``log.*``)."""

    progress: bool = True  # tqdm bar (only on a terminal)
    hessian_every: int = 0  # layer-wise Hessian errors every N steps; 0 = off
    hessian_first: int = 0  # ... and at each of the first N updates (EA-CG Tables 2–5)
    hessian_kinds: list[Kind] = field(default_factory=lambda: [Kind.FISHER, Kind.GN, Kind.PCH1, Kind.PCH2])
    hessian_batches: list[int] = field(default_factory=list)  # logging batch sizes; []: the training batch
    hessian_fisher_mc: list[int] = field(default_factory=list)  # MC Fisher sample counts; []: curvature's
    hessian_fisher_types: list[FisherType] = field(default_factory=list)  # Fisher definitions; []: curvature's
    hessian_hvp_budget: int = HVP_BUDGET  # conv nets: Hessian-vector products per logging batch for autograd bias blocks
    compact: bool = False  # tables as float32-precision CSV, gzip-compressed (metrics.csv.gz): ≈ 5× smaller

    def __post_init__(self) -> None:
        _check(int(self.hessian_every) >= 0, f"log.hessian_every must be >= 0, got {self.hessian_every}")
        _check(int(self.hessian_first) >= 0, f"log.hessian_first must be >= 0, got {self.hessian_first}")
        self.hessian_kinds = [parse_enum(Kind, k, "log.hessian_kinds") for k in self.hessian_kinds]
        self.hessian_fisher_types = [parse_enum(FisherType, f, "log.hessian_fisher_types")
                                     for f in self.hessian_fisher_types]
        _check(Kind.EXACT not in self.hessian_kinds, "log.hessian_kinds: 'exact' is the reference; drop it")
        _check(isinstance(self.compact, bool), f"log.compact must be true or false, got {self.compact!r}")
        _check(int(self.hessian_hvp_budget) >= 0,
               f"log.hessian_hvp_budget must be >= 0 (Hessian-vector products), got {self.hessian_hvp_budget}")
        for name in ("hessian_batches", "hessian_fisher_mc"):
            values = getattr(self, name)
            _check(all(int(v) >= 1 for v in values), f"log.{name} must list sizes >= 1, got {values}")


# The datasets whose images a net's input_shape asks for (for the message when they differ).
_IMAGE_DATASETS = {
    (1, 8, 8): "dataset=digits", (1, 28, 28): "dataset=mnist",
    (3, 32, 32): "dataset=cifar10 (or dataset=imagenet10 dataset.image_size=32)",
}


@dataclass
class RunConfig:
    """One run: identity, numerics, and the component configs."""

    experiment_name: str = "demo"
    seed: int = 0
    device: str = "auto"
    dtype: DType = DType.FLOAT32
    resume: Any = "auto"  # auto: continue when run_dir has a checkpoint; true: must; false: start over
    run_dir: str | None = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    net: NetConfig = field(default_factory=NetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    curvature: CurvatureOptions = field(default_factory=CurvatureOptions)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    log: LogConfig = field(default_factory=LogConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # curvlab.loggers: csv always, + tensorboard

    def __post_init__(self) -> None:
        self.dtype = parse_enum(DType, self.dtype, "dtype")
        _check(
            self.device == "auto" or self.device == "cpu" or str(self.device).startswith("cuda"),
            f"device: unknown value {self.device!r}; allowed: auto, cpu, cuda, cuda:N",
        )
        _check(  # `is`: 0 and 1 equal False and True, but resume=0 must not discard a checkpoint
            self.resume is True or self.resume is False or self.resume == "auto",
            f"resume: unknown value {self.resume!r}; allowed: auto, true, false",
        )
        _check(
            self.net.widths[0] == self.dataset.input_dim,
            f"net.widths[0]={self.net.widths[0]} but dataset.input_dim={self.dataset.input_dim}; "
            "write the first width as ${dataset.input_dim}",
        )
        _check(
            self.net.widths[-1] == self.dataset.num_classes,
            f"net.widths[-1]={self.net.widths[-1]} but dataset.num_classes={self.dataset.num_classes}; "
            "write the last width as ${dataset.num_classes}",
        )
        self._check_images()
        self._check_kind()
        split = self.solver.options.get("split")
        rows = max(self.net.widths[1:])
        _check(
            split is None or int(split) <= rows,
            f"solver.split={split}: more groups than the {rows} rows of the widest layer; pick split <= {rows} "
            "(split is capped per layer at its number of rows)",
        )

    def _check_images(self) -> None:
        """A net with image layers must fit the dataset's images: the preset's ``net.input_shape``,
        and every layer's input size (a kernel larger than its input is refused here, not mid-run)."""
        if not needs_images(self.net.layers):
            return
        shape = self.dataset.image_shape
        wanted = tuple(self.net.input_shape or shape)
        fits = _IMAGE_DATASETS.get(wanted, "a dataset with such images")
        _check(
            wanted == shape,
            f"net.input_shape={list(wanted)}: the net is made for images of (C, H, W) = {wanted} but "
            f"dataset={self.dataset.name.value} has {shape}; train it on {fits}, pick the net preset made for "
            "these images, or set net.input_shape=null to build the same layers for them",
        )
        check_image_layers(shape, self.net.layers or [])

    def _check_kind(self) -> None:
        """The solver (CR: its base) must accept the curvature kind with this loss, by its own rule
        (e.g. GN is not PSD for the nonconvex loss of EA-CG Eq. 14, so CG/KFI on it are ill-posed)."""
        reader = solver_class(self.solver.name).curvature_reader(self.solver.options)
        reader.check_kind(self.curvature.kind, make_loss(self.loss.name, **self.loss.options))
        if {"weight_factor", "sketch"} <= reader.curvature_fields:
            check_step_options(self.curvature, needs_images(self.net.layers))


def _resolve(cfg: Any) -> dict[str, Any]:
    """The plain form of a composed config; an interpolation that fails names its field."""
    if not OmegaConf.is_config(cfg):
        return dict(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        node = OmegaConf.to_container(cfg, resolve=False)
        for part in str(key).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        reason = re.sub(r"^\w+ raised while resolving interpolation: ", "", str(err).splitlines()[0])
        raise ValueError(f"{key}: cannot resolve {node!r}: {reason}") from None


def parse_config(cfg: Any) -> RunConfig:
    """Validate a composed config (``DictConfig`` or plain dict) into a :class:`RunConfig`.

    Every field is first checked against its annotation (:mod:`curvlab.typecheck`), then by
    the dataclasses' own range and consistency checks.

    Raises:
        ValueError: naming the first bad field, its value, the allowed values and the fix.
    """
    data = {k: v for k, v in _resolve(cfg).items() if k != "hydra"}
    solver = data.get("solver")
    if isinstance(solver, dict):
        solver = dict(solver)
        _check("name" in solver, "solver.name is missing; pick one with solver=NAME")
        name = check_value(solver.pop("name"), str, "solver.name")
        data["solver"] = SolverConfig(name=name, lr=solver.pop("lr", 0.1), options=solver)
    return RunConfig(**check_fields(RunConfig, data, ""))


def known_keys(section: str) -> list[str] | None:
    """The keys a config may hold at ``section`` ("" for the top level), or None when open-ended."""
    if not section:
        return sorted([f.name for f in dataclasses.fields(RunConfig)] + ["hydra"])
    cls = type_hints(RunConfig).get(section)
    if cls is SolverConfig or not dataclasses.is_dataclass(cls):
        return None  # a solver's keys depend on the solver (Solver.option_types)
    return sorted(f.name for f in dataclasses.fields(cls))


def compose_error_message(err: Exception, overrides: list[str] | None = None) -> str:
    """One line for an error that Hydra raised while composing the config.

    Covers an unknown group option (``solver=foo``: lists the options), an unknown key
    (``foo=1``: lists the keys there), a malformed override and OmegaConf's own errors; a
    message of Hydra's that names no key is followed by the ``overrides`` given.
    """
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(err, MissingConfigException) and err.options is not None and err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")
        return f"{group}={option}: no such option; allowed: {', '.join(sorted(err.options))}"
    if isinstance(err, OverrideParseException):
        detail = [ln for ln in str(err).splitlines() if ln and not ln.startswith(("Error parsing override", "See "))]
        return (
            f"cannot parse the override {err.override!r}: {'; '.join(detail)} "
            "(forms: key=value, group=option, +key=value, key=[a,b], -m key=a,b)"
        )
    cause = err.__cause__
    key = str(getattr(cause, "full_key", "") or "")
    if key and "not in struct" in str(cause):
        section = key.rpartition(".")[0]
        allowed = known_keys(section)
        if allowed is None:
            return f"{key}: no such key in the chosen {section} config; to add an option, write +{key}=VALUE"
        return f"{key}: unknown key; allowed: {', '.join(allowed)}"
    lines = [str(err).strip().splitlines()[0].rstrip(".")] + ([str(cause).strip().splitlines()[0]] if cause else [])
    if not key and overrides:
        lines.append(f"in the overrides: {' '.join(overrides)}")
    return "; ".join(lines)


NO_DEFAULT = object()  # field_default's answer for a key without a schema default


def field_default(key: str) -> Any:
    """The plain default of the dotted config field ``key`` (e.g. ``log.hessian_hvp_budget``), or NO_DEFAULT.

    A run directory written before a field existed lacks it; resuming it with the field at this default
    changes nothing it ran (curvlab.train's resume check).
    """
    section, _, name = key.partition(".")
    top = {f.name: f for f in dataclasses.fields(RunConfig)}.get(section)
    if top is None or not name or "." in name or top.default_factory is dataclasses.MISSING:
        return NO_DEFAULT
    sub = {f.name: f for f in dataclasses.fields(top.default_factory())}.get(name)
    if sub is None:
        return NO_DEFAULT
    if sub.default is not dataclasses.MISSING:
        value = sub.default
    elif sub.default_factory is not dataclasses.MISSING:
        value = sub.default_factory()
    else:
        return NO_DEFAULT
    value = value.value if isinstance(value, Enum) else value
    return list(value) if isinstance(value, tuple) else value


def to_dict(run: RunConfig) -> dict[str, Any]:
    """The plain (YAML-friendly) form of a run config: enums as their values, options flat."""

    def plain(x: Any) -> Any:
        if isinstance(x, Enum):
            return x.value
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    out = plain(dataclasses.asdict(run))
    solver = out.pop("solver")
    out["solver"] = {"name": solver["name"], "lr": solver["lr"], **solver["options"]}
    return out
