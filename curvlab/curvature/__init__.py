"""Curvature: one backward recursion for exact, GN, Fisher and PCH blocks.

``curvlab.curvature`` is both this package and the public function ``curvature()``: Python
binds a subpackage as an attribute of its parent once it is imported, which would shadow the
lazily exported function. The package is therefore made callable and forwards to the function.
"""

import sys
import types
from typing import Any

from curvlab.curvature.blocks import LayerCurvature
from curvlab.curvature.options import CurvatureOptions, FisherType, JacobianAverage, Kind, WeightFactor
from curvlab.curvature.recursion import curvature

__all__ = [
    "LayerCurvature",
    "CurvatureOptions",
    "FisherType",
    "JacobianAverage",
    "Kind",
    "WeightFactor",
    "curvature",
]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> list[LayerCurvature]:
        return curvature(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
__wrapped__ = curvature  # so that inspect.signature(curvlab.curvature) shows the function's
