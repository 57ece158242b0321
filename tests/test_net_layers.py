"""The runner's ``net.layers``: a net listed module by module, validated, built and trained."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import NO_HESSIAN, TINY, config
from torch import nn

from curvlab import runfiles as rf
from curvlab.modules import chain
from curvlab.nets import MLP, make_net
from curvlab.train import train


def test_the_example_config_builds_a_sequential() -> None:
    cfg = config("net=mixed")
    assert cfg.net.layers == [32, "gelu", 16, "sigmoid", 10]
    assert cfg.net.widths == [64, 32, 16, 10]  # the input from the dataset, then the Linear widths
    net = cfg.net.build()
    assert isinstance(net, nn.Sequential) and chain(net).widths == [64, 32, 16, 10]
    assert isinstance(make_net(cfg.net.widths, "tanh"), MLP)  # no layers: the MLP, as every preset


def test_layers_from_the_command_line() -> None:
    cfg = config("net=mixed", "net.layers=[flatten,20,tanh,20,20,${dataset.num_classes}]", "net.bias=false")
    net = cfg.net.build()
    assert chain(net).widths == [64, 20, 20, 20, 10] and chain(net).biases == [False] * 4


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ("[32,swish,10]", r"net.layers\[1\]: unknown entry 'swish'; use a positive int .* one of sigmoid"),
        ("[32,tanh]", r"net.layers must end with a Linear width"),
        ("[32,tanh,0,10]", r"net.layers\[2\]: a Linear width must be >= 1"),
        ("[32,tanh,7]", r"net.widths\[-1\]=7 but dataset.num_classes=10"),
    ],
)
def test_bad_layers_name_the_field(layers: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config("net=mixed", f"net.layers={layers}")


def test_a_sequential_run_trains_logs_and_resumes(tmp_path) -> None:
    args = [*TINY, "net=mixed", "solver=eacg", "train.max_steps=3", "log.hessian_every=2", "log.hessian_first=1"]
    full = train(config(*args), tmp_path / "full")
    assert full["status"] == "completed"
    assert (tmp_path / "full" / rf.HESSIAN_ERRORS).read_text().count("\n") > 1  # curvature of every kind logged
    train(config(*args, "train.stop_after=2"), tmp_path / "killed")
    resumed = train(config(*args), tmp_path / "killed")
    assert resumed["train_loss"] == full["train_loss"]  # bit-identical after resume
    state = torch.load(tmp_path / "full" / rf.CHECKPOINT, weights_only=False)["net"]
    assert "0.weight" in state  # an nn.Sequential's own parameter names


@pytest.mark.parametrize("solver", ["kfi", "exact_inverse", "cr"])
def test_every_solver_runs_on_a_sequential(tmp_path, solver: str) -> None:
    extra = ["net.layers=[8,tanh,${dataset.num_classes}]"] if solver == "exact_inverse" else []
    summary = train(config(*TINY, *NO_HESSIAN, "net=mixed", *extra, f"solver={solver}", "train.max_steps=2"), tmp_path)
    assert summary["status"] == "completed", json.dumps(summary)
