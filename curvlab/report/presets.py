"""Short report names of conv nets: a run whose layer list is a net preset's is named by the preset.

A conv net's layer list written out (``784-[conv(out_channels=32, kernel_size=5, padding=2) relu …]``) makes a
setting label of several hundred characters; the presets ``mnist_2c2d`` and ``cifar10_3c3d`` say the same in
one word. A run matches a preset (``configs/net/<name>.yaml`` with image layers) when its resolved
``net.layers`` equal the preset's entry by entry, in the normal form of :func:`curvlab.nets.parse_layers`
(``conv(32, 5, padding=2)`` = ``conv(out_channels=32, kernel_size=5, padding=2)``); an interpolated entry of
the preset (``${dataset.num_classes}``) matches any width. Its ``net.input_shape`` must be the preset's or
unset (then the dataset's images, shown beside it in the label).
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from curvlab.nets import needs_images, parse_layers

__all__ = ["net_preset_name", "preset_fields", "conv_presets"]

_ANY = object()  # an interpolated preset entry: any width


def _normal(layers: list[Any]) -> tuple[Any, ...] | None:
    """The layer list in normal form (interpolations as ``_ANY``), or None if it does not parse."""
    free = [isinstance(item, str) and item.startswith("${") for item in layers]
    try:  # an interpolation stands for a width (1 here, to parse)
        parsed = parse_layers([1 if f else item for f, item in zip(free, layers)])
    except ValueError:
        return None
    return tuple(_ANY if f else item for f, item in zip(free, parsed))


@lru_cache(maxsize=4)
def conv_presets(net_dir: str | None = None) -> tuple[tuple[str, tuple[Any, ...], dict[str, Any]], ...]:
    """(name, normal layers, the preset's other fields) of each preset in ``net_dir`` (default: the runner's
    ``configs/net``) whose layers include image layers, sorted by name."""
    if net_dir is None:
        from curvlab.cli import CONFIG_DIR  # the configs the runner composes (CURVLAB_CONFIGS or the package's)

        net_dir = str(Path(CONFIG_DIR) / "net")
    out = []
    for path in sorted(Path(net_dir).glob("*.yaml")):
        try:
            cfg = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        layers = cfg.get("layers") if isinstance(cfg, dict) else None
        if not isinstance(layers, list) or not needs_images(layers):
            continue
        normal = _normal(layers)
        if normal is not None:
            out.append((path.stem, normal, {k: v for k, v in cfg.items() if k != "layers"}))
    return tuple(out)


def preset_fields(name: str, net_dir: str | None = None) -> dict[str, Any]:
    """The fields of preset ``name`` besides its layers (``input_shape``, ``init``, …); {} if there is none."""
    return next((dict(fields) for n, _, fields in conv_presets(net_dir) if n == name), {})


def net_preset_name(layers: Any, input_shape: Any = None, net_dir: str | None = None) -> str | None:
    """The name of the conv preset whose layers ``layers`` are (a list, or its text as the report's flattened
    ``cfg.net.layers`` holds it), or None; ``input_shape`` (list, text or None) must be the preset's or unset."""
    if isinstance(layers, str):
        try:
            layers = ast.literal_eval(layers)
        except (ValueError, SyntaxError):
            return None
    if isinstance(input_shape, str):
        try:
            input_shape = ast.literal_eval(input_shape)
        except (ValueError, SyntaxError):
            input_shape = None
    if not isinstance(layers, list) or not needs_images(layers):
        return None
    try:
        run = parse_layers(layers)
    except ValueError:
        return None
    shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else None
    for name, preset, fields in conv_presets(net_dir):
        preset_shape = tuple(fields["input_shape"]) if isinstance(fields.get("input_shape"), list) else None
        if len(preset) == len(run) and all(p is _ANY and isinstance(r, int) or p == r for p, r in zip(preset, run)) \
                and (shape is None or shape == preset_shape):
            return name
    return None
