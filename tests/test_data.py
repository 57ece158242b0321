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


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_dataset_says_how_to_get_it(tmp_path, name):
    with pytest.raises(DatasetError) as err:
        load_dataset(DatasetConfig(name=name, source="torchvision", root=str(tmp_path / "none"), input_dim=784))
    for hint in ("offline", f"curvlab data prepare {name} --root", "dataset.source=npz dataset.path=", "online",
                 "dataset.download=true"):
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


# Item 11 of issue 11: every bad file gets a message naming the file, the array and what was expected.
def _arrays(n_train: int = 40, n_test: int = 16, size: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """uint8 channels-last images and labels 0..9, as in ../shared/data's npz files."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def _npz_cfg(path, size: int = 8, channels: int = 3, **kw) -> DatasetConfig:
    return DatasetConfig(**{"name": "cifar10", "source": "npz", "path": str(path), "image_size": size,
                            "input_dim": channels * size * size, **kw})


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "flat"])
def test_npz_layouts_are_detected(tmp_path, layout):
    """(N, H, W, C), (N, C, H, W) and flat (N, C·H·W) copies of the same images give the same data."""
    arrays = _arrays()
    reference = load_dataset(_npz_cfg(_save(tmp_path / "ref.npz", arrays)))
    for key in ("x_train", "x_test"):
        nchw = arrays[key].transpose(0, 3, 1, 2)
        arrays[key] = {"nhwc": arrays[key], "nchw": nchw, "flat": nchw.reshape(len(nchw), -1)}[layout]
    data = load_dataset(_npz_cfg(_save(tmp_path / f"{layout}.npz", arrays)))
    assert torch.equal(data.x_train, reference.x_train) and torch.equal(data.x_test, reference.x_test)


def test_greyscale_npz_and_integral_float_labels(tmp_path):
    arrays = _arrays()
    grey = {"x_train": arrays["x_train"][..., 0], "x_test": arrays["x_test"][..., 0],  # (N, H, W)
            "y_train": arrays["y_train"].astype(np.float32), "y_test": arrays["y_test"][:, None]}  # (N,), (N, 1)
    data = load_dataset(_npz_cfg(_save(tmp_path / "g.npz", grey), channels=1, name="mnist"))
    assert data.x_train.shape == (40, 64) and data.y_train.dtype == torch.int64
    assert torch.equal(data.x_train, torch.from_numpy(grey["x_train"].reshape(40, -1)).float() / 255)
    assert torch.equal(data.y_test, torch.from_numpy(arrays["y_test"]).long())


def _save(path, arrays):
    np.savez(path, **arrays)
    return path


def _with(**changes):
    return lambda a: {**a, **{k: v(a) if callable(v) else v for k, v in changes.items()}}


# (case, change to the arrays, what the message must say besides the file and the key)
BAD_NPZ = [
    ("float labels", _with(y_train=lambda a: a["y_train"] + 0.5), "y_train", "non-integer labels such as "),
    ("nan labels", _with(y_test=lambda a: np.where(np.arange(16) == 3, np.nan, a["y_test"])), "y_test", "1 NaN label"),
    ("negative labels", _with(y_train=lambda a: a["y_train"].astype(np.int64) - 1), "y_train", "negative label -1"),
    ("one-hot labels", _with(y_train=lambda a: np.eye(10)[a["y_train"]]), "y_train", "(40, 10); expected class indices of shape (N,) (one-hot"),
    ("string labels", _with(y_test=lambda a: a["y_test"].astype(str)), "y_test", "labels of dtype <U3; expected integer"),
    ("labels out of range", _with(y_train=lambda a: np.full(40, 12)), "y_train", "labels go up to 12 but dataset.num_classes=10"),
    ("empty images", _with(x_train=np.zeros((0, 8, 8, 3), np.uint8), y_train=np.zeros(0, np.uint8)), "x_train", "no images"),
    ("empty labels", _with(y_test=np.zeros(0, np.uint8)), "y_test", "no labels"),
    ("count mismatch", _with(y_train=lambda a: a["y_train"][:39]), "x_train", "40 images but y_train 39 labels"),
    ("test of another shape", _with(x_test=lambda a: a["x_test"][:, :4, :4]), "x_test", "(3, 4, 4) but x_train's are (3, 8, 8)"),
    ("flat of another width", _with(x_train=lambda a: a["x_train"].reshape(40, -1)[:, :100]), "x_train", "flat images of 100 values; expected dataset.input_dim=192"),
    ("ambiguous layout", _with(x_train=np.zeros((40, 3, 8, 3), np.uint8)), "x_train", "ambiguous (channels first or last?)"),
    ("no channel axis", _with(x_train=np.zeros((40, 8, 8, 5), np.uint8)), "x_train", "expected (N, H, W, C) or (N, C, H, W) with C = 1 or 3"),
    ("5-D images", _with(x_test=np.zeros((16, 1, 8, 8, 3), np.uint8)), "x_test", "images of shape (16, 1, 8, 8, 3)"),
    ("float images", _with(x_test=lambda a: a["x_test"] / 255.0), "x_test", "dtype float64; expected uint8 pixels"),
]


@pytest.mark.parametrize(("change", "key", "expected"), [c[1:] for c in BAD_NPZ], ids=[c[0] for c in BAD_NPZ])
def test_bad_npz_names_file_key_and_expectation(tmp_path, change, key, expected):
    path = _save(tmp_path / "bad.npz", change(_arrays()))
    with pytest.raises(DatasetError) as err:
        load_dataset(_npz_cfg(path))
    message = str(err.value)
    assert str(path) in message and key in message and expected in message, message


def _idx_header(magic: int, *dims: int) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


# (case, file, new bytes or None to delete it, what the message must say besides the file)
BAD_IDX = [
    ("labels magic in an image file", "train-images-idx3-ubyte", _idx_header(0x801, 30) + bytes(30),
     "magic number 0x00000801, expected 0x00000803"),
    ("not IDX at all", "t10k-labels-idx1-ubyte", b"<html>404 Not Found</html>", "not an IDX file of 1-D uint8 data"),
    ("too short", "t10k-labels-idx1-ubyte", b"\x00\x00", "2 bytes, too short for a header"),
    ("header cut", "train-images-idx3-ubyte", _idx_header(0x803, 30, 28)[:10], "the IDX header ends after 10 of 16 bytes"),
    ("truncated body", "train-images-idx3-ubyte", _idx_header(0x803, 30, 28, 28) + bytes(100),
     "announces 30×28×28 values (23536 bytes): truncated or corrupt"),
    ("label count", "train-labels-idx1-ubyte", _idx_header(0x801, 29) + bytes(29), "29 labels but train-images-idx3-ubyte has 30"),
    ("label range", "t10k-labels-idx1-ubyte", _idx_header(0x801, 12) + bytes([11] * 12),
     "labels go up to 11 but dataset.num_classes=10"),
    ("missing file", "t10k-labels-idx1-ubyte", None, "curvlab data prepare mnist --root"),
]


@pytest.mark.parametrize(("name", "content", "expected"), [c[1:] for c in BAD_IDX], ids=[c[0] for c in BAD_IDX])
def test_bad_mnist_idx_names_file_and_expectation(tmp_path, name, content, expected):
    write_idx_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / name
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    with pytest.raises(DatasetError) as err:
        load_dataset(DatasetConfig(name="mnist", source="torchvision", root=str(tmp_path), input_dim=784))
    message = str(err.value)
    assert (name in message or "dataset.root" in message) and expected in message, message
