"""Module rules and the canonical chain (curvlab.modules): derivatives, structure, messages, builders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import curvlab
from curvlab.modules import ELEMENTWISE, chain
from curvlab.nets import ELEMENTWISE_NAMES, LAYER_NAMES, parse_layers


def _jvp_derivatives(fn, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """σ'(z), σ''(z) of an element-wise ``fn`` by nested forward-mode autograd along ones."""
    ones = torch.ones_like(z)

    def d1(u: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(fn, (u,), (ones,))[1]

    return d1(z), torch.func.jvp(d1, (z,), (ones,))[1]


@pytest.mark.parametrize("cls", list(ELEMENTWISE), ids=lambda c: c.__name__)
def test_elementwise_rules_match_autograd(cls: type[nn.Module]) -> None:
    """σ' and σ'' of every rule against nested autograd on the module itself."""
    kwargs = {nn.LeakyReLU: {"negative_slope": 0.3}, nn.ELU: {"alpha": 0.7},
              nn.Softplus: {"beta": 1.5, "threshold": 3.0}}.get(cls, {})
    module = cls(**kwargs)
    fns = ELEMENTWISE[cls](module)
    z = torch.linspace(-4, 4, 81, dtype=torch.float64)
    z = z[(z != 0) & ((z * 1.5 - 3.0).abs() > 1e-9)]  # kinks: 0, and Softplus's switch to linear
    d1, d2 = _jvp_derivatives(module, z)
    torch.testing.assert_close(fns.f(z), module(z), rtol=0, atol=0)
    torch.testing.assert_close(fns.df(z), d1, rtol=0, atol=1e-14)
    torch.testing.assert_close(fns.d2f(z), d2, rtol=0, atol=1e-14)


def test_unsupported_modules_are_named() -> None:
    with pytest.raises(TypeError, match=r"unsupported module Conv1d.*Linear.*Sigmoid.*GELU.*Flatten.*Dropout"):
        chain(nn.Sequential(nn.Conv1d(1, 1, 3), nn.Flatten(), nn.Linear(3, 2)))
    with pytest.raises(TypeError, match=r"net must be a curvlab.MLP or an nn.Sequential.*got Linear"):
        curvlab.curvature(nn.Linear(3, 2), torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"training mode.*net.eval\(\)"):
        chain(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2), nn.Linear(3, 2)))  # a new module trains
    with pytest.raises(ValueError, match=r"GELU\(approximate='tanh'\).*exact erf form"):
        chain(nn.Sequential(nn.Linear(3, 3), nn.GELU(approximate="tanh"), nn.Linear(3, 2)))
    with pytest.raises(ValueError, match=r"follows the last nn.Linear.*logits"):
        chain(nn.Sequential(nn.Linear(3, 2), nn.Sigmoid()))
    with pytest.raises(ValueError, match=r"no nn.Linear layer"):
        chain(nn.Sequential(nn.Flatten()))
    with pytest.raises(ValueError, match=r"Flatten\(start_dim=1\)"):
        chain(nn.Sequential(nn.Flatten(0), nn.Linear(3, 2)))
    lin = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"appears twice.*shared weights"):
        chain(nn.Sequential(lin, nn.Tanh(), lin))
    with pytest.raises(ValueError, match=r"\(batch, features\).*nn.Flatten\(\)"):
        curvlab.curvature(nn.Sequential(nn.Linear(3, 2)), torch.randn(4, 2, 3), torch.zeros(4, dtype=torch.long))
    # eval mode makes Dropout the identity; p = 0 is the identity in either mode
    assert chain(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2), nn.Linear(3, 2)).eval()).depth == 2
    assert chain(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.0), nn.Linear(3, 2))).depth == 2


