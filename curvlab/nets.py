"""Fully connected networks with separately stored weights and biases.

The notation follows Chen et al. (EA-CG, AAAI 2019), Section "Fully-Connected Neural
Networks": ``h^0 = x``, ``z^t = W^t h^{t-1} + b^t``, ``h^t = σ(z^t)`` for ``t < k`` and a
linear output layer ``h^k = z^k``. Two ways to build one: :class:`MLP` (one activation, a
fused forward pass) and :func:`sequential` (an ``nn.Sequential`` from a list of widths and
module names, the runner's ``net.layers``); :mod:`curvlab.modules` reads any such net.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from curvlab.modules.elementwise import RELU, SIGMOID, TANH, ActivationFns

__all__ = [
    "Activation", "ActivationFns", "ACTIVATIONS", "ACTIVATION_MODULES", "Init", "initialise", "MLP", "ForwardCache",
    "LAYER_NAMES", "parse_layers", "sequential", "make_net",
]


class Activation(str, Enum):
    """Element-wise activations that the curvature recursion supports."""

    SIGMOID = "sigmoid"
    TANH = "tanh"
    RELU = "relu"


# σ, σ', σ'' of the MLP's activations live with the other element-wise rules.
ACTIVATIONS: dict[Activation, ActivationFns] = {
    Activation.SIGMOID: SIGMOID,
    Activation.TANH: TANH,
    Activation.RELU: RELU,
}


# The torch module of each activation (what :meth:`MLP.as_sequential` puts between the layers).
ACTIVATION_MODULES: dict[Activation, type[nn.Module]] = {
    Activation.SIGMOID: nn.Sigmoid,
    Activation.TANH: nn.Tanh,
    Activation.RELU: nn.ReLU,
}


class Init(str, Enum):
    """Initialisations used by the papers."""

    DEFAULT = "default"  # PyTorch's nn.Linear default
    XAVIER = "xavier"  # Glorot & Bengio (2010), used by EA-CG; biases zero
    UNIFORM = "uniform"  # U(-a, a) for weights (Bakker et al., Appendix A: a = 0.2, or 0.1 on a plateau)


def initialise(layers: Sequence[nn.Linear], init: str | Init, scale: float) -> None:
    """Initialise linear layers in place (``default`` keeps PyTorch's; ``uniform`` is U(±scale))."""
    init = Init(init)
    for layer in layers:
        if init is Init.XAVIER:
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif init is Init.UNIFORM:
            nn.init.uniform_(layer.weight, -scale, scale)
            if layer.bias is not None:
                nn.init.uniform_(layer.bias, -scale, scale)


@dataclass
class ForwardCache:
    """What one forward pass keeps for the curvature recursion.

    ``inputs[t]`` is ``h^{t}`` of shape (B, n_t) for t = 0..k-1 (the input of linear layer t+1),
    ``preacts[t]`` is ``z^{t+1}`` of shape (B, n_{t+1}), and ``output`` is ``h^k`` (B, n_k).
    """

    inputs: list[Tensor]
    preacts: list[Tensor]
    output: Tensor


class MLP(nn.Module):
    """A fully connected network ``widths[0] → … → widths[-1]`` with a linear last layer.

    Args:
        widths: layer sizes ``n_0, …, n_k`` (at least two entries).
        activation: ``sigmoid``, ``tanh`` or ``relu`` for the hidden layers.
        init: ``default`` (PyTorch), ``xavier`` or ``uniform`` (±``init_scale``).
        init_scale: half-width ``a`` of the uniform initialisation.
        bias: whether the linear layers have biases (Bakker et al. train without).
    """

    def __init__(
        self,
        widths: Sequence[int],
        activation: str | Activation = Activation.SIGMOID,
        init: str | Init = Init.DEFAULT,
        init_scale: float = 0.2,
        bias: bool = True,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise ValueError(f"MLP widths must list at least two positive sizes, got {widths}")
        try:
            self.activation = Activation(activation)
        except ValueError:
            allowed = ", ".join(a.value for a in Activation)
            raise ValueError(f"unknown activation {activation!r}; allowed: {allowed}") from None
        try:
            self.init = Init(init)
        except ValueError:
            allowed = ", ".join(i.value for i in Init)
            raise ValueError(f"unknown init {init!r}; allowed: {allowed}") from None
        if self.init is Init.UNIFORM and not init_scale > 0:
            raise ValueError(f"init_scale must be > 0 for uniform init, got {init_scale}")
        self.widths = widths
        self.has_bias = bias
        self.fns = ACTIVATIONS[self.activation]
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out, bias=bias) for n_in, n_out in zip(widths[:-1], widths[1:])
        )
        initialise(self.layers, self.init, init_scale)

    @property
    def depth(self) -> int:
        """Number of linear layers ``k``."""
        return len(self.layers)

    def flatten_input(self, x: Tensor) -> Tensor:
        """Flatten images to (B, n_0)."""
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.widths[0]:
            raise ValueError(f"input has {x.shape[1]} features but the net expects {self.widths[0]}")
        return x

    def forward(self, x: Tensor) -> Tensor:
        h = self.flatten_input(x)
        for t, layer in enumerate(self.layers):
            h = layer(h)
            if t < self.depth - 1:
                h = self.fns.f(h)
        return h

    def forward_cache(self, x: Tensor) -> ForwardCache:
        """Forward pass that keeps every layer input and pre-activation."""
        h = self.flatten_input(x)
        inputs, preacts = [], []
        for t, layer in enumerate(self.layers):
            inputs.append(h)
            z = layer(h)
            preacts.append(z)
            h = self.fns.f(z) if t < self.depth - 1 else z
        return ForwardCache(inputs, preacts, h)

    def as_sequential(self) -> nn.Sequential:
        """The same net as an ``nn.Sequential`` (Flatten, Linear, σ, …, Linear) that shares this
        net's ``nn.Linear`` modules, hence its parameters."""
        mods: list[nn.Module] = [nn.Flatten()]
        for t, layer in enumerate(self.layers):
            mods.append(layer)
            if t < self.depth - 1:
                mods.append(ACTIVATION_MODULES[self.activation]())
        return nn.Sequential(*mods)

    def extra_repr(self) -> str:
        return f"widths={self.widths}, activation={self.activation.value}, init={self.init.value}"


