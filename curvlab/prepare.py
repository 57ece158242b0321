"""``curvlab data prepare NAME --root DIR``: get a dataset through torchvision and cache it as one npz.

The cache is the layout the runner reads with ``dataset.source=npz``
(:func:`curvlab.datafiles.load_npz`): uint8 ``x_train`` (N, H, W, C), ``y_train`` (N,),
``x_test``, ``y_test`` (labels 0..9). MNIST and CIFAR-10 come from torchvision's classes of
the same name, ImageNet-10 from its ``Imagenette`` (the ten ImageNet classes of fast.ai),
resized (shorter side) and centre-cropped to ``--image-size`` pixels (32 by default, as
the CIFAR-sized net of EA-CG), its ``val`` split serving as the test set. torchvision
downloads the archives into ``DIR`` when they are not there yet (``--no-download``: only
convert files already in ``DIR``).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from curvlab.datafiles import DatasetError, load_npz

__all__ = ["NAMES", "npz_name", "npz_names", "find_npz", "prepare_hint", "torchvision_arrays", "prepare", "main"]


@dataclass(frozen=True)
class _Recipe:
    file: str  # the npz that `prepare` writes under --root ({size}: the image size)
    also: tuple[str, ...]  # other names of the same data in this layout (copies made elsewhere)
    about: str


_RECIPES = {
    "mnist": _Recipe("mnist.npz", (), "MNIST: 60,000 train and 10,000 test greyscale images, 28×28"),
    "cifar10": _Recipe("cifar10.npz", ("cifar10_jpeg.npz",), "CIFAR-10: 50,000 train and 10,000 test colour images, 32×32"),
    "imagenet10": _Recipe("imagenette_{size}.npz", (), "Imagenette (ImageNet-10): 9,469 train and 3,925 val colour "
                          "images, resized and centre-cropped to --image-size"),
}
NAMES = tuple(_RECIPES)
_DEFAULT_SIZE = {"mnist": 28, "cifar10": 32, "imagenet10": 32}


def npz_name(name: str, image_size: int | None = None) -> str:
    """The file ``curvlab data prepare NAME`` writes, e.g. ``cifar10.npz`` or ``imagenette_32.npz``."""
    return _RECIPES[name].file.format(size=image_size or _DEFAULT_SIZE[name])


def npz_names(name: str, image_size: int | None = None) -> list[str]:
    """The file names under which ``name`` is looked for: the prepared one first, then known copies."""
    return [npz_name(name, image_size), *_RECIPES[name].also]


def find_npz(name: str, root: str | Path, image_size: int | None = None) -> Path | None:
    """The npz of ``name`` in ``root`` (:func:`npz_names` in order), or None."""
    return next((Path(root) / n for n in npz_names(name, image_size) if (Path(root) / n).is_file()), None)


def prepare_hint(name: str, root: str | Path, image_size: int | None = None) -> str:
    """How to get ``name`` into ``root``, and the overrides that train on it (for error messages)."""
    size = f" --image-size {image_size}" if name == "imagenet10" and image_size else ""
    path = Path(root) / npz_name(name, image_size)
    image = f" dataset.image_size={image_size}" if name == "imagenet10" and image_size else ""
    return (
        f"`curvlab data prepare {name} --root {root}{size}` downloads it through torchvision and writes {path}; "
        f"then train with dataset={name} dataset.source=npz dataset.path={path}{image}"
    )


def _image_size_transform(name: str, image_size: int) -> Any:
    """Imagenette: shorter side to ``image_size``, then the centre square; MNIST and CIFAR-10 keep their size."""
    if name != "imagenet10":
        return None
    from torchvision import transforms

    resize = transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True)
    return transforms.Compose([resize, transforms.CenterCrop(image_size)])


def _splits(name: str, root: str, download: bool, image_size: int) -> tuple[Any, Any]:
    """torchvision's train and test datasets of ``name`` (looked up at call time, so tests can swap them)."""
    import torchvision.datasets as tvd

    if name == "mnist":
        return tuple(tvd.MNIST(root, train=t, download=download) for t in (True, False))  # type: ignore[return-value]
    if name == "cifar10":
        return tuple(tvd.CIFAR10(root, train=t, download=download) for t in (True, False))  # type: ignore[return-value]
    # The smallest archive that still holds image_size pixels on the shorter side.
    size = "160px" if image_size <= 160 else "320px" if image_size <= 320 else "full"
    tf = _image_size_transform(name, image_size)
    return tuple(  # type: ignore[return-value]
        tvd.Imagenette(root, split=s, size=size, download=download, transform=tf) for s in ("train", "val")
    )


