"""Checks on dataset files: image layouts, labels, and the IDX and npz formats.

Every check names the file, the array and what was expected, so that a bad copy of a
dataset stops with a message instead of training on silently misread data (e.g. an
(N, 3, 32, 32) array read as channels-last, or float labels truncated).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from curvlab.config import DatasetConfig

__all__ = ["DatasetError", "as_images", "check_labels", "load_npz", "read_idx"]


class DatasetError(ValueError):
    """A dataset is missing, unreadable or not as expected; the message says what to do."""


_CHANNELS = (1, 3)  # greyscale or RGB


def as_images(x: np.ndarray, where: str, cfg: DatasetConfig) -> np.ndarray:
    """Images in any unambiguous layout → (N, C, H, W).

    Accepts (N, H, W, C) and (N, C, H, W) with C in {1, 3} (when both readings fit, the one
    whose image is ``dataset.image_size`` square), greyscale (N, H, W), and flat (N, D) rows
    in (C, H, W) order with D = ``dataset.input_dim`` = C · image_size².

    Raises:
        DatasetError: naming ``where`` (file and key), the shape and the layouts accepted.
    """
    size = cfg.image_size
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 2:
        channels, rest = divmod(x.shape[1], size * size)
        if x.shape[1] != cfg.input_dim or rest or channels not in _CHANNELS:
            raise DatasetError(
                f"{where}: flat images of {x.shape[1]} values; expected dataset.input_dim={cfg.input_dim} "
                f"= C·{size}·{size} with C = 1 or 3 (or store (N, H, W, C) images)"
            )
        return x.reshape(len(x), channels, size, size)
    if x.ndim == 4:
        readings = [r for r in (x.transpose(0, 3, 1, 2), x) if r.shape[1] in _CHANNELS]  # last, first
        if len(readings) == 2:  # e.g. (N, 3, 32, 3): decide by the configured image size
            readings = [r for r in readings if r.shape[2:] == (size, size)]
            if len(readings) != 1:
                raise DatasetError(
                    f"{where}: images of shape {x.shape} are ambiguous (channels first or last?) with "
                    f"dataset.image_size={size}; store them as (N, H, W, C)"
                )
        if readings:
            return readings[0]
    raise DatasetError(
        f"{where}: images of shape {x.shape}; expected (N, H, W, C) or (N, C, H, W) with C = 1 or 3, "
        f"(N, H, W) or flat (N, {cfg.input_dim})"
    )


def check_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Class indices (N,) as int64; integral floats are accepted, (N, 1) is flattened.

    Raises:
        DatasetError: for one-hot or other shapes, NaN, non-integral, negative or no labels.
    """
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = " (one-hot? store y.argmax(1))" if y.ndim == 2 else ""
        raise DatasetError(f"{where}: labels of shape {y.shape}; expected class indices of shape (N,){hint}")
    if len(y) == 0:
        raise DatasetError(f"{where}: no labels; expected class indices 0..num_classes-1")
    if y.dtype.kind == "f":
        if np.isnan(y).any():
            raise DatasetError(f"{where}: {int(np.isnan(y).sum())} NaN label(s); expected class indices")
        if np.isinf(y).any():  # inf == round(inf), and inf casts to a negative int64
            raise DatasetError(f"{where}: {int(np.isinf(y).sum())} infinite label(s); expected class indices")
        bad = y[y != np.round(y)]
        if len(bad):
            raise DatasetError(f"{where}: non-integer labels such as {bad[0]}; expected class indices 0, 1, ...")
    elif y.dtype.kind not in "iu":
        raise DatasetError(f"{where}: labels of dtype {y.dtype}; expected integer class indices")
    if y.min() < 0:
        raise DatasetError(f"{where}: negative label {y.min()}; expected class indices 0..num_classes-1")
    if y.max() > _MAX_LABEL:  # compared before the cast: 1e20 or a uint64 >= 2**63 would wrap to a negative int64
        raise DatasetError(f"{where}: label {y.max()} is no class index (at most {_MAX_LABEL}); fix the labels")
    return y.astype(np.int64)


_MAX_LABEL = 2**31 - 1


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read ``x_train, y_train, x_test, y_test`` from an ``.npz``: uint8 images, class indices.

    Raises:
        DatasetError: naming the file, the key and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset.path: no file at {path}")
    try:
        with np.load(path) as f:
            missing = [k for k in _NPZ_KEYS if k not in f.files]
            arrays = {k: np.asarray(f[k]) for k in _NPZ_KEYS} if not missing else {}
    except Exception as err:  # zip or pickle errors from a truncated file
        raise DatasetError(f"dataset.path: cannot read {path} as .npz ({err}); re-create or re-download it")
    if missing:
        raise DatasetError(f"dataset.path: {path} lacks array(s) {', '.join(missing)}; it needs {', '.join(_NPZ_KEYS)}")
    for split in ("train", "test"):
        x, key = arrays[f"x_{split}"], f"{path} (x_{split})"
        if x.dtype != np.uint8:
            raise DatasetError(f"dataset.path={key}: images of dtype {x.dtype}; expected uint8 pixels 0..255")
        if x.ndim < 2:
            raise DatasetError(f"dataset.path={key}: an array of shape {x.shape}; expected images (N, H, W, C) or (N, D)")
        if x.size == 0:
            raise DatasetError(f"dataset.path={key}: no images (shape {x.shape})")
        arrays[f"y_{split}"] = check_labels(arrays[f"y_{split}"], f"dataset.path={path} (y_{split})")
        if len(x) != len(arrays[f"y_{split}"]):
            raise DatasetError(
                f"dataset.path={path}: x_{split} has {len(x)} images but y_{split} {len(arrays[f'y_{split}'])} labels"
            )
    return arrays


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A uint8 IDX file with ``ndim`` dimensions (magic 0x0000080N), e.g. MNIST's images (3) or labels (1).

    Raises:
        DatasetError: naming the file, the magic number or size found and the one expected.
    """
    data = path.read_bytes()
    magic, head = 0x0800 + ndim, 4 + 4 * ndim
    fix = "replace the file (a good copy under dataset.root, or dataset.download=true when online)"
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        got = f"{len(data)} bytes, too short for a header" if found is None else f"magic number {found:#010x}"
        raise DatasetError(f"{path}: not an IDX file of {ndim}-D uint8 data ({got}, expected {magic:#010x}); {fix}")
    if len(data) < head:
        raise DatasetError(f"{path}: the IDX header ends after {len(data)} of {head} bytes; {fix}")
    dims = struct.unpack(f">{ndim}I", data[4:head])
    if len(data) != head + math.prod(dims):
        raise DatasetError(
            f"{path}: {len(data)} bytes, but its header announces {'×'.join(map(str, dims))} values "
            f"({head + math.prod(dims)} bytes): truncated or corrupt; {fix}"
        )
    return np.frombuffer(bytearray(data), np.uint8, offset=head).reshape(dims)  # bytearray: writable
