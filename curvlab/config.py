"""Structured run configuration: dataclasses that validate a composed Hydra config.

The Hydra entry point (:mod:`curvlab.cli`) turns its ``DictConfig`` into a plain dict and
calls :func:`parse_config`; everything below it sees only these dataclasses. Every check
runs before any data is loaded, and every error names the field, the allowed values and
the fix.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from curvlab.curvature.options import CurvatureOptions, Kind, parse_enum
from curvlab.losses import LossKind
from curvlab.nets import Activation, Init, parse_layers
from curvlab.typecheck import INT_LIMIT, check_fields, check_value, type_hints

__all__ = [
    "DatasetName", "DataSource", "Schedule", "DType", "DatasetConfig", "NetConfig", "LossConfig",
    "SolverConfig", "LoopConfig", "LogConfig", "RunConfig", "parse_config", "KNOWN_SOLVERS",
    "CURVATURE_SOLVERS", "solver_option_types", "known_keys", "compose_error_message",
]

# Solvers the configs know about; some are registered by modules that may land later.
KNOWN_SOLVERS = ("sgd", "adagrad", "adadelta", "adam", "kfi", "eacg", "cr", "exact_inverse")
CURVATURE_SOLVERS = ("kfi", "eacg")  # take ``curvature=CurvatureOptions(...)``

# Resolvers the configs use: ``${prod:3,${dataset.image_size},${dataset.image_size}}`` is the
# flattened image width; ``${if_null:${run_dir},runs/...}`` falls back when run_dir is null.
if not OmegaConf.has_resolver("prod"):
    OmegaConf.register_new_resolver("prod", lambda *xs: _prod(xs))
if not OmegaConf.has_resolver("if_null"):
    OmegaConf.register_new_resolver("if_null", lambda value, default: default if value is None else value)
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
        _check(0 < float(self.test_fraction) < 1, f"dataset.test_fraction must lie in (0, 1), got {self.test_fraction}")


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

    def __post_init__(self) -> None:
        self.activation = parse_enum(Activation, self.activation, "net.activation")
        self.init = parse_enum(Init, self.init, "net.init")
        if self.layers is not None:
            _check(len(self.widths) >= 1, "net.widths must give the input width (widths[0]) when net.layers is set")
            self.layers = parse_layers(self.layers, "net.layers")
            self.widths = [self.widths[0], *(w for w in self.layers if isinstance(w, int))]
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


# Range checks on solver options that several solvers share: (test, allowed, fix).
_SOLVER_CHECKS: dict[str, tuple[Any, str]] = {
    "alpha": (lambda v: 0 < v < 1, "in (0, 1)"),
    "damping": (lambda v: v >= 0, ">= 0"),
    "sigma": (lambda v: v > 0, "> 0"),
    "max_cg": (lambda v: int(v) >= 1, ">= 1"),
    "eps_cg": (lambda v: v > 0, "> 0"),
    "momentum": (lambda v: v >= 0, ">= 0"),
}


@dataclass
class SolverConfig:
    """A registered solver (``name``), its learning rate and its keyword ``options``."""

    name: str = "sgd"
    lr: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(
            self.name in KNOWN_SOLVERS,
            f"solver.name: unknown solver {self.name!r}; allowed: {', '.join(KNOWN_SOLVERS)}",
        )
        self.lr = check_value(self.lr, float, "solver.lr")
        _check(self.lr > 0, f"solver.lr must be > 0, got {self.lr}; pick e.g. solver.lr=0.1")
        self.options = _check_options(self.name, check_value(self.options, dict[str, Any], "solver"), "solver")
        for key, value in self.options.items():
            if key in _SOLVER_CHECKS and value is not None:
                ok, allowed = _SOLVER_CHECKS[key]
                _check(ok(float(value)), f"solver.{key} must be {allowed}, got {value}")
        if self.name == "exact_inverse":
            kind = self.options.get("curvature", "exact")
            _check(kind in ("exact", "gn"), f"solver.curvature: exact_inverse takes 'exact' or 'gn', got {kind!r}")

    @property
    def base(self) -> str:
        """The solver whose direction is used (``cr`` wraps ``solver.base``)."""
        return str(self.options.get("base", "sgd")) if self.name == "cr" else self.name


def solver_option_types(name: str) -> dict[str, Any]:
    """The keyword options of the registered solver ``name`` and their annotated types.

    Read from the solver's constructor (for the ``torch.optim`` baselines, from the optimizer's),
    so an option added there is accepted and type-checked without further code. The runner
    passes ``net``, ``loss``, ``lr`` and, to curvature solvers, the ``curvature`` group itself.
    """
    from curvlab.solvers import SOLVERS

    target = SOLVERS[name]
    params = inspect.signature(target.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()) and hasattr(target, "optim_cls"):
        target = target.optim_cls  # TorchOptimSolver passes **options on to torch.optim
        params = inspect.signature(target.__init__).parameters
    hints = type_hints(target.__init__)
    given = {"self", "params", "net", "loss", "lr"} | ({"curvature"} if name in CURVATURE_SOLVERS else set())
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: hints.get(k, Any) for k, p in params.items() if k not in given and p.kind in keyword}


def _check_options(name: str, options: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Solver ``name``'s options, each checked against its constructor's annotation."""
    from curvlab.solvers import SOLVERS

    if name not in SOLVERS:  # train.build_solver says that it is not installed
        return options
    types_ = solver_option_types(name)
    for key in options:
        if key not in types_:
            hint = "; the curvature is chosen with curvature=NAME" if key == "curvature" else ""
            raise ValueError(
                f"{prefix}.{key}: unknown option for solver {name}; allowed: {', '.join(sorted(types_))}{hint}"
            )
    out = {k: check_value(v, types_[k], f"{prefix}.{k}") for k, v in options.items()}
    if name == "cr":
        base = out.get("base", "sgd")
        _check(
            base in KNOWN_SOLVERS and base != "cr",
            f"{prefix}.base: unknown base solver {base!r} for cr; allowed: "
            f"{', '.join(s for s in KNOWN_SOLVERS if s != 'cr')}",
        )
        if out.get("base_options") is not None:
            out["base_options"] = _check_options(base, out["base_options"], f"{prefix}.base_options")
    return out


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

    def __post_init__(self) -> None:
        self.schedule = parse_enum(Schedule, self.schedule, "train.schedule")
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

    def __post_init__(self) -> None:
        _check(int(self.hessian_every) >= 0, f"log.hessian_every must be >= 0, got {self.hessian_every}")
        _check(int(self.hessian_first) >= 0, f"log.hessian_first must be >= 0, got {self.hessian_first}")
        self.hessian_kinds = [parse_enum(Kind, k, "log.hessian_kinds") for k in self.hessian_kinds]
        _check(Kind.EXACT not in self.hessian_kinds, "log.hessian_kinds: 'exact' is the reference; drop it")
        for name in ("hessian_batches", "hessian_fisher_mc"):
            values = getattr(self, name)
            _check(all(int(v) >= 1 for v in values), f"log.{name} must list sizes >= 1, got {values}")


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

    def __post_init__(self) -> None:
        self.dtype = parse_enum(DType, self.dtype, "dtype")
        _check(
            self.device == "auto" or self.device == "cpu" or str(self.device).startswith("cuda"),
            f"device: unknown value {self.device!r}; allowed: auto, cpu, cuda, cuda:N",
        )
        _check(self.resume in ("auto", True, False), f"resume: unknown value {self.resume!r}; allowed: auto, true, false")
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
        self._check_psd()

    def _check_psd(self) -> None:
        """GN is not PSD for the nonconvex loss (EA-CG Eq. 14), so CG/KFI on it are ill-posed."""
        if self.solver.base == "kfi" and self.curvature.kind is Kind.EXACT:
            raise ValueError(
                "curvature.kind=exact with solver kfi: the exact blocks are indefinite, so KFI's factors "
                "have no inverse; allowed: fisher, gn, pch, pch1, pch2"
            )
        if self.loss.name is not LossKind.NONCONVEX:
            return
        fix = "use curvature=pch1, pch2 or fisher (or loss=cross_entropy)"
        if self.solver.base in CURVATURE_SOLVERS and self.curvature.kind is Kind.GN:
            allowed = "fisher, pch, pch1, pch2" + ("" if self.solver.base == "kfi" else ", exact")
            raise ValueError(
                f"curvature.kind=gn with solver {self.solver.base}: GN is not PSD for the nonconvex "
                f"loss; allowed kinds there: {allowed}; {fix}"
            )
        if self.solver.base == "exact_inverse" and self.solver.options.get("curvature") == "gn":
            raise ValueError(
                "solver.curvature=gn with exact_inverse: GN is not PSD for the nonconvex loss; "
                "allowed: exact (or loss=cross_entropy)"
            )


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
        return None  # a solver's keys depend on the solver (solver_option_types)
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
