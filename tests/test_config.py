"""The real configs compose, and every bad value fails before training with its message."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from curvlab.config import KNOWN_SOLVERS, RunConfig, parse_config, to_dict
from curvlab.curvature.options import Kind
from curvlab.losses import LossKind

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
    assert set(group_options("solver")) >= set(KNOWN_SOLVERS)
    assert set(group_options("loss")) == {"cross_entropy", "nonconvex"}
    assert {"eacg_cifar", "lowrank", "rahimi"} <= set(group_options("net"))
    assert set(group_options("hydra/launcher")) == {"joblib", "submitit_local", "submitit_slurm"}


@pytest.mark.parametrize("group", ["dataset", "net", "loss", "curvature", "solver"])
def test_every_group_option_composes_and_validates(group):
    for option in group_options(group):
        extra = ["solver=eacg"] if group == "curvature" and option == "exact" else []
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
        (["loss=nonconvex", "solver=exact_inverse", "solver.curvature=gn"], "GN is not PSD"),
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
