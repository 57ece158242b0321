"""Hessian-vector products of the batch-mean loss, and slow dense references.

Two ways to get ``H v`` for the full Hessian of ``f(θ) = mean_i ξ(net(x_i; θ) | y_i)``:
double backward (Pearlmutter's R-operator through autograd: differentiate ``∇f · v``) and
forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``), which also returns ``∇f``
in the same pass. Both cost a constant number of passes, i.e. time linear in depth.

The dense matrices (:func:`dense_hessian`, :func:`dense_gauss_newton`) cost one HVP per
parameter; they are the obviously correct float64 references used by tests and benchmarks.
Vectors are either flat (``parameters_to_vector`` order) or lists shaped like
``net.parameters()``; :func:`flatten` and :func:`unflatten` convert.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, jvp, vjp

from curvlab.losses import Loss, make_loss

__all__ = [
    "flatten",
    "unflatten",
    "loss_function",
    "hvp",
    "grad_and_hvp",
    "directional_derivatives",
    "gnvp",
    "dense_hessian",
    "dense_gauss_newton",
]


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one vector, in ``parameters_to_vector`` order."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: Tensor, net: nn.Module) -> list[Tensor]:
    """Split a flat vector into tensors shaped like ``net.parameters()``."""
    n_params = sum(p.numel() for p in net.parameters())
    if vec.dim() != 1 or vec.numel() != n_params:
        raise ValueError(
            f"vec must be a flat vector of length {n_params} (the number of parameters, "
            f"parameters_to_vector order), got shape {tuple(vec.shape)}"
        )
    out, start = [], 0
    for p in net.parameters():
        out.append(vec[start : start + p.numel()].view_as(p))
        start += p.numel()
    return out


def _as_list(vec: Tensor | Sequence[Tensor], net: nn.Module) -> list[Tensor]:
    if isinstance(vec, Tensor):
        return unflatten(vec, net)
    shapes = [p.shape for p in net.parameters()]
    if len(vec) != len(shapes) or any(v.shape != s for v, s in zip(vec, shapes)):
        raise ValueError(
            f"direction must be a list of tensors shaped like net.parameters() {[tuple(s) for s in shapes]}, "
            f"got {[tuple(v.shape) for v in vec]}"
        )
    return list(vec)


def loss_function(net: nn.Module, x: Tensor, y: Tensor, loss: str | Loss = "cross_entropy") -> Callable[..., Tensor]:
    """``θ ↦ f(θ)``: the batch-mean loss as a function of a tuple of parameter tensors."""
    crit = make_loss(loss)
    names = [n for n, _ in net.named_parameters()]

    def f(*params: Tensor) -> Tensor:
        out = functional_call(net, dict(zip(names, params)), (x,))
        return crit(out, y)

    return f


def hvp(net: nn.Module, x: Tensor, y: Tensor, vec: Tensor | Sequence[Tensor], loss: str | Loss = "cross_entropy") -> list[Tensor]:
    """``H v`` by double backward: ``∇_θ (∇_θ f · v)`` (Pearlmutter 1994), one forward + two backward passes."""
    v = _as_list(vec, net)
    params = [p.detach().requires_grad_(True) for p in net.parameters()]
    f = loss_function(net, x, y, loss)(*params)
    g = torch.autograd.grad(f, params, create_graph=True)
    gv = sum((gi * vi).sum() for gi, vi in zip(g, v))
    return list(torch.autograd.grad(gv, params))


def grad_and_hvp(
    net: nn.Module, x: Tensor, y: Tensor, vec: Tensor | Sequence[Tensor], loss: str | Loss = "cross_entropy"
) -> tuple[list[Tensor], list[Tensor]]:
    """``(∇f, H v)`` in one forward-over-reverse pass: ``torch.func.jvp`` of ``torch.func.grad``."""
    v = tuple(_as_list(vec, net))
    params = tuple(p.detach() for p in net.parameters())
    f = loss_function(net, x, y, loss)
    g, hv = jvp(grad(f, argnums=tuple(range(len(params)))), params, v)
    return list(g), list(hv)


def directional_derivatives(
    net: nn.Module, x: Tensor, y: Tensor, vec: Tensor | Sequence[Tensor], loss: str | Loss = "cross_entropy"
) -> tuple[Tensor, Tensor, Tensor]:
    """``(f, vᵀ∇f, vᵀHv)`` by forward-over-forward AD: φ(t) = f(θ + t v), (φ(0), φ'(0), φ''(0)).

    Two nested ``torch.func.jvp`` calls push a second-order dual number through one forward
    pass: no backward pass and no parameter-sized outputs, so this is the cheapest way to the
    two scalars of Bakker et al.'s Eq. (9).
    """
    v = tuple(_as_list(vec, net))
    params = tuple(p.detach() for p in net.parameters())
    f = loss_function(net, x, y, loss)

    def first(*ps: Tensor) -> tuple[Tensor, Tensor]:
        return jvp(f, ps, v)  # (f, vᵀ∇f) at ps

    (f0, d1), (_, d2) = jvp(first, params, v)
    return f0, d1, d2


def gnvp(net: nn.Module, x: Tensor, y: Tensor, vec: Tensor | Sequence[Tensor], loss: str | Loss = "cross_entropy") -> list[Tensor]:
    """Gauss-Newton-vector product ``Jᵀ (∇²_out f) J v``: one jvp, the output Hessians, one vjp."""
    crit = make_loss(loss)
    v = tuple(_as_list(vec, net))
    params = tuple(p.detach() for p in net.parameters())
    names = [n for n, _ in net.named_parameters()]

    def out_fn(*ps: Tensor) -> Tensor:
        return functional_call(net, dict(zip(names, ps)), (x,))

    out, jv = jvp(out_fn, params, v)  # (B, C), (B, C)
    h_out = crit.hessian(out.detach(), y) / out.shape[0]  # (B, C, C): Hessian of the batch mean
    _, pullback = vjp(out_fn, *params)
    return list(pullback(torch.einsum("bij,bj->bi", h_out, jv)))


def dense_hessian(net: nn.Module, x: Tensor, y: Tensor, loss: str | Loss = "cross_entropy") -> Tensor:
    """The full Hessian ``∇²_θ f`` (P, P), parameters in ``parameters_to_vector`` order (slow reference)."""
    params = [p.detach() for p in net.parameters()]
    f = loss_function(net, x, y, loss)

    def f_flat(theta: Tensor) -> Tensor:
        return f(*unflatten(theta, net))

    return torch.func.hessian(f_flat)(flatten(params))


def dense_gauss_newton(net: nn.Module, x: Tensor, y: Tensor, loss: str | Loss = "cross_entropy") -> Tensor:
    """The full Gauss-Newton matrix ``Σ_i J_iᵀ (∇²ξ_i / B) J_i`` (P, P) (slow reference)."""
    crit = make_loss(loss)
    params = [p.detach() for p in net.parameters()]
    names = [n for n, _ in net.named_parameters()]

    def out_flat(theta: Tensor) -> Tensor:
        return functional_call(net, dict(zip(names, unflatten(theta, net))), (x,))

    theta = flatten(params)
    out = out_flat(theta)  # (B, C)
    jac = jacrev(out_flat)(theta)  # (B, C, P)
    h_out = crit.hessian(out, y) / out.shape[0]  # (B, C, C)
    return torch.einsum("bcp,bcd,bdq->pq", jac, h_out, jac)
