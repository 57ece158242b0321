"""Group runs into curves: one group per resolved config (all but the seed), labelled by what differs.

Two runs belong to one curve when their ``config.yaml`` agree on every field that changes
what a run computes. Seeds, paths, run length and logging are bookkeeping; settings a
solver ignores (the curvature of SGD) do not count either. Dataset, net and loss make the
*setting*: runs of different settings never share a figure or table. Within a group, two
runs of one seed are the same run twice (a resumed-longer copy, or SGD repeated in a
``curvature × solver`` sweep): the longer one is kept and the other reported, never averaged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from curvlab.registry import KINDS, LOSSES, curvature_fields, find_solver
from curvlab.report.presets import net_preset_name, preset_fields

__all__ = ["Grouping", "computing_columns", "group_runs", "method_label", "SETTING"]

# Fields that do not change what a run computes: identity, paths, length, logging and its sinks
# (``logger``), hardware and threads (and flushing float32 denormals, < 1.2e-38, to 0: runs before
# that option share curves with runs after).
_BOOKKEEPING = re.compile(
    r"^cfg\.(seed|run_dir|resume|device|experiment_name|log\..*|logger\..*"
    r"|train\.(epochs|max_steps|stop_after|checkpoint_every|eval_every|eval_batch_size|flush_denormal|threads)"
    r"|dataset\.(root|path|download))$"
)
SETTING = ("cfg.dataset.", "cfg.net.", "cfg.loss.")  # prefixes of the config fields that make the setting
# Solver names, labels and the curvature fields each solver reads come from curvlab.registry.
# Fields a method label already shows; they are not repeated as ``key=value``.
_IN_LABEL = {"solver", "curvature", "cfg.solver.name", "cfg.curvature.kind", "cfg.solver.momentum", "cfg.solver.split",
             "cfg.solver.rank_one_first_layer", "cfg.solver.curvature", "cfg.solver.base"}


def _get(row: pd.Series | dict[str, Any], key: str) -> Any:
    v = row.get(key) if isinstance(row, dict) else (row[key] if key in row.index else None)
    return None if v is None or (isinstance(v, float) and pd.isna(v)) else v


def _num(v: Any) -> str:
    """4.0 → ``4``, 0.10000 → ``0.1``: columns with gaps are float in pandas."""
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _curvature_fields(row: pd.Series | dict[str, Any]) -> frozenset[str]:
    """The fields of the ``curvature`` group that the run's solver reads (CR: its base's); none for SGD."""
    solver = _get(row, "cfg.solver.name") or _get(row, "solver")
    base = _get(row, "cfg.solver.base")
    return curvature_fields(solver, {"base": base} if base is not None else {})


def _kind(row: pd.Series | dict[str, Any]) -> str:
    """The curvature kind a run used; the exact inverse recorded it as ``solver.curvature`` before it
    read the ``curvature`` group (the committed Rahimi runs)."""
    return str(_get(row, "cfg.solver.curvature") or _get(row, "cfg.curvature.kind") or _get(row, "curvature") or "?")


def method_label(row: pd.Series | dict[str, Any]) -> str:
    """A readable method name: ``Newton (H)``, ``EA-CG · PCH-1``, ``KFI · Fisher (KFAC)``, ``SGD (momentum 0.9)``.

    Args:
        row: a run's summary fields and flattened config (``cfg.<dotted key>``), as in ``Runs.runs``.
    """
    solver = str(_get(row, "cfg.solver.name") or _get(row, "solver") or "?")
    cls = find_solver(solver)
    template = (cls.label if cls is not None else "") or solver
    if "{base}" in template:  # a wrapper (CR): the base's label inside its own
        base = {**_as_dict(row), "cfg.solver.name": str(_get(row, "cfg.solver.base") or "sgd"),
                "cfg.solver.momentum": None}
        return template.format(base=method_label(base))
    if "{kind}" not in template:  # a first-order solver
        momentum = _get(row, "cfg.solver.momentum")
        return f"{template} (momentum {_num(float(momentum))})" if momentum else template
    kind = _kind(row)
    label = template.format(kind=KINDS.label(kind))
    known_as = cls.known_as if cls is not None else {}
    if KINDS.canonical(kind) in known_as:
        label += f" ({known_as[KINDS.canonical(kind)]})"
    if str(_get(row, "cfg.solver.rank_one_first_layer")) == "True":
        label += " · Eq. 13"  # E[h]E[h]ᵀ for the input layer (Chen et al. Eq. 13)
    split = _get(row, "cfg.solver.split")
    if split is not None and int(float(split)) > 1:
        label += f" · split {int(float(split))}"  # HBP Figure 5's sub-blocks
    return label + _conv_options(row)


def _conv_options(row: pd.Series | dict[str, Any]) -> str:
    """The curvature options that only conv nets use, where they differ from the default: the
    matrix-free weight block, KFAC's "reduce" convention and the sketched output factor."""
    extra = ""
    if str(_get(row, "cfg.curvature.weight_factor")) == "block":
        extra += " · block"
    if str(_get(row, "cfg.curvature.kfac_type")) == "reduce":
        extra += " · reduce"
    if str(_get(row, "cfg.curvature.sketch")) == "True":
        extra += f" · sketch {int(float(_get(row, 'cfg.curvature.mc_samples') or 1))}"
    return extra


