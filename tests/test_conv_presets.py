"""DeepOBS's conv nets as net presets, image-shaped data, and the runner on them (issue 19, item 6)."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

from curvlab import cli
from curvlab import runfiles as rf
from curvlab.cli import CONFIG_DIR
from curvlab.config import DatasetConfig, parse_config
from curvlab.data import load_dataset
from curvlab.nets import needs_images, parse_layers, sequential
from curvlab.train import curvature_gap
from test_reproduce import reproduce, tiny_root  # noqa: F401  (the script as a module; its tiny --data-root)

QUIET = ["log.progress=false", "device=cpu", "train.threads=1"]


def parsed(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return parse_config(compose("config", overrides=list(overrides)))


def preset_net(name: str, dataset: str) -> nn.Sequential:
    cfg = parsed(f"net={name}", f"dataset={dataset}").net
    torch.manual_seed(0)
    return cfg.build()


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An npz of 48 + 16 random 28×28 greyscale uint8 images with labels, as `curvlab data prepare mnist` writes."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "mnist.npz"
    np.savez(path, x_train=rng.integers(0, 256, (48, 28, 28), dtype=np.uint8), y_train=rng.integers(0, 10, 48),
             x_test=rng.integers(0, 256, (16, 28, 28), dtype=np.uint8), y_test=rng.integers(0, 10, 16))
    return path


# --- the presets are DeepOBS's nets -------------------------------------------------------------

def test_mnist_2c2d_is_deepobs_net():
    """net_mnist_2c2d: 5×5 "same" convs 32, 64, 2×2 pools, 3136-1024-10; truncated normal 0.05, biases 0.05."""
    net = preset_net("mnist_2c2d", "mnist")
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 32, (5, 5), (2, 2)), (32, 64, (5, 5), (2, 2))]
    assert [(m.in_features, m.out_features) for m in linears] == [(7 * 7 * 64, 1024), (1024, 10)]
    assert sum(p.numel() for p in net.parameters()) == 3_274_634
    for layer in convs + linears:
        w = layer.weight.detach()
        assert w.abs().max() <= 2 * 0.05 and 0.035 < w.std() < 0.05  # N(0, 0.05²) cut at ±2σ: std 0.044
        assert torch.equal(layer.bias.detach(), torch.full_like(layer.bias, 0.05))
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_conv_bench_times_the_mnist_2c2d_preset():
    """``scripts/bench_conv.py --net mnist_2c2d`` times the net the conv runs train."""
    bench = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "bench_conv.py"))
    net, shape = bench["NETS"]["mnist_2c2d"]
    assert str(net()) == str(preset_net("mnist_2c2d", "mnist")) and shape == (1, 28, 28)


def test_cifar10_3c3d_is_deepobs_net():
    """net_cifar10_3c3d: convs 64 (5×5 valid), 96 (3×3 valid), 128 (3×3 same), 3×3/2 "same" pools, 1152-512-256-10."""
    net = preset_net("cifar10_3c3d", "cifar10")
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (64, (5, 5), (0, 0)), (96, (3, 3), (0, 0)), (128, (3, 3), (1, 1))]
    assert [(m.in_features, m.out_features) for m in linears] == [(3 * 3 * 128, 512), (512, 256), (256, 10)]
    assert sum(p.numel() for p in net.parameters()) == 895_210
    for c in convs:  # Xavier normal: std √(2 / (fan_in + fan_out)), fans with the receptive field
        k = c.kernel_size[0] * c.kernel_size[1]
        assert float(c.weight.detach().std()) == pytest.approx((2 / (k * (c.in_channels + c.out_channels))) ** 0.5, rel=0.1)
    for m in linears:  # Xavier uniform bound √(6 / (fan_in + fan_out))
        assert m.weight.abs().max() <= (6 / (m.in_features + m.out_features)) ** 0.5
    assert all(not m.bias.any() for m in convs + linears)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_3c3d_pooling_is_tensorflow_same():
    """TensorFlow's "same" max-pooling pads −∞ at the right and bottom; after a ReLU our zero pad equals it."""
    net = preset_net("cifar10_3c3d", "cifar10")
    x = torch.randn(2, 3, 32, 32)
    h = x
    for i, m in enumerate(net):
        if isinstance(m, nn.ZeroPad2d):
            pool = net[i + 1]
            tf = F.max_pool2d(F.pad(h, (0, 1, 0, 1), value=float("-inf")), 3, 2)  # TF: out = ceil(in / 2)
            assert tf.shape[-1] == -(-h.shape[-1] // 2)
            torch.testing.assert_close(pool(m(h)), tf, rtol=0, atol=0)
        h = m(h)


# --- layer lists with image layers --------------------------------------------------------------

def test_image_layers_parse_to_one_normal_form():
    out = parse_layers(["conv(8, 3, stride=2, padding=same)", "maxpool(2)", "zeropad([0, 1, 0, 1])",
                        "AvgPool(kernel_size=2, stride=1)", "adaptiveavgpool(1)", "flatten", 10])
    assert out[:5] == ["conv(out_channels=8, kernel_size=3, stride=2, padding=same)", "maxpool(kernel_size=2)",
                       "zeropad(padding=[0, 1, 0, 1])", "avgpool(kernel_size=2, stride=1)",
                       "adaptiveavgpool(output_size=1)"]
    assert parse_layers(out) == out and needs_images(out) and not needs_images([64, "relu", 10])
    net = sequential((1, 9, 9), ["conv(8, 3, padding=1)", "avgpool(2, 1)", "adaptiveavgpool(2)", "flatten", 10])
    assert [type(m) for m in net][1:3] == [nn.AvgPool2d, nn.AdaptiveAvgPool2d] and net[-1].in_features == 8 * 2 * 2


@pytest.mark.parametrize(("layers", "message"), [
    (["conv(8, 3)", 10], "net.layers[1]: the Linear of width 10 gets images of shape (8, 6, 6); put flatten"),
    (["conv(8)", "flatten", 10], "net.layers[0]: conv needs kernel_size"),
    (["conv(8, 3, pad=1)", "flatten", 10], "conv has no argument 'pad'"),
    (["conv(8, 0)", "flatten", 10], "kernel_size=0 must be an integer >= 1"),
    (["pool(2)", "flatten", 10], "unknown layer 'pool'"),
    (["conv(8, 9)", "flatten", 10], "net.layers[0]: conv(out_channels=8, kernel_size=9) does not fit its input"),
    (["flatten", 10, "maxpool(2)", 10], "net.layers[2]: maxpool(kernel_size=2) needs images (C, H, W)"),
    (["maxpool(2, padding=same)", "flatten", 10], "maxpool's padding must be integers"),
    (["conv(4, 3, stride=2, padding=same)", "flatten", 10], "padding='same' is not supported for strided"),
])
def test_bad_image_layers_name_the_entry_and_the_fix(layers, message):
    with pytest.raises(ValueError, match=None) as err:
        sequential((1, 8, 8), layers)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_mlp_layer_lists_build_as_before():
    """No image layers: the same modules and the same random draws as before (the fused path's nets)."""
    torch.manual_seed(1)
    net = sequential(64, [32, "tanh", 10], init="xavier")
    torch.manual_seed(1)
    ref = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    for m in (ref[0], ref[2]):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)
    for a, b in zip(net.parameters(), ref.parameters()):
        assert torch.equal(a, b)


