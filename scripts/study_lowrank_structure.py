#!/usr/bin/env python
"""Bakker et al. Section 2 (Eqs. 1–7): the low-rank structure of per-sample derivatives, measured.

On their MNIST net (``configs/net/lowrank.yaml``: 12 hidden ReLU layers of 128, no biases,
U(±0.2)) and real MNIST images, in float64, this study measures four claims:

(a) ``grad_rank1`` — each per-sample weight gradient is an outer product (Eqs. 1–2):
    σ₂/σ₁ of the per-sample layer gradient from ``torch.func`` (vmap of grad), and the
    relative error of the factored form ∂f/∂z_t ⊗ h_{t−1}.
(b) ``hess_block`` — per-sample Hessian blocks have the tensor-product structure of Eqs. 3–7:
    a diagonal block is (J_tᵀ ∇²_p f J_t) ⊗ (h hᵀ) (Eq. 5, r = k; Eq. 3 for the output layer),
    an off-diagonal block is the sum of two tensor products (Eq. 5, r < k; Eqs. 4, 6–7 for the
    output layer), where J_t = ∂p/∂z_t = U η^{(n,t)} and η^{(r,k)} = ∂v^{(r)}/∂z^{(k)}. The
    reference is ``torch.func.hessian`` of one sample's loss. A full 128×128 layer block has
    16384² entries (2.1 GB in float64), so the check runs on principal sub-blocks: rows and
    columns of each weight matrix restricted to the ``--sub`` most active units (all logits);
    the formula restricts exactly. For diagonal blocks the best Kronecker factorisation
    (Van Loan–Pitsianis) is also fitted without the formula: its relative error, and σ₂/σ₁
    of its second factor (h hᵀ has rank 1).
(c) ``batch_rank`` — batch means are not low-rank: numerical rank (σ_i > rtol·σ₁) and stable
    rank ‖A‖_F²/σ₁² of the batch-mean layer gradient and of the batch-mean Hessian sub-blocks
    (``torch.func``) against the batch size.
(d) ``storage`` — floats of the factored per-sample representation against the gradient's,
    counted from the factor tensors that (b) verifies.

Writes ``study.json`` + ``data.csv`` (tidy; column ``part`` names the claim) into ``--out``.

    python scripts/study_lowrank_structure.py --out results/runs/studies/lowrank_structure
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, grad, hessian, vmap

from curvlab import runfiles as rf
from curvlab.losses import Loss, make_loss
from curvlab.nets import MLP

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-10  # numerical rank: singular values above RTOL·σ₁ (float64 round-off is ~1e-16·σ₁)


# --- data and net ------------------------------------------------------------------------

def compose(overrides: list[str]) -> Any:
    """The validated run config of ``configs/`` with ``overrides`` (as ``curvlab train`` composes it)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from curvlab.cli import CONFIG_DIR
    from curvlab.config import parse_config

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return parse_config(hydra_compose("config", overrides=overrides))


def load_problem(overrides: list[str], n: int, seed: int) -> tuple[Any, MLP, Tensor, Tensor, Loss]:
    """The config, its net (float64, seeded) and ``n`` random training samples of its dataset."""
    from curvlab.data import DatasetError, load_dataset

    cfg = compose(overrides)
    if cfg.net.activation != "relu" or cfg.net.bias:
        raise SystemExit(f"study_lowrank_structure: Eqs. 1–7 are for ReLU nets without biases; got "
                         f"net.activation={cfg.net.activation.value}, net.bias={cfg.net.bias} (use net=lowrank)")
    try:
        data = load_dataset(cfg.dataset)
    except DatasetError as err:
        raise SystemExit(f"study_lowrank_structure: {err} (pass --data-root DIR with MNIST/raw/*-ubyte, "
                         "e.g. --data-root ../shared/data)") from None
    torch.manual_seed(seed)
    net = MLP(cfg.net.widths, cfg.net.activation, cfg.net.init, cfg.net.init_scale, cfg.net.bias).double()
    idx = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(seed))[:n]
    return cfg, net, data.x_train[idx].double(), data.y_train[idx], make_loss(cfg.loss.name)