def _as_dict(row: pd.Series | dict[str, Any]) -> dict[str, Any]:
    return dict(row) if isinstance(row, dict) else row.to_dict()


def _method_keys(row: pd.Series, cfg_cols: list[str]) -> tuple[tuple[str, str], ...]:
    """The (key, value) pairs that define a run's method within its setting."""
    kind = _get(row, "cfg.curvature.kind")
    fields = _curvature_fields(row)
    # summary.json's identity too, so that runs without a config.yaml are still told apart
    keep = [("solver", str(_get(row, "solver"))), *([("curvature", str(_get(row, "curvature")))] if fields else [])]
    for c in cfg_cols:
        if c.startswith(SETTING):
            continue
        if c.startswith("cfg.curvature.") and (c.split(".", 2)[2] not in fields or (
                c in ("cfg.curvature.fisher", "cfg.curvature.mc_samples") and kind != "fisher")):
            continue  # a setting the solver (or this curvature kind) ignores
        v = _get(row, c)
        if v is not None:
            keep.append((c, _num(v)))
    return tuple(keep)


def _setting_key(row: pd.Series, cfg_cols: list[str]) -> tuple[tuple[str, str], ...]:
    ident = [("cfg.dataset.name", str(_get(row, "dataset"))), ("cfg.loss.name", str(_get(row, "loss")))]
    cfg = [(c, _num(_get(row, c))) for c in cfg_cols if c.startswith(SETTING) and _get(row, c) is not None]
    return tuple(dict([*ident, *cfg]).items())  # the config's value where it has one


def _setting_label(key: tuple[tuple[str, str], ...], varying: set[str]) -> str:
    """``digits · 64-8-10 sigmoid · cross-entropy``, plus any other setting field that differs."""
    d = dict(key)
    widths = d.get("cfg.net.widths", "").strip("[]").replace(", ", "-")
    net = f"net {widths} {d.get('cfg.net.activation', '')}".strip() if widths else ""
    layers = d.get("cfg.net.layers", "").strip("[]").replace("'", "").replace(",", "")
    implied: set[str] = set()  # a conv preset's own field values: its name says them
    if layers and layers != "None":  # a net listed layer by layer: net.activation is not used
        preset = net_preset_name(d.get("cfg.net.layers"), d.get("cfg.net.input_shape"))
        net = f"net {preset}" if preset else f"net {widths.split('-')[0]}-[{layers}]"
        fields = preset_fields(preset) if preset else {}
        implied = {f"cfg.net.{k}" for k, v in fields.items() if _num(str(v) if isinstance(v, list) else v)
                   == d.get(f"cfg.net.{k}")}
    loss = d.get("cfg.loss.name", "")
    loss = LOSSES.label(loss) if loss in LOSSES else loss.replace("_", "-")  # cross-entropy; an unknown name as is
    parts = [p for p in (d.get("cfg.dataset.name", ""), net, loss) if p]
    shown = {"cfg.dataset.name", "cfg.net.widths", "cfg.net.activation", "cfg.net.layers", "cfg.loss.name"}
    shown |= implied
    parts += [f"{c.split('.', 1)[1]}={d.get(c, '-')}" for c in sorted(varying - shown)]
    return " · ".join(parts)