# --- config: the dataset's images must fit the preset -------------------------------------------

def test_preset_on_other_images_is_refused_with_the_fix():
    with pytest.raises(ValueError) as err:
        parsed("net=mnist_2c2d", "dataset=cifar10")
    text = str(err.value)
    assert "net.input_shape=[1, 28, 28]" in text and "(3, 32, 32)" in text and "dataset=mnist" in text
    with pytest.raises(ValueError, match=r"dataset=cifar10 \(or dataset=imagenet10 dataset.image_size=32\)"):
        parsed("net=cifar10_3c3d", "dataset=digits")
    # input_shape=null builds the layers for the dataset's images, and refuses those that do not fit
    assert parsed("net=mnist_2c2d", "dataset=digits", "net.input_shape=null").net.input_shape is None
    with pytest.raises(ValueError, match=r"net.layers\[4\]: conv\(out_channels=96, kernel_size=3\) does not fit"):
        parsed("net=cifar10_3c3d", "dataset=digits", "net.input_shape=null")


def test_cli_refuses_a_mismatch_with_exit_2(tmp_path, capsys):
    code = cli.main(["train", "net=mnist_2c2d", "dataset=cifar10", f"run_dir={tmp_path}", *QUIET])
    text = "".join(capsys.readouterr())
    assert code == 2 and "dataset=mnist" in text and "Traceback" not in text