def _arrays(ds: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, C) and int64 labels (N,) of a dataset of (PIL image, label) pairs."""
    images, labels = [], []
    for i in range(len(ds)):
        img, label = ds[i]
        a = np.asarray(img.convert("L" if img.mode in ("L", "1", "I", "F") else "RGB"), dtype=np.uint8)
        images.append(a[..., None] if a.ndim == 2 else a)  # greyscale: one channel
        labels.append(int(label))
    if not images:
        raise DatasetError(f"{where}: no images")
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise DatasetError(f"{where}: images of different shapes {sorted(shapes)[:3]}; expected one size")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def torchvision_arrays(name: str, root: str | Path, download: bool, image_size: int | None = None) -> dict[str, np.ndarray]:
    """``x_train, y_train, x_test, y_test`` (and Imagenette's ``class_wnids``) through torchvision."""
    size = image_size or _DEFAULT_SIZE[name]
    train, test = _splits(name, str(Path(root).expanduser()), download, size)
    out: dict[str, np.ndarray] = {}
    for split, ds in (("train", train), ("test", test)):
        out[f"x_{split}"], out[f"y_{split}"] = _arrays(ds, f"{name} ({split})")
    if getattr(train, "wnids", None):
        out["class_wnids"] = np.asarray(sorted(train.wnids, key=train.wnid_to_idx.get))
    return out


def prepare(name: str, root: str | Path, *, download: bool = True, image_size: int | None = None,
            force: bool = False) -> Path:
    """Write ``root/npz_name(name)`` (kept when it exists, unless ``force``) and return its path.

    Raises:
        DatasetError: torchvision could not get the files (offline, corrupt), naming what to do.
    """
    if name not in _RECIPES:
        raise DatasetError(f"curvlab data prepare: unknown dataset {name!r}; allowed: {', '.join(NAMES)}")
    root = Path(root).expanduser()
    path = root / npz_name(name, image_size)
    if path.is_file() and not force:
        load_npz(path)  # a broken cache says so instead of being reused
        return path
    if download:
        root.mkdir(parents=True, exist_ok=True)
    try:
        arrays = torchvision_arrays(name, root, download, image_size)
    except DatasetError:
        raise
    except Exception as err:  # torchvision raises RuntimeError, OSError, URLError, ...
        online = "check the connection, or " if download else "rerun without --no-download when online, or "
        raise DatasetError(
            f"{name}: torchvision could not provide it under {root} ({type(err).__name__}: {err}); {online}"
            f"copy torchvision's {name} files into {root} and rerun with --no-download"
        ) from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, **arrays)  # uncompressed: images hardly compress, and loading stays fast
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    load_npz(path)  # the same checks a run makes
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``curvlab data prepare NAME --root DIR [--image-size N] [--no-download] [--force]``."""
    p = argparse.ArgumentParser(prog="curvlab data", description=__doc__.split("\n\n")[0].strip("`"))
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("prepare", help="get a dataset through torchvision and cache it as DIR/<name>.npz",
                       description="\n".join(f"{k}: {r.about} -> {npz_name(k)}" for k, r in _RECIPES.items()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("name", choices=NAMES)
    q.add_argument("--root", default="data", help="folder for torchvision's files and the npz (default: data)")
    q.add_argument("--image-size", type=int, default=None,
                   help="imagenet10 only: pixels of the square images (default 32; EA-CG's paper uses 224)")
    q.add_argument("--no-download", action="store_true", help="only convert torchvision's files already in --root")
    q.add_argument("--force", action="store_true", help="rewrite the npz when it exists")
    a = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if a.image_size is not None and (a.name != "imagenet10" or a.image_size < 1):
        p.error("--image-size takes a positive integer, and only for imagenet10")
    try:
        path = prepare(a.name, a.root, download=not a.no_download, image_size=a.image_size, force=a.force)
    except DatasetError as err:
        print(f"curvlab data: {err}", file=sys.stderr)
        return 2
    with np.load(path) as f:
        shape, n_train, n_test = f["x_train"].shape[1:], len(f["y_train"]), len(f["y_test"])
    image = f" dataset.image_size={shape[0]}" if a.name == "imagenet10" else ""
    print(f"{path}: {n_train} train and {n_test} test images of {'×'.join(map(str, shape))} (H×W×C)\n"
          f"train on it: curvlab train dataset={a.name} dataset.source=npz dataset.path={path}{image}")
    return 0
