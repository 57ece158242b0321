"""Datasets behind one small interface: float inputs and int64 labels in memory.

Normalisation follows the papers' fully connected setups: pixels are scaled to [0, 1]
(digits: /16, MNIST: /255, as Bakker et al.); CIFAR-10 and ImageNet-10 are then
standardised per channel with the training set's mean and standard deviation (the usual
preprocessing for Chen et al.'s 3072-…-10 net). Images are flattened in (C, H, W) order,
whichever source and array layout they come in (:mod:`curvlab.datafiles` detects and checks
it), so a torchvision and an npz copy give the same layout. A net with image layers (a
convolution first, ``net=mnist_2c2d``) gets them unflattened instead, ``(N, C, H, W)``
(``load_dataset(cfg, images=True)``; the 8×8 digits as (N, 1, 8, 8)).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from curvlab.config import DatasetConfig, DatasetName, DataSource
from curvlab.datafiles import DatasetError, as_images, check_labels, load_npz, read_idx
from curvlab.prepare import find_npz, prepare_hint, torchvision_arrays

__all__ = ["Dataset", "DatasetError", "load_dataset", "load_npz"]

_SUBSET_SEED = 0  # subsets do not depend on the run's seed, so runs compare on the same data


@dataclass
class Dataset:
    """Train and test tensors: ``x_*`` (N, input_dim) or images (N, C, H, W) float, ``y_*`` (N,) int64."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    # where the data came from and the sha256 of the arrays read (a resume on other data is refused)
    fingerprint: dict[str, str] = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        return self.x_train[0].numel()

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Dataset:
        return Dataset(
            self.name,
            self.x_train.to(device, dtype), self.y_train.to(device),
            self.x_test.to(device, dtype), self.y_test.to(device), self.fingerprint,
        )


def _how_to_get(cfg: DatasetConfig) -> str:
    """What to do about a missing dataset: the prepared npz when it is there, else how to make one."""
    name, size = cfg.name.value, cfg.image_size if cfg.name is DatasetName.IMAGENET10 else None
    found = find_npz(name, cfg.root, size)
    if found is not None:
        return f"{found} is there: train on it with dataset.source=npz dataset.path={found}"
    return (
        f"{prepare_hint(name, cfg.root, size)}; offline, copy torchvision's {name} files into dataset.root={cfg.root}, "
        "or pass an npz of uint8 x_train, y_train, x_test, y_test as dataset.source=npz dataset.path=FILE.npz; "
        "online, dataset.download=true also fetches torchvision's files into dataset.root"
    )


def _images_to_float(x: np.ndarray) -> Tensor:
    """uint8 images (N, C, H, W) → float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)


def _standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel standardisation with training statistics; inputs (N, C, H, W)."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return (train - mean) / std, (test - mean) / std


# torchvision's MNIST layout: root/MNIST/raw/<file>; IDX magic numbers (LeCun et al.): 0x08 = uint8.
_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
}


def _mnist(cfg: DatasetConfig, root: str) -> dict[str, np.ndarray]:
    """MNIST from torchvision's raw IDX files (fetched by torchvision when ``download``)."""
    raw = Path(root) / "MNIST" / "raw"
    if cfg.download:
        import torchvision.datasets as tvd

        for train in (True, False):
            tvd.MNIST(root, train=train, download=True)
    missing = [f for f in _MNIST_FILES.values() if not (raw / f).is_file()]
    if missing:
        raise DatasetError(f"dataset mnist: no file {raw / missing[0]}; {_how_to_get(cfg)}")
    arrays = {key: read_idx(raw / name, 3 if key[0] == "x" else 1) for key, name in _MNIST_FILES.items()}
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if n_images != n_labels:
            raise DatasetError(
                f"{raw / _MNIST_FILES[f'y_{split}']}: {n_labels} labels but {_MNIST_FILES[f'x_{split}']} has "
                f"{n_images} images"
            )
    return arrays


def _digits(cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 8×8 digits (values 0..16) with a stratified held-out test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)  # (1797, 64), (1797,)
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=cfg.test_fraction, random_state=_SUBSET_SEED, stratify=y
        )
    except ValueError as err:  # e.g. fewer test rows than classes: scikit-learn's words name test_size
        raise DatasetError(
            f"dataset.test_fraction={cfg.test_fraction}: the digits split fails ({err}); pick a fraction in "
            "[0.01, 0.99] (at least one test and one training image per class)"
        ) from None
    return x_tr, y_tr, x_te, y_te


def _torchvision(cfg: DatasetConfig) -> dict[str, np.ndarray]:
    """Raw uint8 images and labels through torchvision (MNIST: its IDX files, read here)."""
    root = str(Path(cfg.root).expanduser())
    if cfg.name is DatasetName.MNIST:
        return _mnist(cfg, root)
    import torchvision.datasets as tvd  # slow to import: only when needed

    if cfg.name is DatasetName.CIFAR10:
        tr, te = (tvd.CIFAR10(root, train=t, download=cfg.download) for t in (True, False))
        return {"x_train": tr.data, "y_train": np.asarray(tr.targets), "x_test": te.data, "y_test": np.asarray(te.targets)}
    # Imagenette resized (shorter side) and centre-cropped to image_size (224 in EA-CG); val is the test set.
    arrays = torchvision_arrays(cfg.name.value, root, cfg.download, cfg.image_size)
    return {k: arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")}


def _subset_index(n: int, size: int | None) -> np.ndarray | None:
    """A fixed random subset of ``size`` indices (seed 0, independent of the run's seed)."""
    if size is None or size >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(_SUBSET_SEED))[:size].numpy()


