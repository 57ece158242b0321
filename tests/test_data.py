"""Dataset loaders on synthetic IDX and npz fixtures, plus the real MNIST when present."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import SHARED_DATA, write_idx_mnist, write_npz

from curvlab.config import DatasetConfig
from curvlab.data import DatasetError, load_dataset


def test_digits_ships_with_sklearn_and_is_scaled():
    data = load_dataset(DatasetConfig(name="digits", source="sklearn", input_dim=64))
    assert data.x_train.shape == (1437, 64) and data.x_test.shape == (360, 64)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert 0 <= data.x_train.min() and data.x_train.max() <= 1 and data.x_train.max() > 0.9
    assert data.num_classes == 10
    # stratified split: every class in the test set
    assert torch.bincount(data.y_test, minlength=10).min() >= 30


def test_subsets_are_fixed_and_independent_of_anything_else():
    cfg = dict(name="digits", source="sklearn", input_dim=64, train_subset=100, test_subset=50)
    a, b = load_dataset(DatasetConfig(**cfg)), load_dataset(DatasetConfig(**cfg))
    assert a.x_train.shape == (100, 64) and a.y_test.shape == (50,)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_mnist_from_synthetic_idx(tmp_path):
    arrays = write_idx_mnist(tmp_path)
    data = load_dataset(DatasetConfig(name="mnist", source="torchvision", root=str(tmp_path), input_dim=784))
    assert data.x_train.shape == (30, 784) and data.x_test.shape == (12, 784)
    expected = torch.from_numpy(arrays["x_train"].reshape(30, -1)).float() / 255
    assert torch.allclose(data.x_train, expected)  # pixels scaled to [0, 1], row-major flattening
    assert torch.equal(data.y_test, torch.from_numpy(arrays["y_test"]).long())


def test_corrupt_idx_says_how_to_get_mnist(tmp_path):
    write_idx_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03junk")
    with pytest.raises(DatasetError, match="dataset.download=true"):
        load_dataset(DatasetConfig(name="mnist", source="torchvision", root=str(tmp_path), input_dim=784))


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_dataset_says_how_to_get_it(tmp_path, name):
    with pytest.raises(DatasetError) as err:
        load_dataset(DatasetConfig(name=name, source="torchvision", root=str(tmp_path / "none"), input_dim=784))
    for hint in ("dataset.download=true", "dataset.root", "dataset.source=npz dataset.path="):
        assert hint in str(err.value)


@pytest.mark.parametrize("name", ["cifar10", "imagenet10"])
def test_npz_is_channels_first_and_standardised(tmp_path, name):
    arrays = write_npz(tmp_path / "d.npz", size=8)
    cfg = DatasetConfig(name=name, source="npz", path=str(tmp_path / "d.npz"), image_size=8, input_dim=192)
    data = load_dataset(cfg)
    assert data.x_train.shape == (40, 192) and data.y_train.dtype == torch.int64
    x = torch.from_numpy(arrays["x_train"]).double().div(255).permute(0, 3, 1, 2)  # (N, C, H, W)
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
    assert torch.allclose(data.x_train.double(), ((x - mean) / std).flatten(1), atol=1e-5)
    per_channel = data.x_train.view(40, 3, 64)
    assert torch.allclose(per_channel.mean(dim=(0, 2)), torch.zeros(3), atol=1e-5)


def test_npz_problems_are_reported(tmp_path):
    base = dict(name="cifar10", source="npz", image_size=8, input_dim=192)
    with pytest.raises(DatasetError, match="no file at"):
        load_dataset(DatasetConfig(**base, path=str(tmp_path / "missing.npz")))
    write_npz(tmp_path / "d.npz", size=8)
    truncated = tmp_path / "t.npz"
    truncated.write_bytes((tmp_path / "d.npz").read_bytes()[:200])
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(DatasetConfig(**base, path=str(truncated)))
    np.savez(tmp_path / "k.npz", x_train=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"lacks array\(s\) y_train, x_test, y_test"):
        load_dataset(DatasetConfig(**base, path=str(tmp_path / "k.npz")))
    np.savez(tmp_path / "f.npz", x_train=np.zeros((2, 8, 8, 3)), y_train=np.zeros(2), x_test=np.zeros((1, 8, 8, 3)),
             y_test=np.zeros(1))
    with pytest.raises(DatasetError, match="uint8"):
        load_dataset(DatasetConfig(**base, path=str(tmp_path / "f.npz")))
    with pytest.raises(DatasetError, match="dataset.input_dim=3072 but the cifar10 data have 192"):
        load_dataset(DatasetConfig(**{**base, "input_dim": 3072}, path=str(tmp_path / "d.npz")))


def test_real_mnist_loads_from_shared_data():
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found under {SHARED_DATA} (see ../shared/data/README.md)")
    data = load_dataset(DatasetConfig(name="mnist", source="torchvision", root=str(SHARED_DATA), input_dim=784))
    assert data.x_train.shape == (60000, 784) and data.x_test.shape == (10000, 784)
    assert torch.equal(torch.bincount(data.y_test), torch.tensor([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "file", "n_train"), [("cifar10", "cifar10_jpeg.npz", 50000), ("imagenet10", "imagenette_32.npz", 9469)])
def test_real_npz_loads_from_shared_data(name, file, n_train):
    if not (SHARED_DATA / file).is_file():
        pytest.skip(f"{file} not found under {SHARED_DATA} (see ../shared/data/README.md)")
    data = load_dataset(DatasetConfig(name=name, source="npz", path=str(SHARED_DATA / file), image_size=32, input_dim=3072))
    assert data.x_train.shape == (n_train, 3072) and data.num_classes == 10
