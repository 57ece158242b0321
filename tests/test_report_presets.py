"""Short report names of the conv presets (``curvlab.report.presets``): a run of ``net=mnist_2c2d`` or
``net=cifar10_3c3d`` is labelled by the preset's name, not by its layer list written out."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from report_fixtures import write_run

from curvlab.cli import CONFIG_DIR
from curvlab.config import parse_config, to_dict
from curvlab.report import load_runs, report
from curvlab.report.groups import group_runs
from curvlab.report.presets import conv_presets, net_preset_name

PRESETS = {"mnist_2c2d": "mnist", "mnist_2c2d_sigmoid": "mnist", "cifar10_3c3d": "cifar10"}


def _net_section(net: str, dataset: str) -> dict:
    """The ``net`` section a run of this preset writes into its ``config.yaml`` (``train.py``: ``to_dict``)."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = parse_config(compose("config", overrides=[f"net={net}", f"dataset={dataset}"]))
    return yaml.safe_load(OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))["net"]


def test_the_conv_presets_are_found():
    assert [name for name, _, _ in conv_presets()] == ["cifar10_3c3d", "mnist_2c2d", "mnist_2c2d_sigmoid"]


@pytest.mark.parametrize("net, dataset", PRESETS.items())
def test_a_preset_run_is_named_by_its_preset(net, dataset):
    section = _net_section(net, dataset)
    assert net_preset_name(str(section["layers"]), str(section["input_shape"])) == net  # as the report holds it
    assert net_preset_name(section["layers"]) == net  # input shape unset: the dataset's
    raw = yaml.safe_load((Path(CONFIG_DIR) / "net" / f"{net}.yaml").read_text())["layers"][:-1] + [10]
    assert net_preset_name(raw) == net  # conv(32, 5, padding=2) = conv(out_channels=32, kernel_size=5, padding=2)


def test_other_nets_keep_their_layer_list():
    layers = _net_section("mnist_2c2d", "mnist")["layers"]
    assert net_preset_name(["tanh" if v == "relu" else v for v in layers]) is None  # another activation
    assert net_preset_name(["sigmoid" if v == "relu" else v for v in layers]) == "mnist_2c2d_sigmoid"
    assert net_preset_name(layers[:2] + layers[3:]) is None  # a layer left out
    assert net_preset_name(layers, [3, 28, 28]) is None  # other images
    assert net_preset_name([32, "gelu", 16, "sigmoid", 10]) is None  # no image layers: not a conv preset
    assert net_preset_name("not a list") is None and net_preset_name("[conv(]") is None


def test_the_report_labels_and_files_use_the_preset_names(tmp_path):
    """Two conv settings and a conv net of no preset in one experiment: the setting labels and the table files
    (``<exp>__<setting>``) name the presets; the other net keeps its layers."""
    other = _net_section("mnist_2c2d", "mnist")
    other["layers"] = [v for v in other["layers"] if not str(v).startswith("maxpool")]
    nets = {"m": ("mnist", _net_section("mnist_2c2d", "mnist")),
            "c": ("cifar10", _net_section("cifar10_3c3d", "cifar10")), "o": ("mnist", other)}
    for key, (dataset, net) in nets.items():
        write_run(tmp_path / "runs", key, experiment="conv", curvature="pch1", solver="eacg", seed=0,
                  kinds=("gn", "pch1"), cfg_extra={"net": net, "dataset": {"name": dataset}})
    g = group_runs(load_runs([tmp_path / "runs"]).runs)
    labels = {Path(d).name: setting for d, setting in zip(g.runs["run_dir"], g.runs["setting"])}
    assert labels["m"] == "mnist · net mnist_2c2d · cross-entropy"
    assert labels["c"] == "cifar10 · net cifar10_3c3d · cross-entropy"  # init, input_shape: the presets' own
    assert labels["o"].startswith("mnist · net 784-[conv(out_channels=32") and len(labels["o"]) > 100
    assert "net.init=" in labels["o"]  # not a preset: its init differs from the cifar10 run's, and is said
    files = {f.name for f in report([tmp_path / "runs"], tmp_path / "o", want={"tables"})}
    assert any(f.startswith("conv__mnist_net_mnist_2c2d_cross-entropy") for f in files)
    assert any(f.startswith("conv__cifar10_net_cifar10_3c3d_cross-entropy") for f in files)