def _take(size: int | None, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    idx = _subset_index(len(arrays[0]), size)
    return arrays if idx is None else tuple(a[idx] for a in arrays)


def _load_images(cfg: DatasetConfig) -> tuple[dict[str, np.ndarray], str]:
    """The raw arrays of an image dataset and where they came from (for messages)."""
    if cfg.source is DataSource.NPZ:
        if not Path(cfg.path or "").is_file():
            name, size = cfg.name.value, cfg.image_size if cfg.name is DatasetName.IMAGENET10 else None
            root = Path(cfg.path or "").parent
            raise DatasetError(f"dataset.path: no file at {cfg.path}; {prepare_hint(name, root, size)}")
        return load_npz(cfg.path or ""), f"dataset.path={cfg.path}"
    try:
        arrays = _torchvision(cfg)
    except DatasetError:
        raise
    except Exception as err:  # torchvision raises RuntimeError, OSError, AssertionError…
        raise DatasetError(f"dataset {cfg.name.value}: cannot load ({err}); {_how_to_get(cfg)}") from None
    where = f"dataset.root={cfg.root}"
    for key in ("y_train", "y_test"):
        arrays[key] = check_labels(arrays[key], f"{where} ({key})")
    return arrays, where


def _check_classes(y: np.ndarray, where: str, cfg: DatasetConfig) -> None:
    if y.max() >= cfg.num_classes:
        raise DatasetError(
            f"{where}: labels go up to {y.max()} but dataset.num_classes={cfg.num_classes}; "
            f"set dataset.num_classes={y.max() + 1} or fix the labels"
        )


def _fingerprint(source: str, *arrays: np.ndarray) -> dict[str, str]:
    """SHA-256 of the arrays a run trains and tests on (shapes, dtypes and bytes), and where they came from."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return {"source": source, "sha256": h.hexdigest()}


def load_dataset(cfg: DatasetConfig, images: bool = False) -> Dataset:
    """Load, normalise, flatten and subset the dataset that ``cfg`` names (float32, CPU);
    ``images`` keeps the image shape (N, C, H, W), for nets that start with a convolution.

    Raises:
        DatasetError: when the files are missing, corrupt or not as expected (naming the file,
            the array and what was expected), with how to get them.
    """
    if cfg.name is DatasetName.DIGITS:
        a_tr, l_tr, a_te, l_te = _digits(cfg)
        a_tr, l_tr = _take(cfg.train_subset, a_tr, l_tr)
        a_te, l_te = _take(cfg.test_subset, a_te, l_te)
        where = "scikit-learn's digits"
        for key, labels in (("y_train", l_tr), ("y_test", l_te)):
            _check_classes(labels, f"{where} ({key})", cfg)
        x_tr, x_te = (torch.from_numpy(a).float().div_(16.0) for a in (a_tr, a_te))
        if images:  # (N, 64) row-major 8×8 pixels → (N, 1, 8, 8)
            x_tr, x_te = x_tr.view(-1, 1, 8, 8), x_te.view(-1, 1, 8, 8)
    else:
        arrays, where = _load_images(cfg)
        for key in ("y_train", "y_test"):
            _check_classes(arrays[key], f"{where} ({key})", cfg)
        imgs = {k: as_images(arrays[k], f"{where} ({k})", cfg) for k in ("x_train", "x_test")}
        if imgs["x_test"].shape[1:] != imgs["x_train"].shape[1:]:
            raise DatasetError(
                f"{where} (x_test): images of shape (C, H, W) = {imgs['x_test'].shape[1:]} but x_train's are "
                f"{imgs['x_train'].shape[1:]}; both splits need the same image shape"
            )
        # Subset the uint8 arrays first: a float copy of all of CIFAR-10 is 600 MB.
        a_tr, l_tr = _take(cfg.train_subset, imgs["x_train"], arrays["y_train"])
        a_te, l_te = _take(cfg.test_subset, imgs["x_test"], arrays["y_test"])
        img_tr, img_te = _images_to_float(a_tr), _images_to_float(a_te)
        if cfg.name is not DatasetName.MNIST:
            img_tr, img_te = _standardise(img_tr, img_te)
        x_tr, x_te = (img_tr, img_te) if images else (img_tr.flatten(1), img_te.flatten(1))
    y_tr, y_te = torch.as_tensor(l_tr, dtype=torch.long), torch.as_tensor(l_te, dtype=torch.long)
    data = Dataset(cfg.name.value, x_tr, y_tr, x_te, y_te, _fingerprint(where, a_tr, l_tr, a_te, l_te))
    if data.input_dim != cfg.input_dim:
        raise DatasetError(
            f"dataset.input_dim={cfg.input_dim} but the {cfg.name.value} data have {data.input_dim} features; "
            "set dataset.image_size (and dataset.input_dim) to match the files"
        )
    return data
