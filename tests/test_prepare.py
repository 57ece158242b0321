"""``curvlab data prepare``: torchvision datasets (faked: there is no network here) → the npz layout,
and the messages for a missing dataset, which name that command and the file it writes."""

from __future__ import annotations

import numpy as np
import pytest
import torchvision.datasets as tvd
from PIL import Image

from curvlab import cli
from curvlab import runfiles as rf
from curvlab.config import DatasetConfig
from curvlab.data import load_dataset
from curvlab.datafiles import DatasetError
from curvlab.prepare import find_npz, npz_name, prepare
from fixtures import SHARED_DATA

WNIDS = ["n01440764", "n02102040", "n02979186"]


def fake_class(mode: str, shape: tuple[int, int], calls: list[dict], n: dict[bool, int] | None = None):
    """A torchvision-style dataset class: ``ds[i]`` is (PIL image, label), images made from the seed ``i``."""

    class Fake:
        def __init__(self, root, train=True, download=False, split=None, size=None, transform=None):
            calls.append({"root": root, "train": train, "download": download, "split": split, "size": size})
            self.train = train if split is None else split == "train"
            self.transform = transform
            self.wnids = list(WNIDS) if split is not None else None
            self.wnid_to_idx = {w: i for i, w in enumerate(WNIDS)}

        def __len__(self) -> int:
            return (n or {True: 6, False: 4})[self.train]

        def image(self, i: int) -> Image.Image:
            pixels = np.random.default_rng(i + 100 * self.train).integers(0, 256, (*shape, 3), dtype=np.uint8)
            return Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)

        def __getitem__(self, i: int):
            img = self.image(i)
            return (self.transform(img) if self.transform else img), (i + 3 * self.train) % 3

    return Fake


def test_mnist_and_cifar10_become_the_npz_layout_pixel_for_pixel(tmp_path, monkeypatch):
    calls: list[dict] = []
    for name, cls, mode, shape in (("mnist", "MNIST", "L", (28, 28)), ("cifar10", "CIFAR10", "RGB", (32, 32))):
        fake = fake_class(mode, shape, calls)
        monkeypatch.setattr(tvd, cls, fake)
        path = prepare(name, tmp_path)
        assert path == tmp_path / npz_name(name) and calls[-1]["download"] is True
        with np.load(path) as f:
            channels = 1 if mode == "L" else 3
            assert f["x_train"].shape == (6, *shape, channels) and f["x_test"].shape == (4, *shape, channels)
            assert f["x_train"].dtype == np.uint8 and f["y_train"].tolist() == [0, 1, 2, 0, 1, 2]
            expected = np.asarray(fake(tmp_path, train=False).image(2))
            assert np.array_equal(f["x_test"][2].reshape(expected.shape), expected)


def test_imagenette_is_resized_and_centre_cropped(tmp_path, monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(tvd, "Imagenette", fake_class("RGB", (40, 60), calls))
    path = prepare("imagenet10", tmp_path, image_size=8)
    assert path.name == "imagenette_8.npz"
    assert [(c["split"], c["size"]) for c in calls] == [("train", "160px"), ("val", "160px")]
    with np.load(path) as f:
        assert f["x_train"].shape == (6, 8, 8, 3) and f["x_test"].shape == (4, 8, 8, 3)
        assert f["class_wnids"].tolist() == WNIDS
    # The prepared file trains: the runner's own loader reads it (standardised, flattened C·H·W).
    data = load_dataset(DatasetConfig(name="imagenet10", source="npz", path=str(path), image_size=8,
                                      input_dim=192, num_classes=10))
    assert data.x_train.shape == (6, 192) and data.y_test.tolist() == [0, 1, 2, 0]


def test_prepared_cifar10_trains_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tvd, "CIFAR10", fake_class("RGB", (32, 32), [], {True: 20, False: 8}))
    assert cli.main(["data", "prepare", "cifar10", "--root", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "data" / "cifar10.npz"
    assert f"train on it: curvlab train dataset=cifar10 dataset.source=npz dataset.path={path}" in out
    overrides = out.strip().splitlines()[-1].split("curvlab train ")[1].split()
    code = cli.main(["train", *overrides, "train.max_steps=1", "log.hessian_every=0", "log.hessian_first=0",
                     "log.progress=false", f"run_dir={tmp_path / 'run'}"])
    assert code == 0 and rf.read_json(tmp_path / "run" / rf.SUMMARY)["dataset"] == "cifar10"


def test_an_existing_npz_is_reused_without_torchvision(tmp_path, monkeypatch):
    monkeypatch.setattr(tvd, "MNIST", fake_class("L", (28, 28), []))
    path = prepare("mnist", tmp_path)
    monkeypatch.setattr(tvd, "MNIST", None)  # would fail if called
    assert prepare("mnist", tmp_path) == path


def test_offline_download_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading cifar-10-python.tar.gz: <urlopen error [Errno -3]>")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    assert cli.main(["data", "prepare", "cifar10", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "torchvision could not provide it" in err and "--no-download" in err and "urlopen error" in err
    assert not list(tmp_path.glob("*.npz"))


@pytest.mark.parametrize("name", ["mnist", "cifar10", "imagenet10"])
def test_missing_dataset_names_the_prepare_command_and_file(tmp_path, name):
    root = tmp_path / "none"
    size = 224 if name == "imagenet10" else 32
    cfg = DatasetConfig(name=name, source="torchvision", root=str(root), image_size=size, input_dim=3 * size * size)
    with pytest.raises(DatasetError) as err:
        load_dataset(cfg)
    text = str(err.value)
    extra = " --image-size 224" if name == "imagenet10" else ""
    assert f"curvlab data prepare {name} --root {root}{extra}" in text, text
    assert str(root / npz_name(name, size)) in text and "shared" not in text, text


def test_missing_npz_names_the_prepare_command(tmp_path):
    cfg = DatasetConfig(name="cifar10", source="npz", path=str(tmp_path / "cifar10.npz"), input_dim=3072)
    with pytest.raises(DatasetError, match=f"no file at .*curvlab data prepare cifar10 --root {tmp_path}`"):
        load_dataset(cfg)


def test_a_prepared_npz_next_to_missing_torchvision_files_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(tvd, "CIFAR10", fake_class("RGB", (32, 32), []))
    path = prepare("cifar10", tmp_path)
    monkeypatch.undo()
    with pytest.raises(DatasetError, match=f"{path} is there: train on it with dataset.source=npz dataset.path={path}"):
        load_dataset(DatasetConfig(name="cifar10", source="torchvision", root=str(tmp_path), input_dim=3072))


def test_the_shared_copies_are_found_under_their_names():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no {SHARED_DATA} (the real dataset copies of this machine)")
    assert find_npz("cifar10", SHARED_DATA) == SHARED_DATA / "cifar10_jpeg.npz"
    assert find_npz("imagenet10", SHARED_DATA, 32) == SHARED_DATA / "imagenette_32.npz"
