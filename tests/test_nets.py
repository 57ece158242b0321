"""MLP: activations and their derivatives, initialisations, forward passes, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ACTIVATIONS

from curvlab.nets import ACTIVATIONS as FNS
from curvlab.nets import MLP, Activation

TORCH_FNS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_derivatives_match_autograd(name: str) -> None:
    fns = FNS[Activation(name)]
    z = torch.linspace(-4, 4, 81, dtype=torch.float64)
    z = z[z != 0]  # ReLU is not differentiable at 0
    f = TORCH_FNS[name]
    d1 = torch.func.vmap(torch.func.grad(f))(z)
    d2 = torch.func.vmap(torch.func.grad(torch.func.grad(f)))(z)
    torch.testing.assert_close(fns.f(z), f(z))
    torch.testing.assert_close(fns.df(z), d1, rtol=0, atol=1e-14)
    torch.testing.assert_close(fns.d2f(z), d2, rtol=0, atol=1e-14)


def test_relu_derivative_at_zero_is_zero() -> None:
    z = torch.zeros(3)
    assert (FNS[Activation.RELU].df(z) == 0).all() and (FNS[Activation.RELU].d2f(z) == 0).all()


def test_forward_and_cache_agree() -> None:
    torch.manual_seed(0)
    net = MLP([6, 5, 4, 3], "tanh").double()
    x = torch.randn(7, 2, 3, dtype=torch.float64)  # images are flattened
    cache = net.forward_cache(x)
    torch.testing.assert_close(cache.output, net(x))
    assert [h.shape[1] for h in cache.inputs] == [6, 5, 4]
    assert [z.shape[1] for z in cache.preacts] == [5, 4, 3]
    for t, layer in enumerate(net.layers):
        torch.testing.assert_close(cache.preacts[t], layer(cache.inputs[t]))
        if t + 1 < net.depth:
            torch.testing.assert_close(cache.inputs[t + 1], torch.tanh(cache.preacts[t]))
    torch.testing.assert_close(cache.output, cache.preacts[-1])  # the last layer is linear


def test_xavier_init() -> None:
    torch.manual_seed(0)
    net = MLP([300, 200, 10], "sigmoid", init="xavier")
    for layer in net.layers:
        n_out, n_in = layer.weight.shape
        bound = math.sqrt(6 / (n_in + n_out))
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.9 * bound  # uniform over the whole range
        assert (layer.bias == 0).all()


@pytest.mark.parametrize("scale", [0.2, 0.1])
def test_uniform_init_without_bias(scale: float) -> None:
    torch.manual_seed(0)
    net = MLP([50, 40, 10], "tanh", init="uniform", init_scale=scale, bias=False)
    assert not net.has_bias
    assert all(layer.bias is None for layer in net.layers)
    assert len(list(net.parameters())) == 2
    for layer in net.layers:
        assert layer.weight.abs().max() <= scale
        assert layer.weight.abs().max() > 0.9 * scale
        assert abs(layer.weight.mean().item()) < 0.1 * scale


def test_default_init_is_pytorch_default() -> None:
    torch.manual_seed(0)
    net = MLP([30, 20], "relu")
    torch.manual_seed(0)
    ref = torch.nn.Linear(30, 20)
    torch.testing.assert_close(net.layers[0].weight, ref.weight)
    torch.testing.assert_close(net.layers[0].bias, ref.bias)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"widths": [3, 2], "activation": "gelu"}, "unknown activation 'gelu'; allowed: sigmoid, tanh, relu"),
        ({"widths": [3, 2], "init": "he"}, "unknown init 'he'"),
        ({"widths": [3]}, "at least two"),
        ({"widths": [3, 0, 2]}, "positive"),
        ({"widths": [3, 2], "init": "uniform", "init_scale": 0.0}, "init_scale"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


def test_wrong_input_width_raises() -> None:
    with pytest.raises(ValueError, match="input has 4 features but the net expects 3"):
        MLP([3, 2])(torch.randn(5, 4))


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_fused_activation_derivatives_match_the_separate_ones(name: str) -> None:
    fns = FNS[Activation(name)]
    assert fns.both is not None
    z = torch.linspace(-9, 9, 301, dtype=torch.float64)
    d1, d2 = fns.derivatives(z)
    torch.testing.assert_close(d1, fns.df(z), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(d2, fns.d2f(z), rtol=1e-12, atol=1e-15)
    # and both against autograd
    g1 = torch.func.vmap(torch.func.grad(lambda u: fns.f(u)))(z)
    g2 = torch.func.vmap(torch.func.grad(torch.func.grad(lambda u: fns.f(u))))(z)
    torch.testing.assert_close(d1, g1, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(d2, g2, rtol=1e-12, atol=1e-15)