# --- data keep their image shape for conv nets --------------------------------------------------

def test_datasets_keep_their_image_shape(tiny_mnist):
    digits = DatasetConfig(name="digits", source="sklearn")
    flat, images = load_dataset(digits), load_dataset(digits, images=True)
    assert flat.x_train.shape[1:] == (64,) and images.x_train.shape[1:] == (1, 8, 8)
    assert torch.equal(images.x_train.flatten(1), flat.x_train) and images.input_dim == 64
    mnist = DatasetConfig(name="mnist", source="npz", path=str(tiny_mnist), image_size=28, input_dim=784)
    flat, images = load_dataset(mnist), load_dataset(mnist, images=True)
    assert images.x_test.shape == (16, 1, 28, 28) and torch.equal(images.x_test.flatten(1), flat.x_test)
    assert images.fingerprint == flat.fingerprint  # the same data: a resume compares these


# --- the runner trains the presets with first-order solvers ------------------------------------

@pytest.mark.parametrize("solver", ["sgd", "adam", "cr"])
def test_train_mnist_2c2d_end_to_end(tmp_path, tiny_mnist, solver):
    """`curvlab train net=mnist_2c2d solver=...` on a tiny image set: 3 updates, metrics written
    (the Hessian-error logging, on by default, says in a note what it could not log on this net)."""
    code = cli.main(["train", "net=mnist_2c2d", f"solver={solver}", "dataset=mnist", "dataset.source=npz",
                     f"dataset.path={tiny_mnist}", "train.batch_size=16", "train.max_steps=3",
                     f"run_dir={tmp_path}", *QUIET])
    assert code == 0
    summary = rf.read_json(tmp_path / rf.SUMMARY)
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert any("log.hessian_*" in n for n in summary["notes"])
    metrics = pd.read_csv(tmp_path / rf.METRICS)
    assert list(metrics["step"]) == [0, 1, 2, 3] and metrics["test_loss"].notna().iloc[[0, -1]].all()
    assert metrics["batch_loss"].iloc[1:].map(np.isfinite).all()


def test_conv_run_resumes_bit_identical(tmp_path, tiny_mnist):
    """A conv run stopped mid-way and rerun in its directory continues exactly (images, Adam's moments)."""
    from curvlab.train import train

    small = "net.layers=['conv(4, 3)',relu,'maxpool(2)','conv(4, 3, padding=1)',relu,flatten,'${dataset.num_classes}']"
    args = ["net=mnist_2c2d", "net.input_shape=null", small, "solver=adam", "dataset=mnist", "dataset.source=npz",
            f"dataset.path={tiny_mnist}", "train.batch_size=16", "train.max_steps=5", "train.eval_every=2",
            "train.checkpoint_every=2", "log.hessian_every=0", "log.hessian_first=0", *QUIET]
    train(parsed(*args), tmp_path / "full")
    assert train(parsed(*args, "train.stop_after=3"), tmp_path / "killed")["status"] == "running"
    assert train(parsed(*args), tmp_path / "killed")["status"] == "completed"
    times = ["wall_time", "elapsed", "log_time"]
    full, killed = (pd.read_csv(tmp_path / n / rf.METRICS).drop(columns=times) for n in ("full", "killed"))
    pd.testing.assert_frame_equal(full, killed)


def test_curvature_gap_names_an_unsupported_module():
    gap = curvature_gap(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3)))
    assert gap is not None and "BatchNorm2d" in gap and "\n" not in gap
    assert curvature_gap(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3))) is None


# --- experiment presets -------------------------------------------------------------------------

@pytest.mark.parametrize(("experiment", "data"), [  # the same sweep: one in the default run (≈ 15 s of Hydra composing)
    pytest.param("conv_mnist_2c2d", "mnist", marks=pytest.mark.slow), ("conv_cifar10_3c3d", "cifar10")])