def _short_keys(keys: list[str]) -> dict[str, str]:
    """The last dotted component of each key, or more of it where that is ambiguous."""
    out = {}
    for k in keys:
        parts = k.split(".")[1:]  # drop "cfg"
        n = 1
        while n < len(parts) and sum(other.endswith("." + ".".join(parts[-n:])) for other in keys) > 1:
            n += 1
        out[k] = ".".join(parts[-n:])
    return out


@dataclass
class Grouping:
    """Runs with their ``setting``, ``group`` and ``label``; duplicates of a seed set aside.

    Attributes:
        runs: the runs kept, with columns ``setting`` (label of dataset × net × loss), ``group``
            (an id, unique across settings) and ``label`` (unique within a setting).
        dropped: runs not used because another run of their group and seed is longer, with
            ``kept`` (the run_dir used instead).
    """

    runs: pd.DataFrame
    dropped: pd.DataFrame


def _length(row: pd.Series) -> tuple[float, int, str]:
    """Sort key of the run to keep among runs of one group and seed: most steps, completed, then name."""
    steps = pd.to_numeric(pd.Series([row.get("steps")]), errors="coerce").fillna(-1).iloc[0]
    return (float(steps), int(row.get("status") == "completed"), str(row["run_dir"]))


def computing_columns(runs: pd.DataFrame) -> list[str]:
    """The flattened config columns (``cfg.*``) that change what a run computes: all but bookkeeping."""
    return sorted(c for c in runs.columns if c.startswith("cfg.") and not _BOOKKEEPING.match(c))


def group_runs(runs: pd.DataFrame) -> Grouping:
    """Assign settings, groups and labels (see the module docstring) to one experiment's runs.

    Args:
        runs: ``Runs.runs`` of one experiment (summary fields and ``cfg.*`` columns).
    """
    if runs.empty:
        return Grouping(runs.assign(setting=[], group=[], label=[]), runs.assign(kept=[]))
    cfg_cols = computing_columns(runs)
    runs = runs.copy()
    settings = [_setting_key(r, cfg_cols) for _, r in runs.iterrows()]
    methods = [_method_keys(r, cfg_cols) for _, r in runs.iterrows()]
    setting_varying = {c for c in cfg_cols if c.startswith(SETTING)
                       and len({dict(s).get(c) for s in settings}) > 1}
    runs["setting"] = [_setting_label(s, setting_varying) for s in settings]
    order = sorted(set(zip(runs["setting"], methods)))
    runs["group"] = [order.index(k) for k in zip(runs["setting"], methods)]
    labels: dict[int, str] = {}
    for _, part in runs.groupby("setting", sort=True):
        labels.update(_labels_by_difference(part, dict(zip(runs["group"], methods))))
    runs["label"] = runs["group"].map(labels)

    keep_idx, dropped = [], []
    for _, g in runs.groupby(["group", "seed"], sort=True, dropna=False):
        ranked = sorted(g.index, key=lambda i: _length(g.loc[i]), reverse=True)
        keep_idx.append(ranked[0])
        dropped += [{**g.loc[i].to_dict(), "kept": g.loc[ranked[0], "run_dir"]} for i in ranked[1:]]
    kept = runs.loc[sorted(keep_idx)].reset_index(drop=True)
    return Grouping(kept, pd.DataFrame(dropped, columns=[*runs.columns, "kept"]))


def _labels_by_difference(part: pd.DataFrame, methods: dict[int, tuple[tuple[str, str], ...]]) -> dict[int, str]:
    """Method label per group; groups that share one get ``key=value`` for each field that differs among them."""
    first = part.drop_duplicates("group").set_index("group")
    base = {g: method_label(first.loc[g]) for g in first.index}
    out = {}
    for name in sorted(set(base.values())):
        clash = [g for g in base if base[g] == name]
        if len(clash) == 1:
            out[clash[0]] = name
            continue
        keys = sorted({k for g in clash for k, _ in methods[g]} - _IN_LABEL)
        varying = [k for k in keys if len({dict(methods[g]).get(k) for g in clash}) > 1]
        short = _short_keys(varying)
        for g in clash:
            d = dict(methods[g])
            extra = " ".join(f"{short[k]}={d.get(k, 'default')}" for k in varying)
            out[g] = f"{name} · {extra}" if extra else f"{name} #{g}"
    return out
