"""Rules of the modules that pass a (B, n) tensor through unchanged: Jacobian I, no residual.

``nn.Identity``; ``nn.Flatten`` keeping the batch dimension (a reshape of the input, so it is
the identity on the flattened features); ``nn.Dropout`` in eval mode (in training mode its
random mask would make the curvature random, so it is refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

from torch import nn

from curvlab.modules.base import ModuleRule, Role, register

__all__ = ["IdentityRule"]


def _check_dropout(m: nn.Dropout) -> None:
    if m.training and m.p > 0:
        raise ValueError(
            f"{m!r} is in training mode: its random mask would make the curvature random; "
            "call net.eval() (Dropout is then the identity) or remove it"
        )


def _check_flatten(m: nn.Flatten) -> None:
    if m.start_dim != 1:
        raise ValueError(f"{m!r}: only nn.Flatten(start_dim=1) is supported (it keeps the batch dimension)")


@dataclass(frozen=True)
class IdentityRule(ModuleRule):
    """An identity-like module; ``settings`` raises for instances that are not the identity."""

    settings: Callable[[nn.Module], None] | None = None
    role: ClassVar[Role] = Role.IDENTITY

    def check(self, m: nn.Module) -> None:
        if self.settings is not None:
            self.settings(m)


register(nn.Identity, IdentityRule())
register(nn.Flatten, IdentityRule(_check_flatten))  # type: ignore[arg-type]
register(nn.Dropout, IdentityRule(_check_dropout))  # type: ignore[arg-type]
