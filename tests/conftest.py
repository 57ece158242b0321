"""Shared test fixtures: tiny float64 problems defined once for every curvature test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from curvlab.losses import Loss, make_loss
from curvlab.nets import MLP

ACTIVATIONS = ("sigmoid", "tanh", "relu")
LOSSES = ("cross_entropy", "nonconvex")
# The shared real data (never copied into the repo); tests that need it skip when it is absent.
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class Problem:
    """A tiny net with a batch: everything a curvature test needs."""

    net: MLP
    x: torch.Tensor  # (B, n_0)
    y: torch.Tensor  # (B,)
    loss: Loss


def make_problem(
    activation: str = "sigmoid",
    loss: str = "cross_entropy",
    *,
    widths: tuple[int, ...] = (5, 4, 3, 3),
    batch: int = 6,
    bias: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
) -> Problem:
    """A seeded tiny problem. Inputs are scaled up so that activations leave their linear range
    and the second-order (residual) terms are not negligible."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = MLP(list(widths), activation, init="uniform", init_scale=0.8, bias=bias).to(dtype=dtype, device=device)
    x = (2.0 * torch.randn(batch, widths[0], generator=gen, dtype=torch.float64)).to(dtype=dtype, device=device)
    y = torch.randint(0, widths[-1], (batch,), generator=gen).to(device)
    return Problem(net, x, y, make_loss(loss))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest entry-wise difference relative to the larger of the two matrices' scale."""
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-30)
    return (a - b).abs().max().item() / scale


@pytest.fixture
def float64_default():
    """Make float64 the default dtype for one test, without leaking it into other modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