# --- the factors of Eqs. 1–7 (one sample) ------------------------------------------------

@dataclass
class Factors:
    """One sample's factors (Bakker et al. notation in brackets); layer t maps h[t] to z_t.

    Attributes:
        h: inputs of each linear layer, h[t] (n_{t}) [v^{(t)}; h[0] = x].
        d1: σ'(z_t) of each hidden layer (n_{t+1}) [the diagonal of γ^{(t+1)}].
        jac: J_t = ∂p/∂z_t, (C, n_{t+1}) [U η^{(n,t+1)}; the identity for the output layer].
        eta: eta[(a, b)] = ∂h[a]/∂z_b for a > b, (n_a, n_{b+1}) [η^{(a,b+1)}].
        gp, hp: ∇_p f (C) and ∇²_p f (C, C) at the logits p.
    """

    h: list[Tensor]
    d1: list[Tensor]
    jac: list[Tensor]
    eta: dict[tuple[int, int], Tensor]
    gp: Tensor
    hp: Tensor

    def delta(self, t: int) -> Tensor:
        """∂f/∂z_t = J_tᵀ ∇_p f (n_{t+1}): the left factor of the layer-t gradient (Eq. 2)."""
        return self.jac[t].T @ self.gp


def factors(net: MLP, x: Tensor, y: Tensor, loss: Loss) -> Factors:
    """The factors of one sample ``x`` (n_0,), label ``y`` (), by the recursions of Appendix B.1.

    J_t = J_{t+1} W_{t+1} diag(σ'(z_t)) (Eqs. 20–23, 28) and ∂h[a+1]/∂z_b = diag(σ'(z_a)) W_a ∂h[a]/∂z_b.
    """
    cache = net.forward_cache(x[None])
    k = net.depth
    ws = [layer.weight.detach() for layer in net.layers]
    d1 = [net.fns.df(z[0]) for z in cache.preacts[:-1]]
    out = cache.output
    jac = [torch.eye(out.shape[1], dtype=x.dtype)]
    for t in range(k - 2, -1, -1):
        jac.insert(0, (jac[0] @ ws[t + 1]) * d1[t][None, :])
    eta: dict[tuple[int, int], Tensor] = {}
    for b in range(k - 1):
        m = torch.diag(d1[b])  # ∂h[b+1]/∂z_b
        eta[(b + 1, b)] = m
        for a in range(b + 1, k - 1):
            m = d1[a][:, None] * (ws[a] @ m)
            eta[(a + 1, b)] = m
    return Factors([h[0].detach() for h in cache.inputs], d1, jac, eta,
                   loss.grad(out, y[None])[0].detach(), loss.hessian(out, y[None])[0].detach())


@dataclass(frozen=True)
class Sub:
    """A principal sub-block of W_t: rows ``rows`` (units of z_t) × columns ``cols`` (units of h[t])."""

    t: int
    rows: Tensor
    cols: Tensor

    @property
    def size(self) -> int:
        return len(self.rows) * len(self.cols)


def pick_subs(net: MLP, f: Factors, m: int, layers: list[int]) -> list[Sub]:
    """Per layer, the ``m`` most active units on each side (largest h; all logits when C ≤ m).

    Rows of W_t and columns of W_{t+1} index the same units, so adjacent off-diagonal blocks
    meet the second term of Eq. 5 (∂h[t+1]/∂z_t = diag(σ'(z_t)) is zero off those units).
    """
    units = [torch.argsort(h, descending=True)[:m].sort().values for h in f.h]
    c = net.widths[-1]
    units.append(torch.arange(c) if c <= m else torch.argsort(f.gp.abs(), descending=True)[:m].sort().values)
    return [Sub(t, units[t + 1], units[t]) for t in layers]


