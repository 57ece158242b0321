"""The `curvature` group's conv-net options in the real configs: ``kfac_type``, ``weight_factor=block`` and
``sketch`` reach ``CurvatureOptions``; bad values and options that need a conv net exit 2 with one line."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from curvlab import cli
from curvlab import runfiles as rf
from curvlab.cli import CONFIG_DIR
from curvlab.config import parse_config
from curvlab.curvature.options import KFACType, WeightFactor

QUIET = ["log.progress=false", "device=cpu", "train.threads=1"]
CONV = ["net=mnist_2c2d", "net.input_shape=null", "dataset=digits",
        "net.layers=['conv(2, 3)',relu,flatten,'${dataset.num_classes}']"]


def parsed(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return parse_config(compose("config", overrides=list(overrides)))


@pytest.mark.parametrize("group", ["exact", "fisher", "gn", "pch", "pch1", "pch2"])
def test_every_curvature_config_names_the_conv_options(group):
    cfg = parsed(f"curvature={group}").curvature
    assert (cfg.kfac_type, cfg.sketch) == (KFACType.EXPAND, False)  # defaults: KFC expand, the exact rows


def test_conv_options_reach_the_curvature_options():
    cfg = parsed(*CONV, "solver=eacg", "curvature.kfac_type=reduce", "curvature.weight_factor=block",
                 "curvature.sketch=true", "curvature.mc_samples=4").curvature
    got = (cfg.kfac_type, cfg.weight_factor, cfg.sketch, cfg.mc_samples)
    assert got == (KFACType.REDUCE, WeightFactor.BLOCK, True, 4)


ERRORS = [
    (["curvature.kfac_type=both"], "curvature.kfac_type: unknown value 'both'; allowed: expand, reduce"),
    (["curvature.weight_factor=blocks"],
     "curvature.weight_factor: unknown value 'blocks'; allowed: rank_one, full, block"),
    (["solver=eacg", "curvature.weight_factor=block"],
     "curvature.weight_factor=block needs a net with convolutions (net.layers with conv(...)); on an MLP use rank_one"),
    (["solver=kfi", "curvature.sketch=true"], "curvature.sketch=true needs a net with convolutions"),
    ([*CONV, "curvature=fisher", "curvature.sketch=true"], "curvature.sketch=true applies to kind gn, pch1 or pch2"),
    (["curvature.sketch=2"], "curvature.sketch must be true or false, got 2"),
]


@pytest.mark.parametrize(("overrides", "message"), ERRORS, ids=[" ".join(o[-2:]) for o, _ in ERRORS])
def test_bad_conv_options_exit_2_with_one_line(tmp_path, capsys, overrides, message):
    code = cli.main(["train", *overrides, f"run_dir={tmp_path}", *QUIET])
    out = capsys.readouterr()
    text = out.out + out.err
    if (tmp_path / rf.SUMMARY).exists():
        text += rf.read_json(tmp_path / rf.SUMMARY)["failure"]
    assert code == 2 and message in text and "Traceback" not in text, text
    assert not (tmp_path / rf.METRICS).exists()
