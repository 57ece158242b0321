#!/usr/bin/env python
"""Appendix (Hessian chain rule) sweep: how fast does H − GN vanish as the inputs shrink?

The appendix (``appendix_hessian_chain_rule.md``) argues that for activations with
f(u) = a·u + O(u³) (tanh), zero biases and inputs of size c, the second-order module term
H₂ = H − GN is negligible next to the Gauss-Newton term H₁, with an error of third order
in the size of the layer inputs. This study scales real inputs (scikit-learn digits,
standardised) by c, and for every layer measures, in float64 with ``torch.func``:

- ``abs_error`` = ‖H_t − GN_t‖_F and ``rel_error`` = ‖H_t − GN_t‖_F / ‖H_t‖_F,

for the exact bias block and the exact weight block of layer t (batch means), where
GN_t = E_i[J_iᵀ ∇²ξ_i J_i] with J_i the Jacobian of the logits w.r.t. the block. The
output layer is linear, so there H = GN exactly; it is left out.

Writes ``study.json`` + ``data.csv`` (tidy: seed, block, layer, c, abs_error, rel_error,
h_norm) into ``--out``; ``curvlab report`` fits the log-log slopes and draws the figure.

    python scripts/study_appendix_chain_rule.py --out runs/studies/appendix_chain_rule
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, hessian, jacrev

from curvlab import runfiles as rf
from curvlab.losses import make_loss
from curvlab.nets import MLP
from curvlab.registry import LOSSES


def digits_batch(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` standardised scikit-learn digits (real data that ships with scikit-learn)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    idx = np.random.default_rng(seed).choice(len(x), n, replace=False)
    return torch.tensor(x[idx], dtype=torch.float64), torch.tensor(y[idx], dtype=torch.long)


def block_errors(net: MLP, x: Tensor, y: Tensor, loss_name: str) -> list[dict[str, float]]:
    """Per layer (output layer excluded) and block: ‖H − GN‖_F and ‖H‖_F, float64 torch.func."""
    loss = make_loss(loss_name)
    params = {k: v.detach() for k, v in net.named_parameters()}
    rows = []
    for t in range(net.depth - 1):
        for block in ("bias", "weight"):
            key = f"layers.{t}.{block}"
            shape = params[key].shape

            def logits(p: Tensor) -> Tensor:  # (B, C) as a function of the flattened block
                return functional_call(net, {**params, key: p.reshape(shape)}, (x,))

            def mean_loss(p: Tensor) -> Tensor:
                return loss.values(logits(p), y).mean()

            p0 = params[key].reshape(-1)
            h = hessian(mean_loss)(p0)  # (P, P) exact block
            jac = jacrev(logits)(p0)  # (B, C, P)
            out = logits(p0)
            hl = loss.hessian(out, y)  # (B, C, C) per-sample Hessian w.r.t. the logits
            gn = torch.einsum("bcp,bcd,bdq->pq", jac, hl, jac) / x.shape[0]  # (P, P)
            diff = torch.linalg.matrix_norm(h - gn).item()
            hn = torch.linalg.matrix_norm(h).item()
            rows.append({"block": block, "layer": t + 1, "abs_error": diff, "h_norm": hn,
                         "gn_norm": torch.linalg.matrix_norm(gn).item(), "rel_error": diff / hn})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/studies/appendix_chain_rule")
    p.add_argument("--widths", default="64,16,16,16,10", help="net widths (first must be 64 for digits)")
    p.add_argument("--c", default="1e-3,10", help="c range lo,hi (log-spaced)")
    p.add_argument("--points", type=int, default=13)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--loss", default="cross_entropy", choices=list(LOSSES))
    p.add_argument("--fit-max", type=float, default=0.05, help="fit slopes on c <= this (asymptotic range)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for tests")
    a = p.parse_args(argv)
    widths = [int(w) for w in a.widths.split(",")]
    if a.quick:
        widths, a.points, a.seeds, a.batch = [64, 6, 6, 10], 5, 1, 16
    lo, hi = (float(v) for v in a.c.split(","))
    cs = np.logspace(np.log10(lo), np.log10(hi), a.points)
    t0 = time.perf_counter()
    rows = []
    for seed in range(a.seeds):
        torch.manual_seed(seed)
        # Xavier weights and zero biases: the appendix's "biases are zero" assumption.
        net = MLP(widths, activation="tanh", init="xavier").double()
        x0, y = digits_batch(a.batch, seed)
        for c in cs:
            for r in block_errors(net, float(c) * x0, y, a.loss):
                rows.append({"seed": seed, "c": float(c), **r})
    meta = {"study": "appendix_chain_rule", "name": "appendix_chain_rule",
            "widths": widths, "activation": "tanh", "init": "xavier, zero biases", "loss": a.loss,
            "batch": a.batch, "fit_max": a.fit_max, "seeds": a.seeds, "c": cs.tolist(), "dataset": "sklearn digits (standardised)",
            "seconds": round(time.perf_counter() - t0, 2), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"}
    data = rf.write_study(a.out, rows, meta)
    print(f"wrote {data} ({len(rows)} rows) in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
