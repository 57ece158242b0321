"""Datasets behind one small interface: flattened float inputs and int64 labels in memory.

Normalisation follows the papers' fully connected setups: pixels are scaled to [0, 1]
(digits: /16, MNIST: /255, as Bakker et al.); CIFAR-10 and ImageNet-10 are then
standardised per channel with the training set's mean and standard deviation (the usual
preprocessing for Chen et al.'s 3072-…-10 net). Images are flattened in (C, H, W) order,
whichever source they come from, so a torchvision and an npz copy give the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from curvlab.config import DatasetConfig, DatasetName, DataSource

__all__ = ["Dataset", "DatasetError", "load_dataset", "load_npz"]

_SUBSET_SEED = 0  # subsets do not depend on the run's seed, so runs compare on the same data


class DatasetError(ValueError):
    """A dataset is missing or unreadable; the message says how to get it."""


@dataclass
class Dataset:
    """Train and test tensors: ``x_*`` (N, input_dim) float, ``y_*`` (N,) int64."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def input_dim(self) -> int:
        return self.x_train.shape[1]

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Dataset:
        return Dataset(
            self.name,
            self.x_train.to(device, dtype), self.y_train.to(device),
            self.x_test.to(device, dtype), self.y_test.to(device),
        )


def _how_to_get(cfg: DatasetConfig) -> str:
    name = cfg.name.value
    return (
        f"get it with dataset.download=true (needs internet; files go under dataset.root={cfg.root}), "
        f"point dataset.root at a folder that already holds torchvision's {name} files, "
        f"or use dataset.source=npz dataset.path=FILE.npz (uint8 x_train, y_train, x_test, y_test)"
    )


def _images_to_float(x: np.ndarray, channels_last: bool) -> Tensor:
    """uint8 images (N, H, W[, C]) → float32 (N, C, H, W) in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    if t.ndim == 3:  # greyscale
        return t[:, None]
    return t.permute(0, 3, 1, 2) if channels_last else t


def _standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel standardisation with training statistics; inputs (N, C, H, W)."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return (train - mean) / std, (test - mean) / std


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read uint8 ``x_train, y_train, x_test, y_test`` from an ``.npz`` file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset.path: no file at {path}")
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path) as f:
            missing = [k for k in keys if k not in f.files]
            arrays = tuple(np.asarray(f[k]) for k in keys) if not missing else ()
    except Exception as err:  # zip or pickle errors from a truncated file
        raise DatasetError(f"dataset.path: cannot read {path} as .npz ({err}); re-create or re-download it")
    if missing:
        raise DatasetError(f"dataset.path: {path} lacks array(s) {', '.join(missing)}; it needs {', '.join(keys)}")
    x_tr, y_tr, x_te, y_te = arrays
    if x_tr.dtype != np.uint8 or x_te.dtype != np.uint8:
        raise DatasetError(f"dataset.path: {path} must hold uint8 images, got {x_tr.dtype}")
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise DatasetError(f"dataset.path: {path} has mismatched image and label counts")
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64)


def _digits(cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 8×8 digits (values 0..16) with a stratified held-out test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)  # (1797, 64), (1797,)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=cfg.test_fraction, random_state=_SUBSET_SEED, stratify=y
    )
    return x_tr, y_tr, x_te, y_te


def _torchvision(cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """Raw uint8 arrays from torchvision; the flag says whether images are channels-last."""
    import torchvision.datasets as tvd

    root = str(Path(cfg.root).expanduser())
    if cfg.name is DatasetName.MNIST:
        tr, te = (tvd.MNIST(root, train=t, download=cfg.download) for t in (True, False))
        return tr.data.numpy(), tr.targets.numpy(), te.data.numpy(), te.targets.numpy(), False
    if cfg.name is DatasetName.CIFAR10:
        tr, te = (tvd.CIFAR10(root, train=t, download=cfg.download) for t in (True, False))
        return tr.data, np.asarray(tr.targets), te.data, np.asarray(te.targets), True
    return _imagenette(tvd, root, cfg)


def _imagenette(tvd, root: str, cfg: DatasetConfig):  # type: ignore[no-untyped-def]
    """Imagenette resized (shorter side) and centre-cropped to ``image_size`` (224 in EA-CG)."""
    from torchvision import transforms

    size = "320px" if cfg.image_size <= 320 else "full"
    tf = transforms.Compose([transforms.Resize(cfg.image_size), transforms.CenterCrop(cfg.image_size)])
    out = []
    for split in ("train", "val"):  # val serves as the test set
        ds = tvd.Imagenette(root, split=split, size=size, download=cfg.download, transform=tf)
        pairs = [ds[i] for i in range(len(ds))]
        out += [np.stack([np.asarray(img.convert("RGB"), dtype=np.uint8) for img, _ in pairs])]
        out += [np.asarray([label for _, label in pairs])]
    return out[0], out[1], out[2], out[3], True


def _subset_index(n: int, size: int | None) -> np.ndarray | None:
    """A fixed random subset of ``size`` indices (seed 0, independent of the run's seed)."""
    if size is None or size >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(_SUBSET_SEED))[:size].numpy()


def _take(size: int | None, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    idx = _subset_index(len(arrays[0]), size)
    return arrays if idx is None else tuple(a[idx] for a in arrays)


def load_dataset(cfg: DatasetConfig) -> Dataset:
    """Load, normalise, flatten and subset the dataset that ``cfg`` names (float32, CPU).

    Raises:
        DatasetError: when the files are missing or corrupt, with how to get them.
    """
    if cfg.name is DatasetName.DIGITS:
        a_tr, l_tr, a_te, l_te = _digits(cfg)
        a_tr, l_tr = _take(cfg.train_subset, a_tr, l_tr)
        a_te, l_te = _take(cfg.test_subset, a_te, l_te)
        x_tr, x_te = (torch.from_numpy(a).float().div_(16.0) for a in (a_tr, a_te))
    else:
        if cfg.source is DataSource.NPZ:
            a_tr, l_tr, a_te, l_te = load_npz(cfg.path or "")
            channels_last = True
        else:
            try:
                a_tr, l_tr, a_te, l_te, channels_last = _torchvision(cfg)
            except DatasetError:
                raise
            except Exception as err:  # torchvision raises RuntimeError, OSError, AssertionError…
                raise DatasetError(f"dataset {cfg.name.value}: cannot load ({err}); {_how_to_get(cfg)}") from None
        # Subset the uint8 arrays first: a float copy of all of CIFAR-10 is 600 MB.
        a_tr, l_tr = _take(cfg.train_subset, a_tr, l_tr)
        a_te, l_te = _take(cfg.test_subset, a_te, l_te)
        img_tr, img_te = _images_to_float(a_tr, channels_last), _images_to_float(a_te, channels_last)
        if cfg.name is not DatasetName.MNIST:
            img_tr, img_te = _standardise(img_tr, img_te)
        x_tr, x_te = img_tr.flatten(1), img_te.flatten(1)
    y_tr, y_te = torch.as_tensor(l_tr, dtype=torch.long), torch.as_tensor(l_te, dtype=torch.long)
    data = Dataset(cfg.name.value, x_tr, y_tr, x_te, y_te)
    if data.input_dim != cfg.input_dim:
        raise DatasetError(
            f"dataset.input_dim={cfg.input_dim} but the {cfg.name.value} data have {data.input_dim} features; "
            "set dataset.image_size (and dataset.input_dim) to match the files"
        )
    if data.num_classes > cfg.num_classes:
        raise DatasetError(f"dataset.num_classes={cfg.num_classes} but labels go up to {data.num_classes - 1}")
    return data
