"""Options that choose a curvature kind and its approximations (config names are the values)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, TypeVar

__all__ = [
    "Kind", "JacobianAverage", "FisherType", "WeightFactor", "KFACType", "CurvatureOptions", "parse_enum",
    "reject_unknown",
]


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
    # Nets with convolutions, EA-CG: no Kronecker factor, the layer's own weight block E_i[J_θ,iᵀ H_i J_θ,i]
    # multiplied matrix-free (HBP Sec. 3, BackPACK's curvmatprod; ``LayerCurvature.block_product``).
    BLOCK = "block"


class KFACType(str, Enum):
    """How the Kronecker factors of a weight shared over positions (``nn.Conv2d``) treat the positions.

    ``expand``: KFC (Grosse & Martens 2016, Eq. 32 and the SUD assumption); every position is a
    sample: A = E_i[(1/L) Σ_l ũ_l ũ_lᵀ], G = E_i[Σ_l g_l g_lᵀ].
    ``reduce``: Eschenhagen et al. (NeurIPS 2023, "KFAC for modern architectures", Sec. 3):
    A = E_i[ū ūᵀ] with ū = (1/L) Σ_l ũ_l, G = E_i[(Σ_l g_l)(Σ_l g_l)ᵀ] (the exact bias block).
    The normalisations are those of curvlinops' ``KFACType.EXPAND``/``REDUCE`` (the 1/L on A).
    """

    EXPAND = "expand"
    REDUCE = "reduce"


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
    kfac_type: KFACType = KFACType.EXPAND  # conv layers only: the convention of their Kronecker factors
    # gn/pch1/pch2 on step nets: mc_samples Rademacher sketch rows per sample instead of the exact output
    # factor (an unbiased approximation, ``kinds.sketched``), and for pch1/pch2 instead of the n rows of each
    # activation's residual diagonal (``SampleFactors.add_residual``); off: the exact rows.
    sketch: bool = False

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
        object.__setattr__(self, "kfac_type", parse_enum(KFACType, self.kfac_type, "curvature.kfac_type"))
        if int(self.mc_samples) < 1:
            raise ValueError(f"curvature.mc_samples must be >= 1, got {self.mc_samples}")
        if self.sketch and self.kind not in (Kind.GN, Kind.PCH, Kind.PCH1, Kind.PCH2):
            raise ValueError(f"curvature.sketch=true applies to kind gn, pch1 or pch2 (got {self.kind.value}); "
                             "set curvature.sketch=false")
