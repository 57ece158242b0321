"""curvlab: curvature methods and second-order solvers for fully connected networks.

Public API (imported lazily, apart from ``curvature``); ``net`` is a :class:`MLP` or any
feed-forward ``nn.Sequential`` of the modules in :mod:`curvlab.modules`::

    net = curvlab.MLP([64, 32, 16, 10], activation="sigmoid")
    net = torch.nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 10))
    net = curvlab.sequential(64, [32, "tanh", 16, "relu", 10])          # the runner's net.layers
    blocks = curvlab.curvature(net, x, y, kind="pch1", loss="cross_entropy")
    errs = curvlab.layerwise_errors(blocks, curvlab.curvature(net, x, y, kind="exact"))
    d = curvlab.newton_direction(net, x, y, kind="pch1", solver="eacg")
    v = curvlab.hessian_inverse_product(net, x, y, vec, damping=1e-3)
    a = curvlab.cr_step_size(net, x, y, direction, sigma=100.0)
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported eagerly: importing the subpackage ``curvlab.curvature`` binds that name on this
# module, which would shadow a lazily exported function of the same name.
from curvlab.curvature.recursion import curvature  # noqa: F401  (exported in __all__)

__version__ = "0.1.0"

_EXPORTS = {
    "MLP": "curvlab.nets",
    "sequential": "curvlab.nets",
    "supported_modules": "curvlab.modules",
    "Activation": "curvlab.nets",
    "make_loss": "curvlab.losses",
    "CrossEntropy": "curvlab.losses",
    "NonConvex": "curvlab.losses",
    "LayerCurvature": "curvlab.curvature.blocks",
    "layerwise_errors": "curvlab.metrics",
    "newton_direction": "curvlab.solvers",
    "hessian_inverse_product": "curvlab.solvers.exact_inverse",
    "cr_step_size": "curvlab.solvers.cr",
    "make_solver": "curvlab.solvers",
}

__all__ = sorted([*_EXPORTS, "curvature"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'curvlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
