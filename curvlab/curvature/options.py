"""Options that choose a curvature kind and its approximations (config names are the values)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, TypeVar

__all__ = ["Kind", "JacobianAverage", "FisherType", "WeightFactor", "CurvatureOptions", "parse_enum", "reject_unknown"]


class Kind(str, Enum):
    """Curvature kinds of one backward recursion (Chen et al. Eqs. 4, 6, 8; Dangel & Hennig Table 1)."""

    EXACT = "exact"  # true bias blocks, per-sample Eq. (4b)
    GN = "gn"  # Eq. (6)/(8b) without the activation's second-order term
    FISHER = "fisher"  # KFAC factor E[g gᵀ]
    PCH = "pch"  # alias of PCH1
    PCH1 = "pch1"  # Eq. (8b) with |·| on the diagonal term (γ = −1)
    PCH2 = "pch2"  # Eq. (8b) with max(·, 0) on the diagonal term (γ = 0)

    @property
    def psd(self) -> bool:
        """Whether blocks of this kind are PSD for any loss (GN only for convex losses)."""
        return self in (Kind.FISHER, Kind.PCH, Kind.PCH1, Kind.PCH2)


class JacobianAverage(str, Enum):
    """How Jacobians are averaged over the batch in the recursion."""

    PER_SAMPLE = "per_sample"  # E[h' h'ᵀ]: EA-CG Eq. (6), HBP Eq. (6)
    MEAN = "mean"  # E[h'] E[h']ᵀ: HBP Eq. (7)


class FisherType(str, Enum):
    MC = "mc"  # labels drawn from the model's predictive distribution
    EMPIRICAL = "empirical"  # true labels
    EXACT = "exact"  # exact expectation over the predictive distribution


class WeightFactor(str, Enum):
    """The input factor of the weight block."""

    RANK_ONE = "rank_one"  # E[h] E[h]ᵀ, Eq. (11b), the EA-CG default
    FULL = "full"  # E[h hᵀ], Eq. (11a)


E = TypeVar("E", bound=Enum)


def parse_enum(enum: type[E], value: Any, field: str) -> E:
    """``enum(value)`` with an error that names the field and the allowed values."""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in enum)  # type: ignore[attr-defined]
        raise ValueError(f"{field}: unknown value {value!r}; allowed: {allowed}") from None


def reject_unknown(names: Any, allowed: set[str], where: str) -> None:
    """Raise if ``names`` holds a key outside ``allowed``, naming the allowed ones."""
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; allowed: {', '.join(sorted(allowed))}")


@dataclass(frozen=True)
class CurvatureOptions:
    """Everything that selects a curvature approximation; solvers take one of these."""

    kind: Kind = Kind.PCH1
    jacobian_average: JacobianAverage = JacobianAverage.PER_SAMPLE
    weight_factor: WeightFactor = WeightFactor.RANK_ONE
    fisher: FisherType = FisherType.MC
    mc_samples: int = 1

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", parse_enum(Kind, self.kind, "curvature.kind"))
        object.__setattr__(
            self, "jacobian_average",
            parse_enum(JacobianAverage, self.jacobian_average, "curvature.jacobian_average"),
        )
        object.__setattr__(
            self, "weight_factor", parse_enum(WeightFactor, self.weight_factor, "curvature.weight_factor")
        )
        object.__setattr__(self, "fisher", parse_enum(FisherType, self.fisher, "curvature.fisher"))
        if int(self.mc_samples) < 1:
            raise ValueError(f"curvature.mc_samples must be >= 1, got {self.mc_samples}")
