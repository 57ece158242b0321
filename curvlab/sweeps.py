"""The configs of a sweep's points, without a Hydra composition per point (issue 21, item 5).

Composing each of the EA-CG grid's 576 points with Hydra's ``compose`` took 135 s before the
first job started. Hydra composes a config in two stages: the defaults list (the config-group
choices: ``solver=kfi``) builds the config, then the plain field overrides (``solver.lr=0.1``)
are applied to it by ``ConfigLoaderImpl._apply_overrides_to_config``. A grid mostly varies plain
fields, so :class:`PointComposer` composes once per distinct set of group choices and applies each
point's field overrides with that same Hydra function: ``composer(point)`` is the config
``compose(config_name, [*head, *point])`` returns.

A job list needs only the resolved values, and copying or resolving a whole OmegaConf config
costs ~10 ms, so :meth:`PointComposer.resolved` applies the overrides in place to one working
config (per set of group choices and overridden keys), copies the resolved values of the
composed config as plain data, and re-reads only the overridden keys and the interpolations
that refer to them: about a millisecond per point.

Use it inside ``hydra.initialize_config_dir(...)`` (it needs Hydra's config repository).
"""

from __future__ import annotations

import copy
import pickle
import re
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

__all__ = ["PointComposer"]

_NAME = re.compile(r"\.?[A-Za-z_][\w.\-]*")  # the names in an interpolation: node keys, resolvers, arguments


class PointComposer:
    """``composer(point)`` equals ``hydra.compose(config_name, overrides=[*head, *point])``.

    Args:
        config_name: the primary config, e.g. ``"config"``.
        head: overrides shared by every point (e.g. ``["experiment=eacg_grid_search", "train.max_steps=3"]``);
            they come first, as on a command line.
    """

    def __init__(self, config_name: str, head: Sequence[str]) -> None:
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.config_name, self.head = config_name, list(head)
        self._parser = OverridesParser.create()
        self._repository = GlobalHydra.instance().config_loader().repository  # type: ignore[attr-defined]
        self._parsed: dict[str, Any] = {}  # override string -> (Override, is a field override)
        self._composed: dict[tuple[str, ...], DictConfig] = {}  # group choices -> composed config
        # (group choices, overridden keys) -> a working copy that takes the points' overrides in place;
        # the composed config's resolved values and the names each of its interpolations reads
        self._work: dict[tuple[tuple[str, ...], tuple[str, ...]], DictConfig] = {}
        self._base: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[dict, dict[str, set[str]]]] = {}

    @property
    def compositions(self) -> int:
        """How many Hydra compositions were made so far (one per distinct set of group choices)."""
        return len(self._composed)

    def _is_field(self, override: Any) -> bool:  # a hydra.core.override_parser.types.Override
        """Whether Hydra applies ``override`` to the composed config (as its defaults-list code decides):
        a key that is no config group, or a dict value; not Hydra's own node (compose drops it)."""
        key = override.key_or_group
        if override.package is not None or key == "hydra" or key.startswith(("hydra.", "hydra/")):
            return False
        return isinstance(override.value(), dict) or not self._repository.group_exists(key)

    def _split(self, point: Sequence[str]) -> tuple[list[Any], DictConfig, tuple[str, ...]]:
        """The point's field overrides, the composed config of its group choices, and those choices."""
        from hydra import compose

        for text in point:
            if text not in self._parsed:  # Hydra's override parser costs ~1 ms: once per distinct value
                (override,) = self._parser.parse_overrides([text])
                self._parsed[text] = (override, self._is_field(override))
        fields = [self._parsed[t][0] for t in point if self._parsed[t][1]]
        groups = tuple(t for t in point if not self._parsed[t][1])
        if groups not in self._composed:
            self._composed[groups] = compose(self.config_name, overrides=[*self.head, *groups])
        return fields, self._composed[groups], groups

    def __call__(self, point: Sequence[str]) -> DictConfig:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        fields, composed, _ = self._split(point)
        cfg = copy.deepcopy(composed)  # keeps the flags (struct) compose set
        ConfigLoaderImpl._apply_overrides_to_config(fields, cfg)  # Hydra's own second stage
        return cfg

    def _apply(self, point: Sequence[str]) -> tuple[DictConfig, tuple[str, ...], tuple[str, ...]] | None:
        """Apply the point's field overrides in place to a working config: it, the group choices and the
        overridden keys; None (nothing applied) for overrides that cannot be repeated in place."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        fields, composed, groups = self._split(point)
        if any(o.is_add() or o.is_force_add() or o.is_delete() or isinstance(o.value(), dict) for o in fields):
            return None
        keys = tuple(o.key_or_group for o in fields)
        if (groups, keys) not in self._work:
            # Every point that uses this working config sets exactly these keys, so each one
            # overwrites the values the previous point left there.
            self._work[groups, keys] = copy.deepcopy(composed)
        work = self._work[groups, keys]
        ConfigLoaderImpl._apply_overrides_to_config(fields, work)  # raises as compose would
        return work, groups, keys

    def resolved(self, point: Sequence[str]) -> dict[str, Any]:
        """``OmegaConf.to_container(self(point), resolve=True)``, without copying a config per point."""
        applied = self._apply(point)
        if applied is None:
            return OmegaConf.to_container(self(point), resolve=True)  # not repeatable in place: the slow path
        work, groups, keys = applied
        if (groups, keys) not in self._base:
            composed = self._composed[groups]
            plain = OmegaConf.to_container(composed, resolve=False)
            self._base[groups, keys] = (OmegaConf.to_container(composed, resolve=True),
                                        _dependencies(_interpolations(plain)))
        base, interpolations = self._base[groups, keys]
        out = pickle.loads(pickle.dumps(base))  # a deep copy of plain values, ~100x faster than deepcopy
        stale = [path for path, names in interpolations.items() if any(_related(n, k) for n in names for k in keys)]
        for key in dict.fromkeys([*keys, *stale]):
            value = OmegaConf.select(work, key, throw_on_missing=False)
            _set(out, key, OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value)
        return out


def _interpolations(node: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted key -> text of the dict entries whose value holds an interpolation (``${...}``, also in a list)."""
    out: dict[str, str] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_interpolations(v, f"{key}."))
        elif "${" in repr(v):
            out[key] = repr(v)
    return out


def _dependencies(interpolations: dict[str, str]) -> dict[str, set[str]]:
    """Every name each interpolation may read, through the other interpolations it refers to.

    The names are all identifier-like words of its text (node keys, resolver names and their
    arguments such as ``oc.select``'s key): more than it reads, never fewer."""
    names = {path: set(_NAME.findall(text)) for path, text in interpolations.items()}
    changed = True
    while changed:  # transitive closure: ${net.widths} -> ${dataset.input_dim} -> dataset.image_size
        changed = False
        for path, mine in names.items():
            extra = set().union(*(names[q] for q in names if q != path and any(_related(n, q) for n in mine))) - mine
            if extra:
                mine |= extra
                changed = True
    return names


def _related(name: str, key: str) -> bool:
    """Whether an interpolation naming ``name`` may read ``key`` (the same node, a parent or a child;
    a relative name such as ``..lr`` may read anything)."""
    return name.startswith(".") or name == key or name.startswith(f"{key}.") or key.startswith(f"{name}.")


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree[part]
    tree[leaf] = value
