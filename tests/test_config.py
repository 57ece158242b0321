"""The real configs compose, and every bad value fails before training with its message."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from curvlab.config import RunConfig, SolverConfig, parse_config, to_dict
from curvlab.curvature.options import Kind
from curvlab.losses import LossKind
from curvlab.registry import solver_names

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def parsed(*overrides: str) -> RunConfig:
    return parse_config(composed(*overrides))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_default_is_the_digits_demo():
    run = parsed()
    assert run.dataset.name.value == "digits"
    assert run.net.widths[0] == 64 and run.net.widths[-1] == 10
    assert run.solver.name == "eacg" and run.curvature.kind is Kind.PCH1
    assert run.log.hessian_kinds == [Kind.FISHER, Kind.GN, Kind.PCH1, Kind.PCH2]


@pytest.mark.parametrize(
    ("dataset", "width"), [("digits", 64), ("mnist", 784), ("cifar10", 3072), ("imagenet10", 150528)]
)
def test_net_input_width_follows_the_dataset(dataset, width):
    run = parsed(f"dataset={dataset}", "net=eacg_cifar")
    assert run.net.widths == [width, 1024, 512, 256, 128, 64, 32, 16, 10]


def test_imagenet_width_follows_image_size():
    assert parsed("dataset=imagenet10", "dataset.image_size=32").net.widths[0] == 3072


def test_required_groups_exist():
    assert group_options("dataset") == ["cifar10", "digits", "imagenet10", "mnist"]
    assert set(group_options("curvature")) == {"exact", "gn", "fisher", "pch", "pch1", "pch2"}
    assert set(group_options("solver")) >= set(solver_names())
    assert set(group_options("loss")) == {"cross_entropy", "nonconvex"}
    assert {"eacg_cifar", "lowrank", "rahimi"} <= set(group_options("net"))
    assert set(group_options("hydra/launcher")) == {"joblib", "submitit_local", "submitit_slurm", "submitit_slurm_cpu",
                                                     "submitit_slurm_gpu", "ray"}


@pytest.mark.parametrize("group", ["dataset", "net", "loss", "curvature", "solver"])
def test_every_group_option_composes_and_validates(group):
    conv_data = {"mnist_2c2d": ["dataset=mnist"], "mnist_2c2d_sigmoid": ["dataset=mnist"],
                 "cifar10_3c3d": ["dataset=cifar10"]}  # nets made for those images
    for option in group_options(group):
        extra = ["solver=eacg"] if group == "curvature" and option == "exact" else []
        extra += conv_data.get(option, []) if group == "net" else []
        run = parsed(f"{group}={option}", *extra)
        assert isinstance(run, RunConfig)


def test_paper_nets():
    low = parsed("net=lowrank", "dataset=mnist").net
    assert low.widths == [784] + [128] * 12 + [10] and not low.bias
    assert low.activation.value == "relu" and low.init.value == "uniform" and low.init_scale == 0.2
    rahimi = parsed("net=rahimi").net
    assert rahimi.widths[1:-1] == [24] * 8 and rahimi.activation.value == "tanh"


def test_to_dict_round_trips():
    run = parsed("solver=cr", "loss=nonconvex")
    again = parse_config(to_dict(run))
    assert to_dict(again) == to_dict(run)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["solver.lr=-0.1"], "solver.lr must be > 0"),
        (["solver=eacg", "solver.alpha=0"], "solver.alpha must be in (0, 1)"),
        (["solver=kfi", "solver.alpha=1.5"], "solver.alpha must be in (0, 1)"),
        (["net.activation=softplus"], "net.activation: unknown value 'softplus'; allowed: sigmoid, tanh, relu"),
        (["loss=nonconvex", "curvature=gn", "solver=eacg"], "GN is not PSD for the nonconvex loss"),
        (["loss=nonconvex", "curvature=gn", "solver=kfi"], "GN is not PSD for the nonconvex loss"),
        (["loss=nonconvex", "solver=cr", "solver.base=kfi", "curvature=gn"], "GN is not PSD"),
        (["loss=nonconvex", "solver=exact_inverse", "curvature=gn"], "GN is not PSD"),
        (["solver=kfi", "curvature=exact"], "allowed: fisher, gn, pch, pch1, pch2"),
        (["solver.name=lbfgs"], "solver.name: unknown solver 'lbfgs'; allowed: sgd"),
        (["curvature.kind=hessian"], "curvature.kind: unknown value 'hessian'; allowed: exact, gn"),
        (["dataset.name=svhn"], "dataset.name: unknown value 'svhn'; allowed: digits, mnist"),
        (["dataset=cifar10", "dataset.source=npz"], "dataset.path: dataset.source=npz needs"),
        (["dtype=float16"], "dtype: unknown value 'float16'; allowed: float32, float64"),
        (["device=tpu"], "device: unknown value 'tpu'"),
        (["train.schedule=cosine"], "train.schedule: unknown value 'cosine'; allowed: constant, exponential"),
        (["train.batch_size=0"], "train.batch_size must be >= 1"),
        (["train.decay_rate=1.5"], "train.decay_rate must lie in (0, 1]"),
        (["+train.epoch=3"], "train.epoch: unknown field; allowed:"),
        (["log.hessian_kinds=[exact]"], "log.hessian_kinds: 'exact' is the reference"),
        (["net.widths=[64,10,10]", "dataset.num_classes=12"], "net.widths[-1]=10 but dataset.num_classes=12"),
        (["solver=cr", "solver.sigma=-1"], "solver.sigma must be > 0"),
        (["solver=cr", "solver.base=lbfgs"], "solver.base: unknown base solver 'lbfgs'"),
        (["resume=maybe"], "resume: unknown value 'maybe'"),
    ],
)
def test_bad_values_name_field_and_allowed_values(overrides, message):
    with pytest.raises(ValueError) as err:
        parsed(*overrides)
    assert message in str(err.value)


def test_gn_is_fine_for_cross_entropy_and_pch_for_nonconvex():
    assert parsed("curvature=gn", "solver=kfi").curvature.kind is Kind.GN
    run = parsed("loss=nonconvex", "curvature=pch2", "solver=kfi")
    assert run.loss.name is LossKind.NONCONVEX and run.loss.options == {"delta": 5.0, "eps": 0.2}


# Item 9 of issue 11: every value is checked against its declared type before any data loads.
# (overrides, the message); each message names the field, the bad value and what is allowed.
BAD_TYPES = [
    (["net.widths=[64,2.5,10]"], "net.widths[1] must be an integer, got 2.5"),
    (["train.epochs=1.5"], "train.epochs must be an integer, got 1.5"),
    (["train.max_steps=1.5"], "train.max_steps must be an integer or null, got 1.5"),
    (["train.checkpoint_every=2.5"], "train.checkpoint_every must be an integer, got 2.5"),
    (["net.bias=maybe"], "net.bias must be true or false, got 'maybe'"),
    (["log.progress=maybe"], "log.progress must be true or false, got 'maybe'"),
    (["train.batch_size=12.5"], "train.batch_size must be an integer, got 12.5"),
    (["train.batch_size=1e12"], "train.batch_size must be an integer of at most 2147483647 in size, got 1e+12"),
    (["dataset.train_subset=100.5"], "dataset.train_subset must be an integer or null, got 100.5"),
    (["curvature.mc_samples=1.5"], "curvature.mc_samples must be an integer, got 1.5"),
    (["seed=1.5"], "seed must be an integer, got 1.5"),
    (["seed=abc"], "seed must be an integer, got 'abc'"),
    (["seed=1e30"], "seed must be an integer of at most 2147483647 in size, got 1e+30"),
    (["net.widths=[64,1e12,10]"], "net.widths[1] must be an integer of at most 2147483647 in size, got 1e+12"),
    (["net.widths=[64,100000,100000,10]"], "make 10,007,600,010 parameters, more than the 2,147,483,647 allowed"),
    (["net.widths=64"], "net.widths must be a list of integers, got 64"),
    (["solver.lr=abc"], "solver.lr must be a number, got 'abc'"),
    (["solver.lr=1e400"], "solver.lr must be a finite number, got inf"),
    (["loss=nonconvex", "loss.eps=nan"], "loss.eps must be a finite number, got nan"),
    (["loss=nonconvex", "loss.delta=true"], "loss.delta must be a number, got True"),
    (["+solver.foo=1"], "solver.foo: unknown option for solver eacg; allowed: alpha, eps_cg, max_cg, split"),
    (["+solver.curvature=gn"], "the curvature is chosen with curvature=NAME"),
    (["solver=eacg", "solver.max_cg=2.5"], "solver.max_cg must be an integer, got 2.5"),
    (["solver=kfi", "solver.rank_one_first_layer=maybe"], "solver.rank_one_first_layer must be true or false"),
    (["solver=sgd", "solver.momentum=abc"], "solver.momentum must be a number, got 'abc'"),
    (["solver=sgd", "+solver.nesterov=2"], "solver.nesterov must be true or false, got 2"),
    (["solver=adam", "+solver.betas=[0.9]"], "solver.betas must be a list of 2 values (a number, a number), got [0.9]"),
    (["solver=cr", "solver.base_options=5"], "solver.base_options must be a mapping (key: value) or null, got 5"),
    (["solver=cr", "+solver.base_options.foo=1"], "solver.base_options.foo: unknown option for solver sgd; allowed:"),
    (["solver=cr", "solver.base=eacg", "+solver.base_options.split=0.5"], "solver.base_options.split must be an integer"),
    (["solver=cr", "solver.sigma=[1]"], "solver.sigma must be a number, got [1]"),
    (["+foo=1"], "foo: unknown field; allowed: curvature, dataset, device"),
    (["dataset.test_fraction=abc"], "dataset.test_fraction must be a number, got 'abc'"),
    (["dataset.download=maybe"], "dataset.download must be true or false, got 'maybe'"),
    (["dataset.name=[mnist]"], "dataset.name must be one of digits, mnist, cifar10, imagenet10, got ['mnist']"),
    (["log.hessian_kinds=[gn,foo]"], "log.hessian_kinds[1]: unknown value 'foo'; allowed: exact, gn"),
    (["log.hessian_kinds=gn"], "log.hessian_kinds must be a list of items that are one of exact, gn"),
    (["log.hessian_every=-0.5"], "log.hessian_every must be an integer, got -0.5"),
    (["dataset=cifar10", "dataset.image_size=abc"], "dataset.input_dim: cannot resolve '${prod:3,${dataset.image_size}"),
    (["train.eval_every=true"], "train.eval_every must be an integer or null, got True"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_TYPES, ids=[" ".join(o) for o, _ in BAD_TYPES])
def test_bad_types_name_the_field_value_and_allowed(overrides, message):
    with pytest.raises(ValueError) as err:
        parsed(*overrides)
    assert message in str(err.value)


def test_integral_floats_and_names_are_accepted():
    run = parsed("train.epochs=12.0", "train.batch_size=1e3", "experiment_name=2024", "solver=adam",
                 "+solver.betas=[0.8,0.9]", "solver.lr=1")
    assert run.train.epochs == 12 and isinstance(run.train.epochs, int) and run.train.batch_size == 1000
    assert run.experiment_name == "2024" and run.solver.options["betas"] == (0.8, 0.9)
    assert isinstance(run.solver.lr, float)
    assert parse_config(to_dict(run)).solver.options == run.solver.options  # round trip keeps the types


def test_a_new_solver_option_is_type_checked_without_further_code(monkeypatch):
    """Option types come from the solver's constructor, so e.g. a new ``every: int`` is checked."""
    from curvlab.solvers import SOLVERS
    from curvlab.solvers.kfi import KFI

    class KFIEvery(KFI):
        def __init__(self, net, loss, lr: float, curvature=None, alpha: float = 0.02, every: int = 1) -> None:
            super().__init__(net, loss, lr, curvature, alpha)

    monkeypatch.setitem(SOLVERS, "kfi", KFIEvery)
    assert SolverConfig(name="kfi", options={"every": 3.0}).options == {"every": 3}
    with pytest.raises(ValueError, match=r"solver.every must be an integer, got 2.5"):
        SolverConfig(name="kfi", options={"every": 2.5})
    with pytest.raises(ValueError, match=r"solver.foo: unknown option for solver kfi; allowed: alpha, every$"):
        SolverConfig(name="kfi", options={"foo": 1})
