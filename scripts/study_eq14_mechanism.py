#!/usr/bin/env python
"""Why EA-CG sits on the Eq. (14) plateau: the curvature along the gradient at initialisation.

EA-CG (Chen et al., Eqs. 9–11) solves ((1 − α) B + α I) d = −g per layer, with B the layer's
batch-mean bias block and, for the weights, B ⊗ E[h] E[h]ᵀ (Eq. 11b). Along the gradient this
damped operator has the Rayleigh quotient (1 − α) r + α with r = gᵀ B g / gᵀ g; where r ≪ α the
direction is d ≈ −g / α and the update lr · d is plain gradient descent at rate lr / α.

This study measures r at θ⁰ of the EA-CG CIFAR-10 net (``experiment=eacg_fig5_7``: the
3072-1024-…-10 sigmoid net, Xavier, loss ``nonconvex`` = Eq. 14, batch 500, α 0.02), on the
first training batch of the campaign's run (same seed, same data loading, same batch order):

- ``scope=batch``: the batch-mean g and blocks B that EA-CG uses, for every ``--kinds`` entry
  (Fisher with the preset's options, PCH-1, PCH-2, GN, exact bias blocks), with B applied as
  EA-CG's block-diagonal operator; and r of the full Hessian (``exact_full``, by
  forward-over-forward AD of f(θ + t g), :func:`curvlab.hvp.directional_derivatives`) and of
  the full Gauss-Newton matrix (``gn_full``, :func:`curvlab.hvp.gnvp`);
- ``scope=sample``: the same for each of the first ``--per-sample`` samples on its own (its
  gradient g_i and its blocks B_i), summarised by median and range;
- ``part``: ``all`` (every layer, weights and biases) or ``output`` (the last layer's bias:
  the output-space curvature along ∇_z ξ, the quantity of the loss's closed form).

For the PSD kinds it also runs the preset's EA-CG solver (``eacg``, lr, α, ε_CG, max|CG|) on
the batch and reports cos(d, −g) and ‖d‖ α / ‖g‖ (1 = exactly gradient descent at rate 1/α).

Writes ``study.json`` + ``data.csv`` into ``--out`` and prints the table.

    OMP_NUM_THREADS=1 python scripts/study_eq14_mechanism.py --out results/probes/eq14_mechanism
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the config composition of reproduce.py

from reproduce import ROOT, data_overrides, expand  # noqa: E402

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from curvlab import curvature, runfiles as rf  # noqa: E402
from curvlab.config import parse_config  # noqa: E402
from curvlab.curvature.blocks import LayerCurvature  # noqa: E402
from curvlab.curvature.options import CurvatureOptions  # noqa: E402
from curvlab.data import load_dataset  # noqa: E402
from curvlab.hvp import directional_derivatives, flatten, gnvp  # noqa: E402
from curvlab.losses import Loss, make_loss  # noqa: E402
from curvlab.solvers import make_solver  # noqa: E402

EXPERIMENT = "eacg_fig5_7"
PSD_FOR_EQ14 = {"fisher", "pch1", "pch2"}  # the kinds EA-CG accepts for a non-convex loss


def quotients(blocks: list[LayerCurvature]) -> dict[str, float]:
    """r = gᵀ A g / gᵀ g for EA-CG's block-diagonal operator A (bias: B; weight: B ⊗ μμᵀ, Eq. 11b).

    vec(G)ᵀ (μμᵀ ⊗ B) vec(G) = (G μ)ᵀ B (G μ), so the weight part needs one matrix-vector product.
    """
    num = den = 0.0
    for blk in blocks:
        gb, gw, b = blk.grad_bias.double(), blk.grad_weight.double(), blk.bias.double()
        gm = gw @ blk.input_mean.double()  # (n_out,) G μ
        num += float(gb @ b @ gb + gm @ b @ gm)
        den += float(gb @ gb + (gw * gw).sum())
    last = blocks[-1]
    gb, b = last.grad_bias.double(), last.bias.double()
    return {"all": num / den, "output": float(gb @ b @ gb / (gb @ gb))}


def batch_gradient(net: torch.nn.Module, x: Tensor, y: Tensor, loss: Loss) -> Tensor:
    """The flat batch-mean gradient (P,), float64."""
    return flatten(torch.autograd.grad(loss(net(x), y), list(net.parameters()))).detach().double()


def full_quotients(net: torch.nn.Module, x: Tensor, y: Tensor, loss: Loss) -> dict[str, float]:
    """r of the full Hessian and of the full Gauss-Newton matrix along the batch-mean gradient."""
    g = batch_gradient(net, x, y, loss).to(next(net.parameters()).dtype)  # (P,)
    gg = float(g.double() @ g.double())
    _, _, ghg = directional_derivatives(net, x, y, g, loss)
    ggng = float(flatten(gnvp(net, x, y, g, loss)).double() @ g.double())
    return {"exact_full": float(ghg) / gg, "gn_full": ggng / gg}


def direction_stats(
    net: torch.nn.Module, loss: Loss, cfg: Any, curv: CurvatureOptions, x: Tensor, y: Tensor
) -> dict[str, float]:
    """cos(d, −g) and ‖d‖ α / ‖g‖ of the preset's EA-CG direction with curvature ``curv``."""
    opts = {**dict(cfg.solver.options), "curvature": curv}
    solver = make_solver(cfg.solver.name, net, loss, lr=cfg.solver.lr, **opts)
    dr = solver.direction(x, y)
    d = flatten(dr.d).double()
    g = batch_gradient(net, x, y, loss)
    alpha = float(opts["alpha"])
    return {"cos_d_neg_g": float(-(d @ g) / (d.norm() * g.norm())), "d_alpha_over_g": float(d.norm() * alpha / g.norm()),
            "cg_iters": float(dr.stats.get("cg_iters", float("nan")))}