# The module names of a layer list (the runner's ``net.layers``); curvlab.modules has their rules.
LAYER_NAMES: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "identity": nn.Identity,
    "flatten": nn.Flatten,
}
ELEMENTWISE_NAMES = set(LAYER_NAMES) - {"identity", "flatten"}  # what may not follow the last Linear


def parse_layers(layers: Sequence[int | str], field: str = "net.layers") -> list[int | str]:
    """Validate a layer list: positive ints (Linear widths) and names of :data:`LAYER_NAMES`;
    at least one Linear, and the last module must be a Linear."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise ValueError(f"{field} must be a list such as [64, tanh, 32, relu, 10], got {layers!r}")
    out: list[int | str] = []
    for i, item in enumerate(layers):
        if isinstance(item, bool):
            raise ValueError(f"{field}[{i}]: {item!r} is neither a width nor a module name")
        if isinstance(item, int) or (isinstance(item, str) and item.strip().isdigit()):
            width = int(item)
            if width < 1:
                raise ValueError(f"{field}[{i}]: a Linear width must be >= 1, got {width}")
            out.append(width)
        elif isinstance(item, str) and item.strip().lower() in LAYER_NAMES:
            out.append(item.strip().lower())
        else:
            raise ValueError(
                f"{field}[{i}]: unknown entry {item!r}; use a positive int (nn.Linear width) or one of "
                f"{', '.join(LAYER_NAMES)}"
            )
    linear_at = [i for i, item in enumerate(out) if isinstance(item, int)]
    if not linear_at:
        raise ValueError(f"{field} has no Linear width; e.g. [64, tanh, 10]")
    if any(item in ELEMENTWISE_NAMES for item in out[linear_at[-1] + 1 :]):
        raise ValueError(f"{field} must end with a Linear width (the losses take the logits), got {list(layers)}")
    return out


def sequential(
    in_features: int,
    layers: Sequence[int | str],
    bias: bool = True,
    init: str | Init = Init.DEFAULT,
    init_scale: float = 0.2,
) -> nn.Sequential:
    """Build an ``nn.Sequential`` from a layer list: an int is an ``nn.Linear`` of that width,
    a name (see :data:`LAYER_NAMES`) an activation or identity-like module; the Linear layers
    are initialised as :class:`MLP` does (``init``, ``init_scale``)."""
    spec = parse_layers(layers)
    mods: list[nn.Module] = []
    n = int(in_features)
    for item in spec:
        if isinstance(item, int):
            mods.append(nn.Linear(n, item, bias=bias))
            n = item
        else:
            mods.append(LAYER_NAMES[item]())
    net = nn.Sequential(*mods)
    initialise([m for m in mods if isinstance(m, nn.Linear)], init, init_scale)
    return net


def make_net(
    widths: Sequence[int],
    activation: str | Activation = Activation.SIGMOID,
    init: str | Init = Init.DEFAULT,
    init_scale: float = 0.2,
    bias: bool = True,
    layers: Sequence[int | str] | None = None,
) -> MLP | nn.Sequential:
    """The runner's net: an :class:`MLP` of ``widths``, or with ``layers`` the ``nn.Sequential``
    of :func:`sequential` on ``widths[0]`` inputs (``activation`` is then not used)."""
    if layers is None:
        return MLP(widths, activation, init, init_scale, bias)
    return sequential(widths[0], layers, bias, init, init_scale)
