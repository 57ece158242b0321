"""One registry per name family (issue 19 item 2): config, runner, report and scripts read it.

The bugs the copies caused, each pinned: a registered solver the config's own list did not know,
``solver=exact_inverse curvature=gn`` inverting H while ``summary.json`` said ``gn``,
``damping=0`` passing the config and failing after the data had loaded, and ``eps_cg=0`` refused
by the config though EA-CG takes it.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from curvlab import runfiles as rf
from curvlab.config import SolverConfig, parse_config
from curvlab.curvature.options import CurvatureOptions, Kind
from curvlab.losses import LossKind, make_loss
from curvlab.nets import MLP, Activation
from curvlab.registry import ACTIVATIONS, KINDS, LOSSES, Family, curvature_fields, solver_class, solver_names, solvers
from curvlab.report.groups import method_label
from curvlab.solvers.base import SOLVERS, Solver, register
from curvlab.solvers.eacg import EACG
from curvlab.solvers.exact_inverse import ExactInverseNewton, HessianKind
from curvlab.solvers.options import COUNT
from curvlab.train import build_solver, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["train.epochs=1", "train.max_steps=2", "train.batch_size=32", "dataset.train_subset=64",
        "dataset.test_subset=32", "device=cpu", "net=tiny", "log.hessian_every=0", "log.hessian_first=0"]
ALL_FIELDS = frozenset(CurvatureOptions.field_names())


def parsed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return parse_config(compose(config_name="config", overrides=list(overrides)))


# --- the families ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "enum"), [(KINDS, Kind), (LOSSES, LossKind), (ACTIVATIONS, Activation)])
def test_each_family_is_its_enum_with_a_label_per_name(family: Family, enum: type[Enum]) -> None:
    assert family.names == tuple(m.value for m in enum)
    for name in family:
        assert family.label(name) and family.check(name) == name
    with pytest.raises(ValueError, match=rf"^{family.field}: unknown value 'nope'; allowed: "):
        family.check("nope")


def test_kind_labels_and_alias() -> None:
    assert [KINDS.label(k) for k in ("exact", "gn", "fisher", "pch", "pch1", "pch2")] == \
        ["H", "GN", "Fisher", "PCH-1", "PCH-1", "PCH-2"]
    assert KINDS.canonical("pch") == "pch1" and KINDS.label("kfra_old") == "kfra_old"  # an old record's name


def test_a_name_without_a_label_stops_the_import() -> None:
    class Colour(str, Enum):
        RED = "red"
        BLUE = "blue"

    with pytest.raises(RuntimeError, match="label each name"):
        Family.of("colour", Colour, {"red": "Red"})


def test_config_files_and_registered_solvers_agree() -> None:
    names = set(solver_names())
    assert names == {"sgd", "adagrad", "adadelta", "adam", "eacg", "kfi", "cr", "exact_inverse"}
    assert names <= {p.stem for p in (CONFIGS / "solver").glob("*.yaml")}  # solver=NAME for each
    assert {p.stem for p in (CONFIGS / "curvature").glob("*.yaml")} == set(KINDS.names)
    assert {p.stem for p in (CONFIGS / "loss").glob("*.yaml")} == set(LOSSES.names)
    for name, cls in solvers().items():
        assert cls.name == name and cls.label.format(kind="K", base="B"), name


def test_help_lists_the_registered_solvers() -> None:
    assert OmegaConf.create({"s": "${solver_names:}"}).s == ", ".join(solver_names())


# --- a solver registered later is known everywhere (KNOWN_SOLVERS used to be a copy) ----------------
@pytest.fixture()
def lookahead():
    """A solver registered after the package, with one integer option ``k >= 1``."""
    saved = dict(SOLVERS)

    @register("lookahead")
    class Lookahead(Solver):
        label = "Lookahead"
        option_rules = {"k": COUNT}

        def __init__(self, net, loss, lr: float, k: int = 5) -> None:
            super().__init__(net, loss, lr)
            self.check_ranges(k=k)
            self.k = int(k)

        def direction(self, x, y):
            raise NotImplementedError

    yield Lookahead
    SOLVERS.clear()
    SOLVERS.update(saved)


def test_a_newly_registered_solver_is_accepted_checked_and_labelled(lookahead) -> None:
    assert "lookahead" in solver_names()
    assert SolverConfig("lookahead", 0.1, {"k": 3.0}).options == {"k": 3}
    with pytest.raises(ValueError, match=r"^solver.k must be an integer >= 1, got 0$"):
        SolverConfig("lookahead", 0.1, {"k": 0})
    with pytest.raises(ValueError, match=r"^solver.k must be an integer, got 2.5$"):
        SolverConfig("lookahead", 0.1, {"k": 2.5})
    assert SolverConfig("cr", 0.1, {"base": "lookahead", "base_options": {"k": 2}}).options["base"] == "lookahead"
    assert method_label({"cfg.solver.name": "lookahead"}) == "Lookahead"
    assert method_label({"cfg.solver.name": "cr", "cfg.solver.base": "lookahead"}) == "Lookahead + CR"
    assert curvature_fields("lookahead") == frozenset()
    with pytest.raises(ValueError, match=r"^solver.k must be an integer >= 1, got 0$"):
        lookahead(MLP([4, 3, 2]), make_loss("cross_entropy"), 0.1, k=0)  # the constructor: the same rule


def test_unknown_solver_names_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"^solver.name: unknown solver 'lbfgs'; allowed: sgd, adagrad, "):
        solver_class("lbfgs")


# --- options: one rule, read by the config and by the constructor ------------------------------------
_CANDIDATES = {int: (0, -1), float: (0.0, -1.0, 1.5), str: ("skip",)}


def _rule_cases():
    """(solver, option, value) for every option rule and each candidate of its type that it refuses."""
    for name, cls in solvers().items():
        types_ = cls.option_types()
        for option, rule in cls.option_rules.items():
            for bad in _CANDIDATES.get(types_[option], ()):
                try:
                    rule.check(option, bad)
                except ValueError:
                    yield name, option, bad


@pytest.mark.parametrize(("name", "option", "bad"), list(_rule_cases()))
def test_config_and_constructor_refuse_a_bad_option_with_one_message(name: str, option: str, bad: object) -> None:
    with pytest.raises(ValueError) as configured:
        SolverConfig(name, 0.1, {option: bad})
    with pytest.raises(ValueError) as built:
        solver_class(name)(MLP([4, 3, 2]), make_loss("cross_entropy"), lr=0.1, **{option: bad})
    assert str(configured.value) == str(built.value)
    assert str(built.value).startswith(f"solver.{option} must be ")


def test_every_option_rule_is_exercised() -> None:
    covered = {(n, o) for n, o, _ in _rule_cases()}
    assert covered == {(n, o) for n, cls in solvers().items() for o in cls.option_rules}


def test_damping_zero_is_refused_before_the_data_loads() -> None:
    message = r"^solver.damping must be > 0 \(it makes H \+ damping·I invertible layer by layer\), got 0.0$"
    with pytest.raises(ValueError, match=message):
        parsed("solver=exact_inverse", "solver.damping=0")  # parse_config: no data is loaded yet
    with pytest.raises(ValueError, match=message):
        ExactInverseNewton(MLP([4, 3, 2]), make_loss("cross_entropy"), 1.0, damping=0.0)


def test_eps_cg_zero_is_accepted_by_config_and_eacg() -> None:
    run = parsed("solver=eacg", "solver.eps_cg=0")
    assert run.solver.options["eps_cg"] == 0.0
    assert build_solver(run, MLP([64, 32, 16, 10]), make_loss("cross_entropy")).eps_cg == 0.0
    with pytest.raises(ValueError, match=r"^solver.eps_cg must be >= 0"):
        parsed("solver=eacg", "solver.eps_cg=-0.1")
    with pytest.raises(ValueError, match=r"^solver.eps_cg must be >= 0"):
        EACG(MLP([4, 3, 2]), make_loss("cross_entropy"), 0.1, eps_cg=-0.1)


# --- the curvature a run uses: the `curvature` group, nowhere else ------------------------------------
@pytest.mark.parametrize(("overrides", "kind"), [
    (["solver=exact_inverse"], "exact"),
    (["solver=exact_inverse", "curvature=gn"], "gn"),
    (["solver=exact_inverse_h"], "exact"),
    (["solver=exact_inverse_gn"], "gn"),
    (["solver=exact_inverse_gn", "curvature=exact"], "exact"),
    (["experiment=rahimi_newton", "solver=exact_inverse_gn"], "gn"),
])
def test_exact_inverse_inverts_the_curvature_group(overrides: list[str], kind: str) -> None:
    run = parsed(*overrides)
    assert run.curvature.kind.value == kind and "curvature" not in run.solver.options
    net = MLP(run.net.widths, run.net.activation)
    assert build_solver(run, net, make_loss(run.loss.name)).curvature is HessianKind(kind)


@pytest.mark.parametrize(("overrides", "message"), [
    (["solver=exact_inverse", "curvature=pch1"],
     "curvature.kind=pch1 with solver exact_inverse: it inverts the full Hessian (exact) or the full "
     "Gauss-Newton matrix (gn); allowed: exact, gn"),
    (["solver=exact_inverse", "curvature=gn", "loss=nonconvex"],
     "curvature.kind=gn with solver exact_inverse: GN is not PSD for the nonconvex loss"),
    (["solver=exact_inverse", "+solver.curvature=gn"],
     "solver.curvature: unknown option for solver exact_inverse; allowed: damping, refine; the curvature is "
     "chosen with curvature=NAME"),
    (["solver=cr", "solver.base=exact_inverse", "curvature=fisher"], "with solver exact_inverse"),
])
def test_a_contradicting_curvature_is_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError) as err:
        parsed(*overrides)
    assert message in str(err.value)


def test_summary_and_config_record_the_curvature_the_solver_inverted(tmp_path: Path) -> None:
    run = parsed(*TINY, "solver=exact_inverse", "curvature=gn", "solver.damping=1.0")
    summary = train(run, tmp_path)
    assert summary["status"] == "completed" and summary["curvature"] == "gn"
    saved = yaml.safe_load((tmp_path / rf.CONFIG).read_text())
    assert saved["curvature"]["kind"] == "gn" and "curvature" not in saved["solver"]


@pytest.mark.parametrize(("name", "options", "fields"), [
    ("sgd", {}, frozenset()),
    ("eacg", {}, ALL_FIELDS),
    ("kfi", {}, ALL_FIELDS),
    ("exact_inverse", {}, frozenset({"kind"})),
    ("cr", {}, frozenset()),
    ("cr", {"base": "kfi"}, ALL_FIELDS),
    ("cr", {"base": "exact_inverse"}, frozenset({"kind"})),
    ("lbfgs", {}, frozenset()),  # a solver this install lacks (an old record)
])
def test_curvature_fields_each_solver_reads(name: str, options: dict, fields: frozenset[str]) -> None:
    assert curvature_fields(name, options) == fields


# --- the report: labels from the registry, the committed records unchanged --------------------------
@pytest.mark.parametrize(("row", "label"), [
    ({"cfg.solver.name": "exact_inverse", "cfg.curvature.kind": "gn"}, "Newton (GN)"),
    ({"cfg.solver.name": "exact_inverse", "cfg.curvature.kind": "exact"}, "Newton (H)"),
    # the committed Rahimi runs: solver.curvature=gn beside the unused default curvature group
    ({"cfg.solver.name": "exact_inverse", "cfg.solver.curvature": "gn", "cfg.curvature.kind": "pch1"}, "Newton (GN)"),
    ({"cfg.solver.name": "kfi", "cfg.curvature.kind": "gn"}, "KFI · GN (KFRA)"),
    ({"cfg.solver.name": "kfi", "cfg.curvature.kind": "fisher", "cfg.solver.rank_one_first_layer": True},
     "KFI · Fisher (KFAC) · Eq. 13"),
    ({"cfg.solver.name": "eacg", "cfg.curvature.kind": "pch", "cfg.solver.split": 4}, "EA-CG · PCH-1 · split 4"),
    ({"cfg.solver.name": "sgd", "cfg.solver.momentum": 0.9}, "SGD (momentum 0.9)"),
    ({"cfg.solver.name": "cr", "cfg.solver.base": "adagrad"}, "Adagrad + CR"),
    ({"solver": "lbfgs"}, "lbfgs"),  # a solver this install lacks: its name
    # conv-net options, where they differ from the defaults (expand, no sketch)
    ({"cfg.solver.name": "eacg", "cfg.curvature.kind": "pch1", "cfg.curvature.sketch": True,
      "cfg.curvature.mc_samples": 3, "cfg.curvature.kfac_type": "expand"}, "EA-CG · PCH-1 · sketch 3"),
    ({"cfg.solver.name": "kfi", "cfg.curvature.kind": "fisher", "cfg.curvature.kfac_type": "reduce",
      "cfg.curvature.sketch": False}, "KFI · Fisher (KFAC) · reduce"),
    ({"cfg.solver.name": "eacg", "cfg.curvature.kind": "gn", "cfg.curvature.weight_factor": "block"},
     "EA-CG · GN · block"),
])
def test_method_labels_come_from_the_registry(row: dict, label: str) -> None:
    assert method_label(row) == label
