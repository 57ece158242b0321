"""Numbers and formulas quoted from the papers, for side-by-side tables.

Tables 2–5 of Chen et al. (EA-CG, AAAI 2019, main text and Supplementary A): layer-wise
errors ‖E[B̃_t] − |E[H_t]|‖_F averaged over the first s updates; "Total" is √Σ_t err_t².
``None`` marks the Gauss-Newton column that the paper leaves out for the non-convex loss.
"""

from __future__ import annotations

__all__ = ["EACG_TABLES", "TABLE1_COMPLEXITY", "KINDS"]

KINDS = ("fisher", "gn", "pch1", "pch2")

_T = dict[str, list[float | None]]


def _cols(fisher: list[float], gn: list[float] | None, pch1: list[float], pch2: list[float]) -> _T:
    return {"fisher": fisher, "gn": gn or [None] * len(fisher), "pch1": pch1, "pch2": pch2}


# Rows: Layer-1 … Layer-8, then Total.
EACG_TABLES: dict[str, dict[str, object]] = {
    "table2": {
        "dataset": "cifar10", "loss": "cross_entropy",
        "values": _cols(
            [0.0071, 0.0470, 0.1140, 0.0726, 0.0397, 0.0219, 0.0185, 0.0251, 0.1535],
            [0.0057, 0.0212, 0.0220, 0.0207, 0.0130, 0.0107, 0.0176, 0.0000, 0.0446],
            [0.0036, 0.0237, 0.0238, 0.0119, 0.0086, 0.0093, 0.0132, 0.0000, 0.0402],
            [0.0043, 0.0228, 0.0165, 0.0085, 0.0066, 0.0071, 0.0106, 0.0000, 0.0330],
        ),
    },
    "table3": {
        "dataset": "imagenet10", "loss": "cross_entropy",
        "values": _cols(
            [0.0012, 0.0240, 0.0409, 0.0390, 0.0327, 0.0279, 0.0290, 0.0427, 0.0910],
            [0.0011, 0.0151, 0.0186, 0.0149, 0.0132, 0.0159, 0.0260, 0.0000, 0.0436],
            [0.0003, 0.0146, 0.0198, 0.0137, 0.0115, 0.0142, 0.0259, 0.0000, 0.0424],
            [0.0009, 0.0132, 0.0174, 0.0160, 0.0112, 0.0128, 0.0183, 0.0000, 0.0369],
        ),
    },
    "table4": {
        "dataset": "cifar10", "loss": "nonconvex",
        "values": _cols(
            [0.0044, 0.0192, 0.0528, 0.0449, 0.0330, 0.0294, 0.0331, 0.0781, 0.1198],
            None,
            [0.0035, 0.0179, 0.0185, 0.0129, 0.0092, 0.0097, 0.0140, 0.0000, 0.0349],
            [0.0049, 0.0456, 0.0502, 0.0344, 0.0261, 0.0198, 0.0198, 0.0000, 0.0853],
        ),
    },
    "table5": {
        "dataset": "imagenet10", "loss": "nonconvex",
        "values": _cols(
            [0.0003, 0.0116, 0.0258, 0.0248, 0.0157, 0.0147, 0.0219, 0.0734, 0.0880],
            None,
            [0.0002, 0.0226, 0.0264, 0.0285, 0.0284, 0.0214, 0.0172, 0.0000, 0.0598],
            [0.0003, 0.0253, 0.0300, 0.0326, 0.0308, 0.0227, 0.0171, 0.0000, 0.0660],
        ),
    },
}

# Table 1 of Chen et al.: the complexity column per (curvature, solver) as printed there.
TABLE1_COMPLEXITY: dict[str, dict[str, str]] = {
    "fisher/kfi": {"method": "KFAC (Martens & Grosse)",
                   "curvature_time": "O(|B| Σ n_t²)",
                   "solve_time": "O(Σ [n_t³ + n_{t-1}³ + n_{t-1}² n_t + n_{t-1} n_t²])",
                   "space": "O(Σ n_t² + Σ n_{t-1}²)"},
    "gn/kfi": {"method": "KFRA (Botev et al.)",
               "curvature_time": "O(Σ n_{t-1}² n_t)",
               "solve_time": "O(Σ [n_t³ + n_{t-1}³ + n_{t-1}² n_t + n_{t-1} n_t²])",
               "space": "O(Σ n_t² + Σ n_{t-1}²)"},
    "pch1/eacg": {"method": "PCH + EA-CG (ours in Chen et al.)",
                  "curvature_time": "O(Σ n_{t-1}² n_t)",
                  "solve_time": "O(|CG| Σ [n_t² + 2 n_t n_{t-1}])",
                  "space": "O(Σ n_{t-1} + Σ n_t²)"},
}
