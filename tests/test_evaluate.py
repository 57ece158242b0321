"""``train.evaluate``: a conv net on the CPU through a channels-last copy, with the plain loop's values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab.losses import make_loss
from curvlab.train import evaluate


def _plain(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """The obvious evaluation: one forward pass of the whole set, as laid out."""
    with torch.no_grad():
        out = net(x)
    return float(make_loss("cross_entropy").values(out, y).sum()) / len(y), int((out.argmax(-1) == y).sum()) / len(y)


def _conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3), nn.Sigmoid(),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_conv_net_evaluates_to_the_plain_values_and_is_left_as_it_is(batch_size: int) -> None:
    net = _conv_net()
    x, y = torch.randn(100, 3, 16, 16), torch.randint(0, 10, (100,))
    before = [(p.detach().clone(), p.stride()) for p in net.parameters()]
    loss, acc = evaluate(net, make_loss("cross_entropy"), x, y, batch_size)
    want_loss, want_acc = _plain(net, x, y)
    assert loss == pytest.approx(want_loss, rel=1e-5) and acc == want_acc
    for p, (value, stride) in zip(net.parameters(), before, strict=True):
        assert torch.equal(p, value) and p.stride() == stride and p.is_contiguous()  # the training net untouched


def test_conv_net_runs_channels_last_and_an_mlp_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy really gets channels-last images (the speed-up); a net without convolutions gets the rows as given."""
    seen: list[bool] = []
    conv2d_forward = nn.Conv2d.forward

    def spy(self: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
        seen.append(h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous())
        return conv2d_forward(self, h)

    monkeypatch.setattr(nn.Conv2d, "forward", spy)
    net, x, y = _conv_net(), torch.randn(20, 3, 16, 16), torch.randint(0, 10, (20,))
    evaluate(net, make_loss("cross_entropy"), x, y, 8)
    assert seen and all(seen)

    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    xs, ys = torch.randn(30, 5), torch.randint(0, 3, (30,))
    loss, acc = evaluate(mlp, make_loss("cross_entropy"), xs, ys, 30)
    assert (loss, acc) == _plain(mlp, xs, ys)  # one chunk, the same operations: bit for bit