def test_conv_experiments_list_every_method(tmp_path, tiny_root, capsys, experiment, data):
    """`reproduce.py figures --list` shows 7 distinct methods × 3 seeds at batch 128 (second-order ones included; gn
    is left out: on these ReLU + cross-entropy nets it trains pch1's iterates, tests/test_conv_relu_equivalence.py)."""
    assert experiment in reproduce.FIGURES
    assert reproduce.main(["figures", "--scale", "cpu", "--list", "--only", experiment, "--data-root", str(tiny_root),
                           "--runs-dir", str(tmp_path / "runs")]) == 0
    lines = [ln.strip() for ln in capsys.readouterr().out.splitlines() if ln.startswith("   ")]
    assert len(lines) == 21 and all(ln.endswith(": to do") for ln in lines)
    methods = {ln.rsplit(",seed=", 1)[0] for ln in lines}
    assert {"solver=sgd_lr001,curvature=pch1", "solver=adam,curvature=pch1", "solver=cr,curvature=pch1"} <= methods
    assert {f"solver={s},curvature={k}" for s in ("eacg_conv", "kfi_conv") for k in ("pch1", "fisher")} <= methods
    assert not any("curvature=gn" in m for m in methods)
    cfg = parsed(f"experiment={experiment}")
    assert cfg.train.batch_size == 128 and cfg.dataset.name.value == data and needs_images(cfg.net.layers)


def test_sigmoid_conv_experiment_lists_its_plateau_runs(tmp_path, tiny_root, capsys):
    """conv_mnist_2c2d_sigmoid: SGD at two lrs, Adam and EA-CG (GN, Fisher) × 3 seeds at 1,000 updates; _pch1:
    EA-CG · PCH-1 sketched, the same settings."""
    assert reproduce.main(["figures", "--scale", "cpu", "--list", "--only", "conv_mnist_2c2d_sigmoid", "--data-root",
                           str(tiny_root), "--runs-dir", str(tmp_path / "runs")]) == 0
    lines = [ln.strip() for ln in capsys.readouterr().out.splitlines() if ln.startswith("   ")]
    methods = {ln.rsplit(",seed=", 1)[0] for ln in lines}
    assert len(lines) == 15 and methods == {"solver=sgd_lr001,curvature=gn", "solver=sgd,curvature=gn",
                                            "solver=adam,curvature=gn", "solver=eacg_lr001,curvature=gn",
                                            "solver=eacg_lr001,curvature=fisher"}
    cfg = parsed("experiment=conv_mnist_2c2d_sigmoid", "solver=eacg_lr001")
    assert cfg.net.layers.count("sigmoid") == 3 and "relu" not in cfg.net.layers
    assert (cfg.solver.name, cfg.solver.lr, cfg.solver.options["alpha"]) == ("eacg", 0.01, 0.02)
    # one job of its sweep: sketch=true stays on the curvature the sweep picks
    pch1 = parsed("experiment=conv_mnist_2c2d_sigmoid_pch1", "solver=eacg_lr001", "curvature=pch1")
    assert (pch1.curvature.kind.value, pch1.curvature.sketch, pch1.curvature.mc_samples) == ("pch1", True, 1)
    assert (pch1.solver.lr, pch1.net.layers) == (cfg.solver.lr, cfg.net.layers)
    assert reproduce.main(["figures", "--scale", "cpu", "--list", "--only", "conv_mnist_2c2d_sigmoid_pch1",
                           "--data-root", str(tiny_root), "--runs-dir", str(tmp_path / "runs")]) == 0
    assert [ln.strip() for ln in capsys.readouterr().out.splitlines() if ln.startswith("   ")] == [
        f"solver=eacg_lr001,curvature=pch1,seed={i}: to do" for i in range(3)]
    sizes, seeds = reproduce.scale_overrides("conv_mnist_2c2d_sigmoid", "cpu", reproduce.argparse.Namespace(
        steps=None, seeds=None, train_subset=None, test_subset=None))
    assert "train.max_steps=1000" in sizes and seeds == 3