def formula_block(f: Factors, a: Sub, b: Sub) -> Tensor:
    """Eq. 5 (Eqs. 3–4 for the output layer) restricted to sub-blocks ``a`` (rows) and ``b`` (columns).

    Diagonal (a.t = b.t): (J_tᵀ ∇²_p f J_t) ⊗ (h hᵀ). Off-diagonal (a.t > b.t):
    H[(i,j),(s,u)] = (J_aᵀ ∇²_p f J_b)[i,s] h_a[j] h_b[u] + δ_a[i] (∂h_a/∂z_b)[j,s] h_b[u].
    """
    if a.t < b.t:
        return formula_block(f, b, a).T
    c = f.jac[a.t][:, a.rows].T @ f.hp @ f.jac[b.t][:, b.rows]  # (|R_a|, |R_b|)
    ha, hb = f.h[a.t][a.cols], f.h[b.t][b.cols]
    gn = torch.einsum("is,j,u->ijsu", c, ha, hb)
    if a.t > b.t:
        m = f.eta[(a.t, b.t)][a.cols][:, b.rows]  # (|S_a|, |R_b|)
        gn = gn + torch.einsum("i,js,u->ijsu", f.delta(a.t)[a.rows], m, hb)
    return gn.reshape(a.size, b.size)


def sub_forward(net: MLP, x: Tensor, subs: list[Sub], q: Tensor) -> Tensor:
    """The logits with W_t ← W_t + E_R Q_t E_Sᵀ for each sub-block (``q`` = the Q_t flattened, concatenated).

    Written as z_t = W_t h + E_R (Q_t h_S) so that forward-mode tangents stay of size n_t, not n_t·n_{t−1}.
    """
    qs = dict(zip((s.t for s in subs), q.split([s.size for s in subs])))
    by_t = {s.t: s for s in subs}
    h = x
    for t, layer in enumerate(net.layers):
        z = h @ layer.weight.detach().T  # (B, n_{t+1})
        if t in qs:
            s = by_t[t]
            e = torch.eye(z.shape[1], dtype=z.dtype)[s.rows]  # (|R|, n_{t+1}) row selection
            z = z + (h[:, s.cols] @ qs[t].reshape(len(s.rows), len(s.cols)).T) @ e
        h = net.fns.f(z) if t < net.depth - 1 else z
    return h


def sub_hessian(net: MLP, x: Tensor, y: Tensor, loss: Loss, subs: list[Sub]) -> Tensor:
    """``torch.func.hessian`` of the summed loss of ``x`` (B, n_0) w.r.t. the sub-blocks, (P, P)."""
    p = sum(s.size for s in subs)

    def f(q: Tensor) -> Tensor:
        return loss.values(sub_forward(net, x, subs, q), y).sum()

    return hessian(f)(torch.zeros(p, dtype=x.dtype))


def block_of(h: Tensor, subs: list[Sub], i: int, j: int) -> Tensor:
    """Block (i, j) of a Hessian over the concatenated sub-blocks ``subs``."""
    off = [0]
    for s in subs:
        off.append(off[-1] + s.size)
    return h[off[i]:off[i + 1], off[j]:off[j + 1]]


# --- measures -------------------------------------------------------------------------------

def rel_err(a: Tensor, ref: Tensor) -> float:
    """‖a − ref‖_F / ‖ref‖_F (NaN when ref is zero)."""
    n = float(torch.linalg.matrix_norm(ref))
    return float(torch.linalg.matrix_norm(a - ref)) / n if n > 0 else float("nan")


def sv_ratio(a: Tensor) -> tuple[float, float]:
    """σ₁ and σ₂/σ₁ of a matrix (σ₂/σ₁ = 0 for a rank-one matrix; NaN for zero)."""
    s = torch.linalg.svdvals(a)
    return float(s[0]), float(s[1] / s[0]) if len(s) > 1 and s[0] > 0 else float("nan")