def test_composed_activations_follow_the_chain_rule() -> None:
    """Tanh → Dropout(eval) → Sigmoid between two Linears is one element-wise map σ(tanh(z))."""
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.5), nn.Sigmoid(), nn.Linear(4, 2)).double().eval()
    (fns,) = chain(net).acts
    z = torch.linspace(-3, 3, 25, dtype=torch.float64)
    d1, d2 = _jvp_derivatives(lambda u: torch.sigmoid(torch.tanh(u)), z)
    torch.testing.assert_close(fns.f(z), torch.sigmoid(torch.tanh(z)), rtol=0, atol=0)
    torch.testing.assert_close(fns.df(z), d1, rtol=0, atol=1e-14)
    torch.testing.assert_close(fns.d2f(z), d2, rtol=0, atol=1e-14)


def test_chain_of_a_sequential() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Sequential(nn.Linear(5, 4, bias=False), nn.Linear(4, 3)),
        nn.Identity(),
    ).double()
    view = chain(net)
    assert view.depth == 3 and view.widths == [6, 5, 4, 3] and view.biases == [True, False, True]
    assert [type(m) for m in view.prep] == [nn.Flatten] and len(view.acts) == 2
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    cache = view.forward_cache(x)
    torch.testing.assert_close(cache.output, net(x), rtol=0, atol=0)
    torch.testing.assert_close(cache.inputs[0], x.flatten(1))
    torch.testing.assert_close(cache.inputs[1], torch.relu(cache.preacts[0]))
    torch.testing.assert_close(cache.inputs[2], cache.preacts[1])  # Linear → Linear: the identity
    z = cache.preacts[1]
    assert (view.acts[1].df(z) == 1).all() and (view.acts[1].d2f(z) == 0).all()


def test_an_mlp_is_its_own_chain_and_builds_a_sequential() -> None:
    torch.manual_seed(0)
    mlp = curvlab.MLP([6, 5, 3], "tanh", bias=False).double()
    view = chain(mlp)
    assert view.mlp is mlp and view.layers == tuple(mlp.layers) and view.biases == [False, False]
    seq = mlp.as_sequential()
    assert [type(m) for m in seq] == [nn.Flatten, nn.Linear, nn.Tanh, nn.Linear]
    assert {id(p) for p in seq.parameters()} == {id(p) for p in mlp.parameters()}  # shared
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(seq(x), mlp(x), rtol=0, atol=0)


def test_sequential_builder() -> None:
    torch.manual_seed(0)
    net = curvlab.sequential(6, [5, "GELU", 4, "leaky_relu", "4", 3], bias=True, init="xavier")
    assert [type(m) for m in net] == [nn.Linear, nn.GELU, nn.Linear, nn.LeakyReLU, nn.Linear, nn.Linear]
    assert chain(net).widths == [6, 5, 4, 4, 3]
    assert all(bool((m.bias == 0).all()) for m in net if isinstance(m, nn.Linear))  # Xavier: zero biases
    lean = curvlab.sequential(6, ["flatten", 3], bias=False, init="uniform", init_scale=0.1)
    assert lean[1].bias is None and bool((lean[1].weight.abs() <= 0.1).all())


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ("64,tanh,10", r"net.layers must be a list such as \[64, tanh, 32, relu, 10\]"),
        ([64, "swish", 10], r"net.layers\[1\]: unknown entry 'swish'; use a positive int .* one of sigmoid, tanh"),
        ([64, 0, 10], r"net.layers\[1\]: a Linear width must be >= 1, got 0"),
        ([64, True], r"net.layers\[1\]: True is neither a width nor a module name"),
        (["tanh", "flatten"], r"net.layers has no Linear width"),
        ([64, "tanh", 10, "sigmoid"], r"net.layers must end with a Linear width \(the losses take the logits\)"),
    ],
)
def test_parse_layers_names_the_field_and_the_fix(layers: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_layers(layers)  # type: ignore[arg-type]


def test_every_layer_name_has_a_rule() -> None:
    for name, cls in LAYER_NAMES.items():
        assert (cls in ELEMENTWISE) == (name in ELEMENTWISE_NAMES), name
        chain(nn.Sequential(nn.Linear(2, 2), cls(), nn.Linear(2, 2)))  # supported


def test_parse_layers_normalises() -> None:
    assert parse_layers(["Flatten", "64", " ReLU ", 10, "identity"]) == ["flatten", 64, "relu", 10, "identity"]
