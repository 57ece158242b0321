"""curvlab.optim: the runner's solvers in a user's loop, with the user's model and loss (float64).

Each optimizer is checked against the solver the runner builds from a validated config
(:func:`curvlab.train.build_solver`) on the same batches, and EA-CG also against a whole
``curvlab.train.train`` run; the user's own loss function (torch.func Hessians), the closure
form (autograd Hessians on the logits) and the closed-form losses must give the same iterates.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import curvlab.optim as co
from curvlab import runfiles as rf
from curvlab.config import parse_config
from curvlab.losses import make_loss
from curvlab.nets import make_net
from curvlab.train import build_solver, lr_at, train

ROOT = Path(__file__).resolve().parents[1]
DT = torch.float64


def user_net(seed: int = 0) -> nn.Sequential:
    """The user's own model: a hand-written nn.Sequential with GELU and a bias-free last layer."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3, bias=False)).to(DT)


def batches(n: int = 3, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(size, 6, generator=gen, dtype=DT), torch.randint(0, 3, (size,), generator=gen)) for _ in range(n)
    ]


def one_hot(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C) one-hot rows, vmappable (F.one_hot is not)."""
    return torch.eye(logits.shape[-1], dtype=logits.dtype, device=logits.device)[y]


def my_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The user's cross-entropy, written out (not curvlab's closed form)."""
    return -(logits.log_softmax(-1) * one_hot(logits, y)).sum(-1).mean()


def my_eq14(logits: torch.Tensor, y: torch.Tensor, delta: float = 5.0, eps: float = 0.2) -> torch.Tensor:
    """EA-CG Eq. (14) written by the user: mean of 1 / (1 + exp(δ (ŷ_y − ε)))."""
    s = (logits.softmax(-1) * one_hot(logits, y)).sum(-1)
    return torch.sigmoid(-delta * (s - eps)).mean()


def params(net: nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(net.parameters()).detach()


def run_config(solver: dict[str, Any], curvature: str = "pch1", loss: str = "cross_entropy") -> Any:
    """A validated run config (the runner's own checks) for ``solver``; the net is not used here."""
    return parse_config({
        "dtype": "float64", "device": "cpu", "loss": {"name": loss},
        "net": {"widths": [64, 8, 10]}, "solver": solver, "curvature": {"kind": curvature},
    })


# (runner solver config, curvature, optimizer factory taking (model, loss)) per optimizer.
CASES: dict[str, tuple[dict[str, Any], str, Callable[..., torch.optim.Optimizer]]] = {
    "eacg": ({"name": "eacg", "lr": 0.2, "alpha": 0.1, "max_cg": 7, "eps_cg": 0.01}, "pch2",
             lambda m, loss: co.EACG(m, lr=0.2, loss=loss, curvature="pch2", alpha=0.1, max_cg=7, eps_cg=0.01)),
    "kfi": ({"name": "kfi", "lr": 0.3, "alpha": 0.05}, "pch1",
            lambda m, loss: co.KFI(m, lr=0.3, loss=loss, curvature="pch1", alpha=0.05)),
    "newton": ({"name": "exact_inverse", "lr": 0.5, "damping": 0.5}, "exact",
               lambda m, loss: co.Newton(m, lr=0.5, loss=loss, damping=0.5, curvature="exact")),
    "cr": ({"name": "cr", "lr": 0.05, "base": "sgd", "sigma": 50.0, "base_options": {"momentum": 0.9}}, "pch1",
           lambda m, loss: co.CR(torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), m, loss=loss, sigma=50.0)),
    "cr_eacg": ({"name": "cr", "lr": 0.2, "base": "eacg", "sigma": 20.0, "base_options": {"alpha": 0.1}}, "pch2",
                lambda m, loss: co.CR(co.EACG(m, 0.2, loss, "pch2", alpha=0.1), m, loss=loss, sigma=20.0)),
}


