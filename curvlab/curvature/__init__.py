"""Curvature: one backward recursion for exact, GN, Fisher and PCH blocks."""

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