def ranks(a: Tensor, rtol: float = RTOL) -> tuple[int, float]:
    """Numerical rank (σ_i > rtol·σ₁) and stable rank ‖A‖_F²/σ₁²."""
    s = torch.linalg.svdvals(a)
    if s[0] == 0:
        return 0, 0.0
    return int((s > rtol * s[0]).sum()), float((s**2).sum() / s[0] ** 2)


def kronecker_fit(h: Tensor, n1: int, n2: int) -> tuple[float, float]:
    """Best single Kronecker product X ⊗ Y (X: n1×n1, Y: n2×n2) of ``h`` (Van Loan & Pitsianis):
    its relative Frobenius error, and σ₂/σ₁ of Y (0 when Y has rank one, like h hᵀ)."""
    r = h.reshape(n1, n2, n1, n2).permute(0, 2, 1, 3).reshape(n1 * n1, n2 * n2)  # vec(X) vec(Y)ᵀ when exact
    u, s, vh = torch.linalg.svd(r, full_matrices=False)
    err = float(torch.sqrt((s[1:] ** 2).sum()) / torch.sqrt((s**2).sum()))
    return err, sv_ratio(vh[0].reshape(n2, n2))[1]


def per_sample_grads(net: MLP, x: Tensor, y: Tensor, loss: Loss) -> dict[str, Tensor]:
    """Per-sample weight gradients with ``torch.func`` (vmap of grad): name → (B, n_out, n_in)."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return loss(functional_call(net, p, (xi[None],)), yi[None])

    return vmap(grad(f), in_dims=(None, 0, 0))(params, x, y)


def grad_rank1_rows(net: MLP, x: Tensor, y: Tensor, loss: Loss) -> list[dict[str, Any]]:
    """(a): per sample and layer, σ₂/σ₁ of the autograd gradient and the error of δ_t ⊗ h[t] (Eq. 2)."""
    g = per_sample_grads(net, x, y, loss)
    rows = []
    for i in range(len(y)):
        f = factors(net, x[i], y[i], loss)
        for t in range(net.depth):
            gi = g[f"layers.{t}.weight"][i]
            s1, ratio = sv_ratio(gi)
            rows.append({"part": "grad_rank1", "sample": i, "layer": t + 1, "rows": gi.shape[0], "cols": gi.shape[1],
                         "sigma1": s1, "s2_s1": ratio, "formula_rel_err": rel_err(torch.outer(f.delta(t), f.h[t]), gi)})
    return rows


def hess_block_rows(net: MLP, x: Tensor, y: Tensor, loss: Loss, m: int) -> list[dict[str, Any]]:
    """(b): per sample, every diagonal and off-diagonal sub-block against ``torch.func.hessian``."""
    rows = []
    for i in range(len(y)):
        f = factors(net, x[i], y[i], loss)
        subs = pick_subs(net, f, m, list(range(net.depth)))
        h = sub_hessian(net, x[i:i + 1], y[i:i + 1], loss, subs)
        for a in range(len(subs)):
            for b in range(a + 1):
                ref = block_of(h, subs, a, b)
                row: dict[str, Any] = {"part": "hess_block", "sample": i, "layer": a + 1, "layer_b": b + 1,
                                       "block": "diag" if a == b else "offdiag", "rows": ref.shape[0],
                                       "cols": ref.shape[1], "h_norm": float(torch.linalg.matrix_norm(ref)),
                                       "formula_rel_err": rel_err(formula_block(f, subs[a], subs[b]), ref)}
                if a == b:
                    row["kron_rel_err"], row["factor2_s2_s1"] = kronecker_fit(ref, len(subs[a].rows), len(subs[a].cols))
                    row["num_rank"], row["stable_rank"] = ranks(ref)
                else:  # ‖Eq. 5's second (∂f/∂p) term‖ / ‖block‖
                    gn_only = formula_block(_without_eta(f), subs[a], subs[b])
                    row["term2_share"] = rel_err(gn_only, ref)
                rows.append(row)
    return rows


def _without_eta(f: Factors) -> Factors:
    """The same factors with ∇_p f = 0: only the Gauss-Newton term of Eq. 5 remains."""
    return Factors(f.h, f.d1, f.jac, f.eta, torch.zeros_like(f.gp), f.hp)


def batch_rank_rows(net: MLP, x: Tensor, y: Tensor, loss: Loss, m: int, batches: list[int],
                    hess_batches: list[int], hess_layers: list[int], chunk: int = 32) -> list[dict[str, Any]]:
    """(c): ranks of batch means against batch size B (the first B samples, nested)."""
    rows: list[dict[str, Any]] = []
    gsum = {t: torch.zeros_like(layer.weight, dtype=x.dtype) for t, layer in enumerate(net.layers)}
    done = 0
    for b in batches:  # the batch-mean gradient of every layer (autograd per-sample gradients, summed)
        for lo in range(done, b, chunk):
            g = per_sample_grads(net, x[lo:min(b, lo + chunk)], y[lo:min(b, lo + chunk)], loss)
            for t in gsum:
                gsum[t] += g[f"layers.{t}.weight"].sum(0)
        done = b
        for t, s in gsum.items():
            r, sr = ranks(s / b)
            # rank ≤ B (a sum of B outer products); the output layer's rows sum to zero (Σ_c ∂f/∂p_c = 0).
            bound = min(b, s.shape[0] - (t == net.depth - 1), s.shape[1])
            rows.append({"part": "batch_rank", "quantity": "gradient", "layer": t + 1, "batch": b,
                         "rows": s.shape[0], "cols": s.shape[1], "num_rank": r, "stable_rank": sr, "max_rank": bound})
    subs = pick_subs(net, factors(net, x[0], y[0], loss), m, hess_layers)  # fixed units: those of sample 0
    hsum, done = None, 0
    c = net.widths[-1]
    for b in hess_batches:  # the batch-mean Hessian sub-blocks (torch.func.hessian of the summed loss)
        for lo in range(done, b, chunk):
            part = sub_hessian(net, x[lo:min(b, lo + chunk)], y[lo:min(b, lo + chunk)], loss, subs)
            hsum = part if hsum is None else hsum + part
        done = b
        for j, s in enumerate(subs):
            blk = block_of(hsum, subs, j, j) / b
            r, sr = ranks(blk)
            # One sample's block has rank ≤ rank(J_Rᵀ ∇²_p f J_R) · rank(h hᵀ) ≤ min(C − 1, |R|); at the output
            # layer every sample's ∇²_p f has the ones vector in its kernel, so the sum's rank is ≤ (C − 1)·|S|.
            per_sample = min(c - 1, len(s.rows))
            cap = (c - 1) * len(s.cols) if s.t == net.depth - 1 else blk.shape[0]
            rows.append({"part": "batch_rank", "quantity": "hessian_subblock", "layer": s.t + 1, "batch": b,
                         "rows": blk.shape[0], "cols": blk.shape[1], "num_rank": r, "stable_rank": sr,
                         "max_rank": min(b * per_sample, cap)})
    return rows


def storage_rows(net: MLP, x: Tensor, y: Tensor, loss: Loss) -> list[dict[str, Any]]:
    """(d): floats per sample of each representation, counted from the factor tensors, over the gradient's."""
    f = factors(net, x[0], y[0], loss)
    k = net.depth
    p = sum(layer.weight.numel() for layer in net.layers)
    numel = lambda ts: sum(int(t.numel()) for t in ts)  # noqa: E731
    out_side = f.gp.numel() + f.hp.numel()
    reps = {
        "gradient (dense)": p,
        "gradient, factored (Eqs. 1-2: dL/dz_t and h_t per layer)": numel([f.delta(t) for t in range(k)]) + numel(f.h),
        "Hessian (dense)": p * p,
        "Hessian diagonal blocks (dense)": sum(layer.weight.numel() ** 2 for layer in net.layers),
        "Hessian, factored as stored by Bakker (d2f/dp2, df/dp, v^(k), eta^(n,k))":
            out_side + numel(f.h) + numel([f.eta[(k - 1, b)] for b in range(k - 1)]),
        "Hessian, factored with all eta^(r,k) stored": out_side + numel(f.h) + numel(f.eta.values()),
        "Hessian, factored with J_t = U eta^(n,t) (ours)": out_side + numel(f.h) + numel(f.jac),
    }
    return [{"part": "storage", "representation": name, "floats": n, "ratio_to_gradient": n / p} for name, n in reps.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/studies/lowrank_structure")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"),
                   help="folder with MNIST/raw/*-ubyte (default ../shared/data)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override, e.g. --set net.widths=[784,16,16,10]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grad-samples", type=int, default=32, help="(a): samples")
    p.add_argument("--hess-samples", type=int, default=4, help="(b): samples")
    p.add_argument("--sub", type=int, default=16, help="(b), (c): units per side of each Hessian sub-block")
    p.add_argument("--batches", default="1,2,4,8,16,32,64,128,256", help="(c): batch sizes, gradient")
    p.add_argument("--hess-batches", default="1,2,4,8,16,32,64,128", help="(c): batch sizes, Hessian sub-blocks")
    p.add_argument("--quick", action="store_true", help="small sizes (tests, ci)")
    a = p.parse_args(argv)
    quick = {"grad_samples": 4, "hess_samples": 1, "sub": 6, "batches": "1,2,4,8,16", "hess_batches": "1,2,4,8"}
    for key, value in (quick.items() if a.quick else ()):  # --quick sizes what was not given explicitly
        if getattr(a, key) == p.get_default(key):
            setattr(a, key, value)
    batches = [int(b) for b in a.batches.split(",")]
    hess_batches = [int(b) for b in a.hess_batches.split(",")]
    overrides = ["dataset=mnist", "net=lowrank", "loss=cross_entropy", f"dataset.root={a.data_root}", *a.set]
    t0 = time.perf_counter()
    n = max(a.grad_samples, a.hess_samples, *batches, *hess_batches)
    cfg, net, x, y, loss = load_problem(overrides, n, a.seed)
    k = net.depth
    hess_layers = sorted({0, k // 2, k - 1})
    rows = grad_rank1_rows(net, x[:a.grad_samples], y[:a.grad_samples], loss)
    rows += hess_block_rows(net, x[:a.hess_samples], y[:a.hess_samples], loss, a.sub)
    rows += batch_rank_rows(net, x, y, loss, a.sub, batches, hess_batches, hess_layers)
    rows += storage_rows(net, x, y, loss)
    meta = {"study": "lowrank_structure", "name": "lowrank_structure", "paper": "Bakker et al. 2018, Section 2, Eqs. 1-7",
            "widths": net.widths, "activation": "relu", "bias": False, "init": f"uniform ±{cfg.net.init_scale}",
            "dataset": cfg.dataset.name.value, "dtype": "float64", "seed": a.seed,
            "grad_samples": a.grad_samples, "hess_samples": a.hess_samples, "sub": a.sub, "rtol": RTOL,
            "batches": batches, "hess_batches": hess_batches, "hess_layers": [t + 1 for t in hess_layers],
            "note": (f"Hessian blocks are principal sub-blocks of {a.sub} rows x {a.sub} columns of each weight "
                     "matrix (the most active units; all logits), because a full 128x128 layer block has 16384^2 "
                     "entries; the formula of Eq. 5 restricts exactly. Layers are numbered 1..k (k = output layer)."),
            "seconds": round(time.perf_counter() - t0, 2),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"}
    data = rf.write_study(a.out, rows, meta)
    print(f"wrote {data} ({len(rows)} rows) in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