def runner_iterates(name: str, loss_name: str = "cross_entropy", steps: int = 3) -> torch.Tensor:
    solver_cfg, kind, _ = CASES[name]
    cfg = run_config(solver_cfg, kind, loss_name)
    net = user_net()
    solver = build_solver(cfg, net, make_loss(cfg.loss.name, **cfg.loss.options))
    for step, (x, y) in enumerate(batches(steps)):
        solver.lr = lr_at(cfg, step)
        solver.step(x, y)
    return params(net)


def optim_iterates(name: str, loss: Any, closure: bool = False, steps: int = 3) -> torch.Tensor:
    net = user_net()
    opt = CASES[name][2](net, loss)
    for x, y in batches(steps):
        if closure:  # the user's closure: any loss of the model's output
            opt.step(lambda: loss(net(x), y))
        else:
            opt.step(x=x, y=y)
    return params(net)


@pytest.mark.parametrize("name", CASES)
def test_same_iterates_as_the_runner(name: str) -> None:
    expected = runner_iterates(name)
    assert not torch.equal(expected, params(user_net()))  # the steps moved the parameters
    torch.testing.assert_close(optim_iterates(name, "cross_entropy"), expected, rtol=0, atol=0)  # one implementation
    # The user's own loss function (torch.func Hessians) and the closure form (autograd on the logits).
    torch.testing.assert_close(optim_iterates(name, my_cross_entropy), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(optim_iterates(name, my_cross_entropy, closure=True), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["eacg", "newton"])
def test_user_eq14_matches_the_runners_nonconvex_loss(name: str) -> None:
    expected = runner_iterates(name, "nonconvex")
    torch.testing.assert_close(optim_iterates(name, my_eq14), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(optim_iterates(name, my_eq14, closure=True), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_mse_closed_form_equals_function_and_closure(name: str) -> None:
    """Regression targets (B, C): the closed-form MSE, F.mse_loss through torch.func, and a closure."""
    gen = torch.Generator().manual_seed(2)
    targets = [torch.randn(16, 3, generator=gen, dtype=DT) for _ in range(3)]
    results = []
    for mode in ("mse", "function", "closure"):
        net = user_net()
        opt = CASES[name][2](net, "mse" if mode == "mse" else F.mse_loss)
        for (x, _), t in zip(batches(), targets):
            opt.step(lambda: F.mse_loss(net(x), t)) if mode == "closure" else opt.step(x=x, y=t)
        results.append(params(net))
    assert not torch.equal(results[0], params(user_net()))
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=0, atol=1e-12)


def test_eacg_loop_equals_a_curvlab_train_run(tmp_path: Path) -> None:
    """The whole runner (data, init, batch order) against the same settings in a user's loop."""
    from curvlab.data import load_dataset

    cfg = parse_config({
        "dtype": "float64", "device": "cpu", "seed": 3, "run_dir": str(tmp_path),
        "dataset": {"name": "digits", "train_subset": 96, "test_subset": 32},
        "net": {"widths": [64, 10], "layers": [12, "gelu", 10]},
        "solver": {"name": "eacg", "lr": 0.3, "alpha": 0.1}, "curvature": {"kind": "pch2"},
        "train": {"batch_size": 32, "epochs": 2, "max_steps": 5},
        "log": {"hessian_every": 0, "hessian_first": 0, "progress": False},
    })
    train(cfg)
    net_args = (cfg.net.widths, cfg.net.activation, cfg.net.init, cfg.net.init_scale, cfg.net.bias, cfg.net.layers)
    runner = make_net(*net_args)
    runner.to(DT).load_state_dict(rf.load_checkpoint(tmp_path / rf.CHECKPOINT)["net"])

    torch.manual_seed(cfg.seed)  # the runner's order: seed, data, init
    data = load_dataset(cfg.dataset).to(torch.device("cpu"), DT)
    init = make_net(*net_args)
    model = nn.Sequential(nn.Linear(64, 12), nn.GELU(), nn.Linear(12, 10)).to(DT)  # the user's own
    with torch.no_grad():
        for p, q in zip(model.parameters(), init.parameters(), strict=True):
            p.copy_(q)
    opt = co.EACG(model, lr=0.3, loss=my_cross_entropy, curvature="pch2", alpha=0.1)
    order, steps = torch.Generator().manual_seed(cfg.seed), 0
    while steps < 5:
        for idx in torch.randperm(len(data.y_train), generator=order).split(32):
            if steps < 5:
                opt.step(x=data.x_train[idx], y=data.y_train[idx])
                steps += 1
    assert not torch.equal(params(model), params(init))
    torch.testing.assert_close(params(model), params(runner), rtol=0, atol=1e-12)


STATEFUL = {
    "eacg": lambda m: co.EACG(m, lr=0.2, alpha=0.1),
    "kfi": lambda m: co.KFI(m, lr=0.3, alpha=0.05, update_every=2),  # stored factors are state
    "newton": lambda m: co.Newton(m, lr=0.5, damping=0.5, curvature="gn"),
    "cr": lambda m: co.CR(torch.optim.Adam(m.parameters(), lr=0.01), m, sigma=100.0),  # Adam's moments
}


@pytest.mark.parametrize("name", STATEFUL)
def test_state_dict_round_trip(name: str) -> None:
    """3 steps, save, a fresh optimizer loads it, 2 more steps == 5 steps straight (bit for bit)."""
    data = batches(5)
    net = user_net()
    opt = STATEFUL[name](net)
    for x, y in data:
        opt.step(x=x, y=y)
    straight = params(net)

    net = user_net()
    opt = STATEFUL[name](net)
    for x, y in data[:3]:
        opt.step(x=x, y=y)
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = user_net(seed=7)
    resumed.load_state_dict(saved["model"])
    opt = STATEFUL[name](resumed)
    opt.load_state_dict(saved["opt"])
    for x, y in data[3:]:
        opt.step(x=x, y=y)
    assert torch.equal(params(resumed), straight)
    if name == "kfi":  # the factors were stored after step 3 and reused at step 4
        assert opt.last is not None and opt.last.stats["kfi_refreshed"] == 1.0


def test_lr_scheduler_drives_the_step_and_dtype_follows_the_model() -> None:
    net = user_net()
    opt = co.EACG(net, lr=0.4, alpha=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    sizes = []
    for x, y in batches(3):
        loss = opt.step(x=x.float(), y=y)  # float32 inputs: moved to the model's dtype
        assert loss.dtype == DT and loss.ndim == 0
        sizes.append(opt.last.step_size)
        sched.step()
    assert sizes == [0.4, 0.2, 0.1]


def test_cr_wraps_any_model_and_keeps_the_optimizers_group_lrs() -> None:
    """CR on a non-Sequential model (torch.func differentiates it) and two param groups."""

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(x + torch.tanh(self.a(x)))

    torch.manual_seed(0)
    model = Residual().to(DT)
    sgd = torch.optim.SGD([{"params": model.a.parameters(), "lr": 0.1}, {"params": model.b.parameters()}], lr=0.01)
    opt = co.CR(sgd, model, sigma=10.0)
    x, y = batches(1)[0]
    before = [p.detach().clone() for p in model.parameters()]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    opt.step(x=x, y=y)
    alpha = opt.last.step_size
    assert alpha > 0 and opt.last.stats["cr_status"] == 0.0
    # θ ← θ + α d with d = −∇f (plain SGD's update divided by each group's own lr).
    for p, b, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), b - alpha * g, rtol=0, atol=1e-14)
    assert [g["lr"] for g in sgd.param_groups] == [0.1, 0.01]


def test_bad_use_gets_one_clear_message() -> None:
    net = user_net()
    x, y = batches(1)[0]
    opt = co.EACG(net, alpha=0.1)
    with pytest.raises(ValueError, match=r"needs the batch"):
        opt.step()
    with pytest.raises(ValueError, match=r"either a closure or the batch"):
        opt.step(lambda: F.cross_entropy(net(x), y), x=x, y=y)

    def calls_backward() -> torch.Tensor:
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match=r"without calling backward"):
        opt.step(calls_backward)
    with pytest.raises(ValueError, match=r"exactly once.*2 times"):
        opt.step(lambda: F.cross_entropy(net(x), y) + F.cross_entropy(net(x), y))
    with pytest.raises(ValueError, match=r"weight penalty"):
        opt.step(lambda: F.cross_entropy(net(x), y) + 1e-3 * sum((p**2).sum() for p in net.parameters()))
    with pytest.raises(ValueError, match=r"fisher=mc .*fisher='empirical'"):
        co.KFI(net, loss="mse", curvature="fisher")
    with pytest.raises(ValueError, match=r"GN is not PSD for the function loss"):
        co.EACG(net, loss=my_cross_entropy, curvature="gn")
    with pytest.raises(ValueError, match=r"GN is not PSD"):  # a non-convex closure loss, seen at the step
        co.KFI(net, curvature="gn").step(lambda: my_eq14(net(x), y))
    with pytest.raises(ValueError, match=r"cannot be vmapped.*F.one_hot"):
        co.EACG(net, loss=lambda o, t: F.mse_loss(o, F.one_hot(t, 3).to(o.dtype))).step(x=x, y=y)
    with pytest.raises(ValueError, match=r"unknown name 'hinge'; allowed: cross_entropy, nonconvex, mse"):
        co.EACG(net, loss="hinge")
    with pytest.raises(ValueError, match=r"CR wraps a torch.optim.Optimizer"):
        co.CR("sgd", net)  # type: ignore[arg-type]
    assert torch.equal(params(net), params(user_net()))  # nothing above moved the parameters


