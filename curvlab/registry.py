"""One registry per name family: solvers, curvature kinds, losses and activations.

Config validation, the runner, the report and the scripts read the names they accept, and the
labels the report prints, from here instead of keeping their own lists.

- **Solvers** register themselves (:func:`curvlab.solvers.base.register`); a solver class is its
  own entry: label, which fields of the ``curvature`` group it reads, which kinds it accepts and
  its options' types and ranges (:class:`curvlab.solvers.base.Solver`).
- **Curvature kinds, losses, activations** are the members of their enums (:class:`Kind`,
  :class:`LossKind`, :class:`Activation`), each with its display label; a member without a label
  stops the import, so that a new name cannot reach a report unlabelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Mapping

from curvlab.curvature.options import Kind
from curvlab.losses import LossKind
from curvlab.nets import Activation

if TYPE_CHECKING:
    from curvlab.solvers.base import Solver

__all__ = [
    "Family", "KINDS", "LOSSES", "ACTIVATIONS", "solvers", "solver_names", "solver_class", "find_solver",
    "curvature_fields",
]


@dataclass(frozen=True)
class Family:
    """The names of one family, in declaration order, with their labels; ``aliases`` map to a name."""

    field: str  # the config field the names fill, for messages: "curvature.kind"
    names: tuple[str, ...]
    labels: Mapping[str, str]
    aliases: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, field_: str, enum: type[Enum], labels: Mapping[str, str],
           aliases: Mapping[str, str] | None = None) -> Family:
        """The family of ``enum``'s values; every value needs a label or an alias."""
        names = tuple(str(m.value) for m in enum)
        aliases = dict(aliases or {})
        missing = [n for n in names if n not in labels and n not in aliases]
        if missing or set(labels) - set(names):
            raise RuntimeError(f"{field_}: labels {sorted(labels)} do not match the names {list(names)}; "
                               "label each name in curvlab/registry.py")
        return cls(field_, names, dict(labels), aliases)

    def canonical(self, name: str) -> str:
        """``name`` with an alias resolved (``pch`` → ``pch1``)."""
        return self.aliases.get(name, name)

    def label(self, name: Any) -> str:
        """The display label; a name this install does not know (an old record's) is shown as is."""
        return self.labels.get(self.canonical(str(name)), str(name))

    def check(self, value: Any) -> str:
        """``value`` if it is a name of the family, else ``ValueError`` naming the field and the names."""
        if value not in self.names:
            raise ValueError(f"{self.field}: unknown value {value!r}; allowed: {', '.join(self.names)}")
        return str(value)

    def __contains__(self, value: object) -> bool:
        return value in self.names

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.names)


# "H" for the exact kind: a method on it reads "Newton (H)" or "EA-CG · H".
KINDS = Family.of("curvature.kind", Kind,
                  {"exact": "H", "gn": "GN", "fisher": "Fisher", "pch1": "PCH-1", "pch2": "PCH-2"},
                  aliases={"pch": "pch1"})
LOSSES = Family.of("loss.name", LossKind, {"cross_entropy": "cross-entropy", "nonconvex": "nonconvex"})
ACTIVATIONS = Family.of("net.activation", Activation, {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu"})


def solvers() -> Mapping[str, type[Solver]]:
    """The solver registry, name → class, with every built-in solver registered."""
    import curvlab.solvers  # noqa: F401  (importing the package registers the built-in solvers)
    from curvlab.solvers.base import SOLVERS

    return SOLVERS


def solver_names() -> tuple[str, ...]:
    """The registered solver names, in registration order."""
    return tuple(solvers())


def solver_class(name: Any, field_: str = "solver.name") -> type[Solver]:
    """The registered solver ``name``, or ``ValueError`` naming ``field_`` and the registered names."""
    registry = solvers()
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"{field_}: unknown solver {name!r}; allowed: {', '.join(registry)}")
    return registry[name]


def find_solver(name: Any) -> type[Solver] | None:
    """The registered solver ``name``, or None (a run recorded by a solver this install lacks)."""
    return solvers().get(name) if isinstance(name, str) else None


def curvature_fields(name: Any, options: Mapping[str, Any] | None = None) -> frozenset[str]:
    """The fields of the ``curvature`` group that solver ``name`` with ``options`` reads (CR: its base's)."""
    cls = find_solver(name)
    if cls is None:
        return frozenset()
    try:
        return cls.curvature_reader(options or {}).curvature_fields
    except ValueError:  # an unknown base in an old record
        return frozenset()
