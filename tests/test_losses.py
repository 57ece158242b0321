"""Losses: closed-form per-sample gradients and Hessians against torch.func, in float64."""

from __future__ import annotations

import pytest
import torch

from curvlab.losses import CrossEntropy, NonConvex, make_loss


def _autograd_value(name: str, o: torch.Tensor, c: torch.Tensor, delta: float = 5.0, eps: float = 0.2):
    """Per-sample loss written from the definitions, independent of the package."""
    s = torch.softmax(o, -1).gather(0, c[None])[0]  # ŷ_y (indexing by a tensor breaks vmap)
    if name == "cross_entropy":
        return -torch.log(s)
    return 1 / (1 + torch.exp(delta * (s - eps)))  # EA-CG Eq. (14)


LOSSES = [("cross_entropy", {}), ("nonconvex", {}), ("nonconvex", {"delta": 2.0, "eps": 0.5})]


@pytest.mark.parametrize(("name", "opts"), LOSSES)
def test_values_grad_hessian_match_torch_func(name: str, opts: dict) -> None:
    gen = torch.Generator().manual_seed(0)
    out = 2 * torch.randn(9, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=gen)
    loss = make_loss(name, **opts)

    def f(o: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return _autograd_value(name, o, c, **opts)

    torch.testing.assert_close(loss.values(out, y), torch.func.vmap(f)(out, y))
    torch.testing.assert_close(loss.grad(out, y), torch.func.vmap(torch.func.grad(f))(out, y), rtol=0, atol=1e-13)
    torch.testing.assert_close(
        loss.hessian(out, y), torch.func.vmap(torch.func.hessian(f))(out, y), rtol=0, atol=1e-13
    )
    torch.testing.assert_close(loss(out, y), loss.values(out, y).mean())


def test_cross_entropy_matches_torch() -> None:
    out = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0])
    torch.testing.assert_close(CrossEntropy()(out, y), torch.nn.functional.cross_entropy(out, y))


def test_convexity_flags() -> None:
    assert CrossEntropy().convex and not NonConvex().convex
    # The non-convex criterion has an indefinite output Hessian somewhere.
    out = torch.tensor([[3.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.linalg.eigvalsh(NonConvex().hessian(out, torch.tensor([0])))[0].min() < 0


def test_sample_labels_follow_the_predictive_distribution() -> None:
    out = torch.log(torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64))
    draws = CrossEntropy().sample_labels(out, 20000, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (20000, 1)
    freq = torch.bincount(draws[:, 0], minlength=3).double() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), rtol=0, atol=0.02)


def test_make_loss_errors_and_passthrough() -> None:
    with pytest.raises(ValueError, match="unknown loss 'mse'; allowed: cross_entropy, nonconvex"):
        make_loss("mse")
    with pytest.raises(ValueError, match="delta must be > 0"):
        make_loss("nonconvex", delta=0.0)
    nc = NonConvex(delta=3.0)
    assert make_loss(nc) is nc


def test_mse_matches_torch_and_torch_func() -> None:
    """MSE in closed form: F.mse_loss's value, and torch.func's per-sample gradient and Hessian."""
    from curvlab.losses import MSE

    gen = torch.Generator().manual_seed(3)
    out = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    for y in (torch.randn(7, 4, generator=gen, dtype=torch.float64), torch.randint(0, 4, (7,), generator=gen)):
        target = y if y.is_floating_point() else torch.eye(4, dtype=torch.float64)[y]  # labels: one-hot
        torch.testing.assert_close(MSE()(out, y), torch.nn.functional.mse_loss(out, target))

        def f(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return ((o - t) ** 2).mean()

        grad, hess = torch.func.vmap(torch.func.grad(f)), torch.func.vmap(torch.func.hessian(f))
        torch.testing.assert_close(MSE().grad(out, y), grad(out, target), rtol=0, atol=1e-15)
        torch.testing.assert_close(MSE().hessian(out, y), hess(out, target), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"mse loss: targets must be \(B, C\)"):
        MSE()(out, torch.randn(7, 3, dtype=torch.float64))


@pytest.mark.parametrize("name", ["cross_entropy", "nonconvex"])
def test_function_loss_equals_the_closed_forms(name: str) -> None:
    """A loss given as a batch-mean function, differentiated per sample by torch.func."""
    from curvlab.losses import FunctionLoss

    def batch_mean(o: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # the user's function of a batch
        return torch.func.vmap(lambda oi, ci: _autograd_value(name, oi, ci))(o, c).mean()

    gen = torch.Generator().manual_seed(4)
    out = 2 * torch.randn(9, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=gen)
    own, closed = FunctionLoss(batch_mean), make_loss(name)
    for method in ("values", "grad", "hessian"):
        torch.testing.assert_close(getattr(own, method)(out, y), getattr(closed, method)(out, y), rtol=0, atol=1e-13)
    assert not own.convex and FunctionLoss(torch.nn.CrossEntropyLoss(), convex=True).convex
    module_loss = FunctionLoss(torch.nn.CrossEntropyLoss())  # an nn.Module loss works as well
    torch.testing.assert_close(module_loss.hessian(out, y), CrossEntropy().hessian(out, y), rtol=0, atol=1e-13)


def test_as_loss_resolves_names_losses_and_functions() -> None:
    from curvlab.losses import MSE, FunctionLoss, as_loss

    nc = NonConvex(delta=2.0)
    assert as_loss(nc) is nc and isinstance(as_loss("cross_entropy"), CrossEntropy) and isinstance(as_loss("mse"), MSE)
    assert isinstance(as_loss(torch.nn.functional.cross_entropy), FunctionLoss)
    with pytest.raises(ValueError, match=r"unknown name 'l1'; allowed: cross_entropy, nonconvex, mse, or a function"):
        as_loss("l1")
    with pytest.raises(ValueError, match=r"loss must be a callable"):
        as_loss(3)  # type: ignore[arg-type]