def test_empirical_fisher_works_with_the_closure_form() -> None:
    net = user_net()
    opt = co.KFI(net, lr=0.3, alpha=0.05, curvature={"kind": "fisher", "fisher": "empirical"})
    ref = user_net()
    ref_opt = co.KFI(ref, lr=0.3, alpha=0.05, curvature={"kind": "fisher", "fisher": "empirical"})
    for x, y in batches():
        opt.step(lambda: F.cross_entropy(net(x), y))
        ref_opt.step(x=x, y=y)
    torch.testing.assert_close(params(net), params(ref), rtol=0, atol=1e-12)


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it in your own training loop", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the README section should hold one python block"
    return blocks[0]


def test_readme_snippet_runs(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    namespace: dict[str, Any] = {}
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    assert re.search(r"loss \d+\.\d+, CG iterations \d+", capsys.readouterr().out)
    assert isinstance(namespace["opt"], co.EACG) and "solver" in namespace["state"]


def test_example_script_runs(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy

    pytest.importorskip("sklearn", reason="the example trains on scikit-learn's digits")
    script = ROOT / "scripts" / "example_own_loop.py"
    monkeypatch.setattr("sys.argv", [str(script), "--epochs", "1", "--train-size", "150"])
    runpy.run_path(str(script), run_name="__main__")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "test accuracy" in ln]
    assert [ln.split()[0] for ln in lines] == ["eacg", "kfi", "newton", "cr"]
    for ln in lines:
        loss = float(ln.split("last batch loss ")[1].split()[0])
        assert 0 < loss < 5  # finite, and not diverged from log(10) ≈ 2.3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", CASES)
def test_device_follows_the_model_on_cuda(name: str) -> None:
    """A CUDA model with CPU float32 batches: the same iterates as on the CPU (up to kernel round-off)."""
    expected = optim_iterates(name, my_cross_entropy)
    for closure in (False, True):
        net = user_net().cuda()
        opt = CASES[name][2](net, my_cross_entropy)
        for x, y in batches():
            if closure:
                opt.step(lambda: my_cross_entropy(net(x.cuda()), y.cuda()))
            else:
                loss = opt.step(x=x.float(), y=y)  # CPU, float32: moved to the model's device and dtype
                assert loss.device.type == "cuda" and loss.dtype == DT
        torch.testing.assert_close(params(net).cpu(), expected, rtol=0, atol=1e-9)
