#!/usr/bin/env python
"""curvlab's optimizers in your own training loop: your model, your loss, your loop.

Trains a hand-written ``nn.Sequential`` on scikit-learn's 8×8 digits (no download) with a
label-smoothed cross-entropy written as a plain function, through each ``curvlab.optim``
optimizer: EA-CG and KFI given the batch, the exact Newton step given a closure, and the CR
step size around ``torch.optim.SGD``. Prints the loss and test accuracy of each.

    python scripts/example_own_loop.py --epochs 3
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import curvlab.optim


def smooth_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Your own loss: any twice-differentiable batch mean of per-sample terms of the logits."""
    return F.cross_entropy(logits, y, label_smoothing=0.1)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 10)).double()


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "eacg":
        return curvlab.optim.EACG(model, lr=0.5, loss=smooth_ce, curvature="pch1", alpha=0.1)
    if name == "kfi":
        return curvlab.optim.KFI(model, lr=0.5, loss=smooth_ce, curvature="pch2", alpha=0.1)
    if name == "newton":
        return curvlab.optim.Newton(model, lr=1.0, damping=0.1, curvature="gn")  # its loss: the closure's
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return curvlab.optim.CR(sgd, model, loss=smooth_ce, sigma=10.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--train-size", type=int, default=1500, help="training samples (of 1797; the rest test)")
    parser.add_argument("--optimizers", default="eacg,kfi,newton,cr")
    args = parser.parse_args()
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0), torch.tensor(y)  # float64 pixels in [0, 1], int labels
    n = min(args.train_size, 1500)
    x_train, y_train, x_test, y_test = x[:n], y[:n], x[1500:], y[1500:]
    for name in args.optimizers.split(","):
        model = make_model()
        opt = make_optimizer(name, model)
        order = torch.Generator().manual_seed(0)
        for _ in range(args.epochs):
            for idx in torch.randperm(len(y_train), generator=order).split(args.batch_size):
                xb, yb = x_train[idx], y_train[idx]
                if name == "newton":  # torch's closure convention: call the model once, return the loss
                    loss = opt.step(lambda: smooth_ce(model(xb), yb))
                else:
                    loss = opt.step(x=xb, y=yb)
        with torch.no_grad():
            acc = (model(x_test).argmax(-1) == y_test).double().mean().item()
        step = opt.last.step_size if opt.last else float("nan")
        print(f"{name:7s} last batch loss {loss.item():.4f}  test accuracy {acc:.3f}  last step {step:.3g}")


if __name__ == "__main__":
    main()
