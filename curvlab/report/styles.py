"""How curves look and where they go: natural order, a colour per method, a line style per curvature kind, panels.

A curve (a group of runs, :mod:`curvlab.report.groups`) is a *method* — the solver and its
options, ``EA-CG``, ``KFI · Eq. 13``, ``SGD (momentum 0.9)`` — applied with a curvature *kind*
(``PCH-1``; none for first-order solvers). Figures give each method one colour and each kind one
line style, so ``EA-CG · PCH-1`` and ``EA-CG · PCH-2`` share a colour and differ in dashes. A
figure with more than :data:`MAX_CURVES` curves is drawn as small multiples (:func:`panels`):
one panel per kind where several kinds were run (the solvers compared on one curvature, Chen
et al. Figures 1–8), else one per solver family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd

from curvlab.registry import KINDS
from curvlab.report.groups import method_label
from curvlab.report.paper import KINDS as PAPER_KINDS

__all__ = ["MAX_CURVES", "natural_key", "natural_sorted", "CurveTraits", "curve_traits", "panels", "LINESTYLES"]

MAX_CURVES = 6  # more curves than this in one axes no longer read apart: small multiples instead
# Line styles in the order kinds are met (paper order: Fisher, GN, PCH-1, PCH-2, then H); kind-less curves solid.
LINESTYLES: tuple[Any, ...] = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
_NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")
_SENTINEL = "\x00kind\x00"  # stands for the kind in a method label, then cut out


def natural_key(text: object) -> tuple[tuple[int, Any], ...]:
    """Sort key that reads numbers as numbers: ``split 2`` < ``split 16``, ``lr=0.05`` < ``lr=0.1``,
    ``1e-10`` < ``1e-5`` (legends, the curve tables and the best-point table all sort with it).

    >>> sorted(["split 16", "split 2", "lr=0.1", "lr=0.05"], key=natural_key)
    ['lr=0.05', 'lr=0.1', 'split 2', 'split 16']
    """
    parts = _NUMBER.split(str(text))
    return tuple((0, float(p)) if i % 2 else (1, p.lower()) for i, p in enumerate(parts) if p or i % 2)


def natural_sorted(items: Iterable[Any]) -> list[Any]:
    return sorted(items, key=natural_key)


@dataclass(frozen=True)
class CurveTraits:
    """Per curve label: its ``method`` (colour) and ``kind`` (line style; ``""`` for first-order solvers)."""

    method: dict[str, str]
    kind: dict[str, str]

    @classmethod
    def each_own(cls, labels: Iterable[str]) -> CurveTraits:
        """Every curve a method of its own (frames without run configs, e.g. in unit tests)."""
        labels = list(map(str, labels))
        return cls({k: k for k in labels}, {k: "" for k in labels})

    def labels(self) -> list[str]:
        """The curves in legend order: methods in natural order, within a method the kinds in paper order."""
        kinds = self.kinds()
        return sorted(self.method, key=lambda k: (natural_key(self.method[k]), kinds.index(self.kind[k]), k))

    def methods(self) -> list[str]:
        return natural_sorted(set(self.method.values()))

    def kinds(self) -> list[str]:
        """The kinds met, in the paper's order (Fisher, GN, PCH-1, PCH-2), others after; ``""`` first."""
        order = [KINDS.label(k) for k in PAPER_KINDS]
        return sorted(set(self.kind.values()), key=lambda k: (k != "", order.index(k) if k in order else len(order), k))

    def colors(self) -> dict[str, str]:
        """Curve label → colour: one per method (tab10; tab20 beyond ten methods)."""
        import matplotlib

        methods = self.methods()
        if len(methods) <= 10:
            by_method = {m: f"C{i}" for i, m in enumerate(methods)}
        else:
            palette = matplotlib.colormaps["tab20"].colors  # type: ignore[attr-defined]
            by_method = {m: matplotlib.colors.to_hex(palette[i % 20]) for i, m in enumerate(methods)}
        return {k: by_method[m] for k, m in self.method.items()}

    def linestyles(self) -> dict[str, Any]:
        """Curve label → line style: one per kind in the figure, kind-less curves solid."""
        kinds = [k for k in self.kinds() if k]
        style = {k: LINESTYLES[i % len(LINESTYLES)] for i, k in enumerate(kinds)}
        return {c: style.get(k, "-") for c, k in self.kind.items()}


def curve_traits(runs: pd.DataFrame) -> CurveTraits:
    """Method and kind of each curve of ``runs`` (kept runs with ``label`` and ``cfg.*``, one setting).

    The method is the run's label without its kind (:func:`curvlab.report.groups.method_label` with the
    kind left out) plus the ``key=value`` fields that tell its curve apart; the kind is its label
    (``PCH-1``), ``""`` for solvers that read no curvature (SGD, Adam).
    """
    method: dict[str, str] = {}
    kind: dict[str, str] = {}
    for _, row in runs.drop_duplicates("label").iterrows():
        label = str(row["label"])
        full = method_label(row)
        plain = method_label({**row.to_dict(), "cfg.curvature.kind": _SENTINEL, "cfg.solver.curvature": _SENTINEL,
                              "curvature": _SENTINEL})
        if _SENTINEL not in plain:  # a first-order solver: no kind
            method[label], kind[label] = label, ""
            continue
        head, _, tail = plain.partition(_SENTINEL)
        kind_text = full[len(head):len(full) - len(tail)] if full.startswith(head) and full.endswith(tail) else ""
        name = (head.rstrip(" ·(") + tail.lstrip(")")).strip()
        extra = label[len(full):] if label.startswith(full) else ""  # " · lr=0.1": what tells this curve apart
        method[label] = (name + extra).strip() or label
        kind[label] = _kind_only(kind_text, row)
    return CurveTraits(method, kind)


def _kind_only(text: str, row: pd.Series) -> str:
    """``Fisher (KFAC)`` → ``Fisher``: the kind's own label (a solver's literature name stays in its legend entry)."""
    for name in KINDS:
        lab = KINDS.label(name)
        if text == lab or text.startswith(lab + " ("):
            return lab
    return text or str(row.get("curvature") or "")


def panels(traits: CurveTraits, max_curves: int = MAX_CURVES) -> list[tuple[str, list[str]]]:
    """Split the curves into panels of at most about ``max_curves``: ``[(title, labels), ...]``.

    - up to ``max_curves`` curves: one panel (title ``""``);
    - several kinds: one panel per kind, holding each method run with that kind; kind-less curves
      (SGD) are the reference drawn in every panel;
    - else several solver families (the method's first ``·`` part) with more than one curve each:
      one panel per family, single-curve families in every panel;
    - else consecutive chunks of ``max_curves`` in legend order.
    """
    labels = traits.labels()
    if len(labels) <= max_curves:
        return [("", labels)]
    kinds = [k for k in traits.kinds() if k]
    if len(kinds) > 1:
        ref = [c for c in labels if not traits.kind[c]]
        return [(k, [c for c in labels if traits.kind[c] == k] + ref) for k in kinds]
    family = {c: traits.method[c].split(" · ")[0] for c in labels}
    sizes = pd.Series(family).value_counts()
    big = natural_sorted(sizes.index[sizes > 1])
    if len(big) > 1:
        ref = [c for c in labels if sizes[family[c]] == 1]
        return [(f, [c for c in labels if family[c] == f] + ref) for f in big]
    chunks = [labels[i:i + max_curves] for i in range(0, len(labels), max_curves)]
    return [(f"curves {i * max_curves + 1}–{i * max_curves + len(c)}", c) for i, c in enumerate(chunks)]
