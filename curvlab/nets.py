"""Fully connected networks with separately stored weights and biases.

The notation follows Chen et al. (EA-CG, AAAI 2019), Section "Fully-Connected Neural
Networks": ``h^0 = x``, ``z^t = W^t h^{t-1} + b^t``, ``h^t = σ(z^t)`` for ``t < k`` and a
linear output layer ``h^k = z^k``. Two ways to build one: :class:`MLP` (one activation, a
fused forward pass) and :func:`sequential` (an ``nn.Sequential`` from a list of widths and
module names, the runner's ``net.layers``, with the image layers of :mod:`curvlab.image_layers`
for convolutional nets such as DeepOBS's ``mnist_2c2d``); :mod:`curvlab.modules` reads any such net.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from enum import Enum
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from curvlab.image_layers import build_call, is_call, parse_call
from curvlab.modules.elementwise import RELU, SIGMOID, TANH, ActivationFns

__all__ = [
    "Activation", "ActivationFns", "ACTIVATIONS", "ACTIVATION_MODULES", "Init", "initialise", "MLP", "ForwardCache",
    "StepCache", "LAYER_NAMES", "parse_layers", "needs_images", "check_image_layers", "sequential", "make_net",
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
    # DeepOBS mnist_2c2d (after TensorFlow's CNN tutorial): weights N(0, s²) cut at ±2s, biases s; s = 0.05
    TRUNCATED_NORMAL = "truncated_normal"
    # DeepOBS cifar10_3c3d: Xavier normal on conv weights, Xavier uniform on Linear weights, biases 0
    XAVIER_CONV_NORMAL = "xavier_conv_normal"


def initialise(layers: Sequence[nn.Linear | nn.Conv2d], init: str | Init, scale: float) -> None:
    """Initialise linear and conv layers in place (``default`` keeps PyTorch's; ``uniform`` is
    U(±scale); ``truncated_normal`` and ``xavier_conv_normal`` as DeepOBS's conv test problems,
    ``deepobs/pytorch/testproblems/testproblems_modules.py``)."""
    init = Init(init)
    for layer in layers:
        bias = layer.bias
        if init is Init.XAVIER or (init is Init.XAVIER_CONV_NORMAL and isinstance(layer, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if bias is not None:
                nn.init.zeros_(bias)
        elif init is Init.XAVIER_CONV_NORMAL:
            nn.init.xavier_normal_(layer.weight)
            if bias is not None:
                nn.init.zeros_(bias)
        elif init is Init.UNIFORM:
            nn.init.uniform_(layer.weight, -scale, scale)
            if bias is not None:
                nn.init.uniform_(bias, -scale, scale)
        elif init is Init.TRUNCATED_NORMAL:  # TensorFlow's truncated_normal: redraw beyond 2 std
            nn.init.trunc_normal_(layer.weight, 0.0, scale, -2 * scale, 2 * scale)
            if bias is not None:
                nn.init.constant_(bias, scale)


@dataclass(frozen=True)
class StepCache:
    """What the forward pass keeps of one step of a step net (a net with convolutions).

    ``x`` is the step's input (B, *in_shape), per-sample shape (C, H, W) or (n,); ``cache`` is the
    step's own forward cache (a conv's ``ConvCache``, MaxPool's indices) or None.
    """

    x: Tensor
    cache: Any = None


def _select(obj: Any, part: slice) -> Any:
    """``obj`` restricted to the samples ``part`` (tensors and dataclasses of tensors), detached."""
    if isinstance(obj, Tensor):
        return obj[part].detach()
    if is_dataclass(obj) and not isinstance(obj, type):
        return replace(obj, **{f.name: _select(getattr(obj, f.name), part) for f in fields(obj)})
    if isinstance(obj, (tuple, list)):
        return type(obj)(_select(o, part) for o in obj)
    return obj  # sizes, None


@dataclass
class ForwardCache:
    """What one forward pass keeps for the curvature recursion.

    ``inputs[t]`` is ``h^{t}`` of shape (B, n_t) for t = 0..k-1 (the input of layer t+1; (B, C, H, W)
    maps for a conv layer), ``preacts[t]`` is ``z^{t+1}`` of shape (B, n_{t+1}) (maps for a conv), and
    ``output`` is ``h^k`` (B, n_k). ``steps`` (step nets only, else None) holds every step's input
    and cache in forward order, from the first layer on.
    """

    inputs: list[Tensor]
    preacts: list[Tensor]
    output: Tensor
    steps: list[StepCache] | None = None

    def select(self, part: slice = slice(None)) -> ForwardCache:
        """The cache of the samples ``part`` (all by default), detached from autograd."""
        return _select(self, part)


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
    """Validate a layer list: positive ints (Linear widths), names of :data:`LAYER_NAMES` and
    image layers written as calls (:mod:`curvlab.image_layers`, e.g. ``conv(32, 5)``, kept in
    their normal form); at least one Linear, and the last module must be a Linear."""
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
        elif is_call(item):
            out.append(str(parse_call(item, f"{field}[{i}]")))
        else:
            raise ValueError(
                f"{field}[{i}]: unknown entry {item!r}; use a positive int (nn.Linear width), one of "
                f"{', '.join(LAYER_NAMES)}, or an image layer such as conv(32, 5, padding=2) or maxpool(2)"
            )
    linear_at = [i for i, item in enumerate(out) if isinstance(item, int)]
    if not linear_at:
        raise ValueError(f"{field} has no Linear width; e.g. [64, tanh, 10]")
    if any(item in ELEMENTWISE_NAMES for item in out[linear_at[-1] + 1 :]):
        raise ValueError(f"{field} must end with a Linear width (the losses take the logits), got {list(layers)}")
    return out


def needs_images(layers: Sequence[int | str] | None) -> bool:
    """Whether a layer list has image layers, so that its input must keep the shape (C, H, W)."""
    return any(is_call(item) for item in layers or ())


def check_image_layers(in_shape: Sequence[int], layers: Sequence[int | str], field: str = "net.layers") -> None:
    """Raise the error :func:`sequential` would for a layer list on images of ``in_shape``,
    without allocating (the modules are made on the meta device)."""
    with torch.device("meta"):
        _image_modules([int(n) for n in in_shape], parse_layers(layers, field), True, field)


def _image_modules(in_shape: Sequence[int], spec: list[int | str], bias: bool, field: str) -> list[nn.Module]:
    """The modules of a layer list with image layers on inputs of shape ``in_shape`` = (C, H, W).

    Shapes are followed with a meta tensor (no memory, no compute), so that a Linear after
    ``flatten`` gets its input width and a layer that does not fit its input is named.
    """
    x = torch.zeros(1, *in_shape, device="meta")  # (1, C, H, W)
    mods: list[nn.Module] = []
    for i, item in enumerate(spec):
        if isinstance(item, int):
            if x.dim() != 2:
                raise ValueError(f"{field}[{i}]: the Linear of width {item} gets images of shape "
                                 f"{tuple(x.shape[1:])}; put flatten in front of it")
            mod: nn.Module = nn.Linear(x.shape[1], item, bias=bias)
        elif is_call(item):
            if x.dim() != 4:
                raise ValueError(f"{field}[{i}]: {item} needs images (C, H, W), got features of shape "
                                 f"{tuple(x.shape[1:])}; image layers go before flatten")
            call = parse_call(item, f"{field}[{i}]")
            try:
                mod = build_call(call, x.shape[1], bias)
            except ValueError as err:  # torch's own check, e.g. "padding='same' is not supported for strided convolutions"
                raise ValueError(f"{field}[{i}]: {item}: {str(err).splitlines()[0]}") from None
        else:
            mod = LAYER_NAMES[item]()
        try:  # the module's own parameters stay on the CPU; meta copies give the shape
            x = torch.func.functional_call(mod, {k: p.to("meta") for k, p in mod.named_parameters()}, (x,))
        except RuntimeError as err:  # e.g. "Output size is too small", "Kernel size can't be greater"
            raise ValueError(f"{field}[{i}]: {item} does not fit its input of shape (C, H, W) = "
                             f"{tuple(x.shape[1:])} ({str(err).splitlines()[0]}); use larger images or a smaller "
                             "kernel, stride or pooling") from None
        mods.append(mod)
    return mods


def sequential(
    in_features: int | Sequence[int],
    layers: Sequence[int | str],
    bias: bool = True,
    init: str | Init = Init.DEFAULT,
    init_scale: float = 0.2,
) -> nn.Sequential:
    """Build an ``nn.Sequential`` from a layer list: an int is an ``nn.Linear`` of that width,
    a name (see :data:`LAYER_NAMES`) an activation or identity-like module, a call an image layer
    (:mod:`curvlab.image_layers`; then ``in_features`` is the input's shape (C, H, W)); the Linear
    and conv layers are initialised as :class:`MLP` does (``init``, ``init_scale``)."""
    spec = parse_layers(layers)
    mods: list[nn.Module] = []
    if needs_images(spec):
        if isinstance(in_features, int) or len(in_features) != 3:
            raise ValueError(f"a net with image layers needs the input shape (C, H, W), got {in_features!r}")
        mods = _image_modules([int(n) for n in in_features], spec, bias, "net.layers")
    else:
        n = int(in_features if isinstance(in_features, int) else torch.Size(in_features).numel())
        for item in spec:
            if isinstance(item, int):
                mods.append(nn.Linear(n, item, bias=bias))
                n = item
            else:
                mods.append(LAYER_NAMES[item]())
    net = nn.Sequential(*mods)
    initialise([m for m in mods if isinstance(m, (nn.Linear, nn.Conv2d))], init, init_scale)
    return net


def make_net(
    widths: Sequence[int],
    activation: str | Activation = Activation.SIGMOID,
    init: str | Init = Init.DEFAULT,
    init_scale: float = 0.2,
    bias: bool = True,
    layers: Sequence[int | str] | None = None,
    input_shape: Sequence[int] | None = None,
) -> MLP | nn.Sequential:
    """The runner's net: an :class:`MLP` of ``widths``, or with ``layers`` the ``nn.Sequential``
    of :func:`sequential` on ``widths[0]`` inputs, or on images of ``input_shape`` (C, H, W) when
    ``layers`` has image layers (``activation`` is then not used)."""
    if layers is None:
        return MLP(widths, activation, init, init_scale, bias)
    return sequential(input_shape if needs_images(layers) and input_shape else widths[0], layers, bias, init, init_scale)