def parse_kinds(text: str, preset: CurvatureOptions) -> dict[str, CurvatureOptions]:
    """``KIND`` or ``fisher:TYPE`` (mc, empirical, exact) entries → options on top of the preset's."""
    out = {}
    for name in (t.strip() for t in text.split(",") if t.strip()):
        kind, _, fisher = name.partition(":")
        try:
            out[name] = replace(preset, kind=kind, **({"fisher": fisher} if fisher else {}))
        except ValueError as err:
            raise ValueError(f"--kinds: {err}; e.g. --kinds fisher,fisher:exact,pch1,pch2,gn,exact") from err
    if not out:
        raise ValueError("--kinds: no kind given; e.g. --kinds fisher,pch1")
    return out


def first_batch(cfg: Any, batch: int) -> tuple[torch.nn.Module, Tensor, Tensor]:
    """θ⁰ and the first training batch exactly as :class:`curvlab.train._Run` draws them."""
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset)
    net = cfg.net.build()
    perm = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(cfg.seed))
    idx = perm[:batch]
    return net, data.x_train[idx], data.y_train[idx]


def measure(
    net: torch.nn.Module, x: Tensor, y: Tensor, loss: Loss, kinds: dict[str, CurvatureOptions], n_samples: int, seed: int
) -> tuple[list[dict[str, Any]], list[float]]:
    """Rows of r for the batch (scope ``batch``) and its first ``n_samples`` samples alone (``sample``),
    and each such sample's cos(g_i, g) with the batch-mean gradient."""
    g_batch = batch_gradient(net, x, y, loss)
    rows: list[dict[str, Any]] = []
    cosines: list[float] = []
    for scope, idx in (("batch", [slice(None)]), ("sample", [slice(i, i + 1) for i in range(min(n_samples, len(y)))])):
        torch.manual_seed(seed)  # the Fisher's MC labels
        for i, sl in enumerate(idx):
            xs, ys = x[sl], y[sl]
            where = {"scope": scope, "sample": i if scope == "sample" else ""}
            for name, opts in kinds.items():
                for part, r in quotients(curvature(net, xs, ys, loss=loss, options=opts)).items():
                    rows.append({**where, "kind": name, "part": part, "r": r})
            for name, r in full_quotients(net, xs, ys, loss).items():
                rows.append({**where, "kind": name, "part": "all", "r": r})
            if scope == "sample":
                g_i = batch_gradient(net, xs, ys, loss)
                cosines.append(float(g_i @ g_batch / (g_i.norm() * g_batch.norm())))
    return rows, cosines


def summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (kind, part): the batch value and the per-sample median / min / max."""
    out = []
    keys = sorted({(r["kind"], r["part"]) for r in rows}, key=lambda k: (k[1], k[0]))
    for kind, part in keys:
        batch = [r["r"] for r in rows if (r["kind"], r["part"], r["scope"]) == (kind, part, "batch")]
        samp = [r["r"] for r in rows if (r["kind"], r["part"], r["scope"]) == (kind, part, "sample")]
        out.append({"kind": kind, "part": part, "batch": batch[0] if batch else float("nan"),
                    "sample_median": statistics.median(samp) if samp else float("nan"),
                    "sample_min": min(samp) if samp else float("nan"), "sample_max": max(samp) if samp else float("nan")})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/studies/eq14_mechanism")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"),
                   help="folder with cifar10_jpeg.npz (default ../shared/data); 'none' keeps the preset's")
    p.add_argument("--kinds", default="fisher,fisher:exact,pch1,pch2,gn,exact",
                   help="curvature kinds for EA-CG's blocks (fisher: the preset's MC Fisher; fisher:exact its expectation)")
    p.add_argument("--batch", type=int, default=500, help="training batch (the preset's 500)")
    p.add_argument("--per-sample", type=int, default=20, help="samples measured one by one (0: none)")
    p.add_argument("--seed", type=int, default=0, help="the run's seed: θ⁰ and the batch order")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra Hydra override")
    a = p.parse_args(argv)
    if a.batch < 1 or a.per_sample < 0:
        p.error("--batch must be >= 1 and --per-sample >= 0")
    root = None if a.data_root == "none" else Path(a.data_root).resolve()
    base = [*data_overrides("cifar10", root), "device=cpu", *a.set]
    (job,) = expand(EXPERIMENT, base, 0, {"solver": "eacg_lr1", "curvature": "fisher", "seed": str(a.seed)})
    cfg = parse_config(job.cfg)
    try:
        kinds = parse_kinds(a.kinds, cfg.curvature)
    except ValueError as err:
        p.error(str(err))
    t0 = time.perf_counter()
    try:
        net, x, y = first_batch(cfg, a.batch)
    except ValueError as err:  # DatasetError: the file is missing or not as expected
        p.error(str(err))
    loss = make_loss(cfg.loss.name, **cfg.loss.options)
    rows, cosines = measure(net, x, y, loss, kinds, a.per_sample, cfg.seed)
    directions: dict[str, dict[str, float]] = {}
    for name, opts in kinds.items():
        if opts.kind.value in PSD_FOR_EQ14:
            torch.manual_seed(cfg.seed)
            directions[name] = direction_stats(net, loss, cfg, opts, x, y)
    alpha, lr = float(cfg.solver.options["alpha"]), float(cfg.solver.lr)
    table = summary_rows(rows)
    meta = {
        "study": "eq14_mechanism", "name": "eq14_mechanism", "paper": "Chen et al., Eqs. 9-11 and 14",
        "experiment": EXPERIMENT, "seed": a.seed, "batch": len(y), "per_sample": a.per_sample, "kinds": list(kinds),
        "alpha": alpha, "lr": lr, "loss": repr(loss), "curvature_options": str(cfg.curvature),
        "initial_batch_loss": float(loss(net(x), y).detach()),
        "cos_sample_vs_batch_gradient": {"median": statistics.median(cosines), "min": min(cosines), "max": max(cosines)}
        if cosines else None,
        "summary": table, "eacg_direction": directions,
        "note": ("r = g^T B g / g^T g along the gradient; scope batch: batch-mean g and B (what EA-CG uses); "
                 "scope sample: each sample alone; part all: EA-CG's block-diagonal operator over every layer "
                 "(weights B x mu mu^T, Eq. 11b); part output: last layer's bias block; exact_full/gn_full: full matrices"),
        "seconds": round(time.perf_counter() - t0, 2),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    data = rf.write_study(a.out, rows, meta)
    print(f"θ⁰ of {EXPERIMENT} seed {a.seed}: batch {len(y)}, loss {meta['initial_batch_loss']:.4f}, "
          f"α = {alpha:g}, lr = {lr:g} (lr/α = {lr / alpha:g})")
    print(f"{'kind':<11} {'part':<7} {'batch mean':>11} {'sample median':>14} {'sample range':>24}")
    for t in table:
        print(f"{t['kind']:<11} {t['part']:<7} {t['batch']:>11.3e} {t['sample_median']:>14.3e} "
              f"{t['sample_min']:>11.3e} … {t['sample_max']:<10.3e}")
    if cosines:
        print(f"cos(g_i, ḡ) over {len(cosines)} samples: median {statistics.median(cosines):.3f}, "
              f"range {min(cosines):.3f} … {max(cosines):.3f}")
    for kind, s in directions.items():
        print(f"EA-CG · {kind}: cos(d, −g) = {s['cos_d_neg_g']:.4f}, ‖d‖α/‖g‖ = {s['d_alpha_over_g']:.4f}, "
              f"CG iterations {s['cg_iters']:g}")
    print(f"wrote {data} ({len(rows)} rows) in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
