"""The plain ``train(cfg)``: run files, repeatability, resume, failures, schedules, presets."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from curvlab import runfiles as rf
from curvlab.config import parse_config
from curvlab.solvers import SOLVERS, StepResult
from curvlab.train import TrainingFailed, resolve_device, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["train.epochs=1", "train.batch_size=64", "dataset.train_subset=256", "dataset.test_subset=64", "device=cpu"]
NO_HESSIAN = ["log.hessian_every=0", "log.hessian_first=0"]
TIMES = ["wall_time", "elapsed", "log_time"]  # seconds: differ between identical runs


def config(*overrides: str):
    """The real configs composed with ``overrides``; a later override of a key wins."""
    latest = {o.split("=", 1)[0]: o for o in overrides}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return parse_config(compose(config_name="config", overrides=list(latest.values())))


def metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / rf.METRICS)


def test_run_writes_every_file(tmp_path):
    summary = train(config(*TINY, "solver=sgd", "train.epochs=2", "train.eval_every=3"), tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == 8 and summary["epochs"] == 2
    for name in (rf.CONFIG, rf.METRICS, rf.HESSIAN_ERRORS, rf.SUMMARY, rf.CHECKPOINT):
        assert (tmp_path / name).is_file()
    df = metrics(tmp_path)
    assert list(df.columns[: len(rf.METRIC_COLUMNS)]) == rf.METRIC_COLUMNS
    assert df["step"].tolist() == list(range(9))
    evaluated = df.dropna(subset=["test_loss"])["step"].tolist()
    assert evaluated == [0, 3, 4, 6, 8]  # init, every 3 steps, each epoch end (4, 8)
    assert df["wall_time"].is_monotonic_increasing
    assert rf.read_json(tmp_path / rf.SUMMARY)["test_acc"] == df["test_acc"].iloc[-1]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_same_seed_is_bit_identical_and_seed_matters(tmp_path):
    args = [*TINY, "solver=eacg", "train.max_steps=5", "log.hessian_first=2", "log.hessian_every=0"]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(config(*args, f"seed={seed}"), tmp_path / name)
    a, b, c = (metrics(tmp_path / n).drop(columns=TIMES) for n in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert not a["batch_loss"].equals(c["batch_loss"])
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "a" / rf.HESSIAN_ERRORS), pd.read_csv(tmp_path / "b" / rf.HESSIAN_ERRORS)
    )


@pytest.mark.parametrize("solver", ["eacg", "sgd"])
def test_kill_and_resume_is_bit_identical(tmp_path, solver):
    args = [*TINY, f"solver={solver}", "train.epochs=2", "train.eval_every=2", "train.checkpoint_every=2",
            "log.hessian_every=3", "log.hessian_first=1", "curvature=fisher"]
    train(config(*args), tmp_path / "full")
    # Stop after 3 updates (mid-epoch), then rerun in the same directory: it resumes.
    stopped = train(config(*args, "train.stop_after=3"), tmp_path / "killed")
    assert stopped["status"] == "running" and stopped["steps"] == 3
    assert len(metrics(tmp_path / "killed")) == 4
    cfg, t0 = config(*args), time.perf_counter()
    resumed = train(cfg, tmp_path / "killed")
    session = time.perf_counter() - t0
    assert resumed["status"] == "completed"
    # The clocks go on from the checkpoint: the total adds this session's training (not its start-up) to the first's.
    assert stopped["elapsed"] < resumed["elapsed"] <= stopped["elapsed"] + session
    assert all(metrics(tmp_path / "killed")[c].is_monotonic_increasing for c in TIMES)
    pd.testing.assert_frame_equal(
        metrics(tmp_path / "full").drop(columns=TIMES), metrics(tmp_path / "killed").drop(columns=TIMES)
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "full" / rf.HESSIAN_ERRORS), pd.read_csv(tmp_path / "killed" / rf.HESSIAN_ERRORS)
    )


def test_resume_checks_config_and_flags(tmp_path):
    train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=2"), tmp_path)
    with pytest.raises(ValueError, match="differs in solver.lr"):
        train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=2", "solver.lr=0.5"), tmp_path)
    with pytest.raises(ValueError, match="resume=true but"):
        train(config(*TINY, *NO_HESSIAN, "solver=sgd", "resume=true"), tmp_path / "new")
    fresh = train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=2", "solver.lr=0.5", "resume=false"), tmp_path)
    assert fresh["status"] == "completed" and fresh["steps"] == 2


def test_resume_accepts_a_field_added_later_at_its_default(tmp_path):
    """A run written before a config field existed resumes with newer code while the field keeps its default
    (its checkpoint lacks the key); set to anything else, the field is a change like any other."""
    args = [*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=3", "train.checkpoint_every=1"]
    assert train(config(*args, "train.stop_after=1"), tmp_path)["status"] == "running"
    path = tmp_path / rf.CHECKPOINT
    state = rf.load_checkpoint(path)
    del state["config"]["log"]["hessian_hvp_budget"]  # as written before the field existed
    rf.save_checkpoint(path, state)
    with pytest.raises(ValueError, match="differs in log.hessian_hvp_budget"):
        train(config(*args, "log.hessian_hvp_budget=7"), tmp_path)
    assert train(config(*args), tmp_path)["status"] == "completed"


def _nan_after(n: int) -> type:
    """SGD whose update ``n + 1`` reports a NaN loss (a subclass: configs check the solver's options)."""
    cls = SOLVERS["sgd"]

    class NaNAfter(cls):  # type: ignore[misc, valid-type]
        calls = 0

        def step(self, x, y):
            NaNAfter.calls += 1
            res = super().step(x, y)
            return StepResult(math.nan, res.step_size) if NaNAfter.calls == n + 1 else res

    return NaNAfter


def test_nan_fails_with_summary_and_keeps_rows(tmp_path, monkeypatch):
    monkeypatch.setitem(SOLVERS, "sgd", _nan_after(3))
    with pytest.raises(TrainingFailed, match="loss is nan at step 4"):
        train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.checkpoint_every=1"), tmp_path)
    summary = rf.read_json(tmp_path / rf.SUMMARY)
    assert summary["status"] == "failed" and "nan" in summary["failure"] and summary["steps"] == 3
    assert metrics(tmp_path)["step"].tolist() == [0, 1, 2, 3]


def test_singular_solver_step_fails_with_a_fix_and_keeps_rows(tmp_path, monkeypatch):
    """A linear-algebra breakdown inside a solver marks the run failed and names the fix."""
    cls = SOLVERS["sgd"]

    class Singular(cls):  # type: ignore[misc, valid-type]
        calls = 0

        def step(self, x, y):
            Singular.calls += 1
            if Singular.calls == 3:
                torch.linalg.cholesky(-torch.eye(2))  # raises torch.linalg.LinAlgError
            return super().step(x, y)

    monkeypatch.setitem(SOLVERS, "sgd", Singular)
    with pytest.raises(TrainingFailed, match="not positive definite; train in float64 .* or lower solver.lr$"):
        train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.checkpoint_every=1"), tmp_path)
    summary = rf.read_json(tmp_path / rf.SUMMARY)
    assert summary["status"] == "failed" and "LinAlgError" in summary["failure"] and summary["steps"] == 2
    assert metrics(tmp_path)["step"].tolist() == [0, 1, 2]


def test_divergence_fails(tmp_path):
    with pytest.raises(TrainingFailed) as err:
        train(config(*TINY, *NO_HESSIAN, "solver=sgd", "solver.lr=1e6", "solver.momentum=0",
                     "train.divergence_factor=2"), tmp_path)
    summary = rf.read_json(tmp_path / rf.SUMMARY)
    assert summary["status"] == "failed" and summary["failure"] in str(err.value)
    assert "diverged" in summary["failure"] or "nan" in summary["failure"]
    assert summary["failure"].endswith("; lower solver.lr")  # SGD has no damping to raise


def test_divergence_names_the_damping_of_a_damped_solver(tmp_path):
    """KFI blown up by its step size: the message names its damping α beside the learning rate."""
    with pytest.raises(TrainingFailed, match=r"; lower solver.lr or raise solver.alpha$"):
        train(config(*TINY, *NO_HESSIAN, "solver=kfi", "solver.lr=1e6", "train.divergence_factor=2"), tmp_path)


def test_exponential_schedule(tmp_path):
    train(config(*TINY, *NO_HESSIAN, "solver=sgd", "solver.lr=0.2", "train.schedule=exponential",
                 "train.decay_every=2", "train.decay_rate=0.5", "train.max_steps=4"), tmp_path)
    lr = metrics(tmp_path)["lr"].tolist()[1:]
    assert lr == pytest.approx([0.2, 0.2, 0.1, 0.1])


def test_hessian_errors_every_kind_and_gn_skipped_for_nonconvex(tmp_path):
    train(config(*TINY, "loss=nonconvex", "solver=sgd", "log.hessian_every=2", "log.hessian_first=1"), tmp_path)
    df = pd.read_csv(tmp_path / rf.HESSIAN_ERRORS)
    assert sorted(df["step"].unique()) == [0, 2]
    assert set(df["kind"]) == {"fisher", "pch1", "pch2"} and sorted(df["layer"].unique()) == [1, 2, 3]
    assert (df["error"] >= 0).all()
    assert any("skipped gn" in n for n in rf.read_json(tmp_path / rf.SUMMARY)["notes"])


def test_hessian_errors_use_the_batch_of_the_step(tmp_path):
    """The logged errors at step 0 equal the core's errors on the first batch at the initialisation."""
    from curvlab import curvature, layerwise_errors
    from curvlab.data import load_dataset
    from curvlab.losses import make_loss
    from curvlab.nets import MLP

    cfg = config(*TINY, "solver=sgd", "log.hessian_first=1", "log.hessian_every=0", "log.hessian_kinds=[pch2]",
                 "dtype=float64", "train.max_steps=1")
    train(cfg, tmp_path)
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset)
    net = MLP(cfg.net.widths, cfg.net.activation, cfg.net.init, cfg.net.init_scale, cfg.net.bias).double()
    idx = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.train.batch_size]
    x, y, loss = data.x_train[idx].double(), data.y_train[idx], make_loss("cross_entropy")
    errs = layerwise_errors(curvature(net, x, y, "pch2", loss), curvature(net, x, y, "exact", loss))
    errs = errs.layers if hasattr(errs, "layers") else errs
    logged = pd.read_csv(tmp_path / rf.HESSIAN_ERRORS)["error"].tolist()
    assert logged == pytest.approx([float(e) for e in errs], rel=1e-10)


def _flushes() -> bool:
    """Whether float32 denormals are flushed to zero right now (1e-39 is a float32 denormal)."""
    return float(torch.tensor([1e-39], dtype=torch.float32) * 1.0) == 0.0


def test_cpu_runs_flush_denormals_only_while_they_run(tmp_path, monkeypatch):
    """``train.flush_denormal`` (default on): denormals are 0 during a CPU run (a sigmoid net near
    saturation steps ≈ 4× faster so), torch's default is back after it; off keeps them."""
    seen: list[bool] = []
    step = SOLVERS["sgd"].step
    monkeypatch.setattr(SOLVERS["sgd"], "step", lambda self, x, y: (seen.append(_flushes()), step(self, x, y))[1])
    assert not _flushes()
    train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=2"), tmp_path / "on")
    assert seen == [True, True] and not _flushes()
    seen.clear()
    train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=2", "train.flush_denormal=false"), tmp_path / "off")
    assert seen == [False, False]
    # Switching it between sessions of one run is allowed (checkpoints from before the option resume too).
    resumed = train(config(*TINY, *NO_HESSIAN, "solver=sgd", "train.max_steps=3"), tmp_path / "off")
    assert resumed["status"] == "completed" and resumed["steps"] == 3 and seen == [False, False, True]
    with pytest.raises(ValueError, match="train.flush_denormal must be true or false"):
        config(*TINY, "train.flush_denormal=2")


def test_dtype_and_device(tmp_path):
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    train(config(*TINY, *NO_HESSIAN, "solver=sgd", "dtype=float64", "train.max_steps=1"), tmp_path)
    state = rf.load_checkpoint(tmp_path / rf.CHECKPOINT)
    assert all(v.dtype == torch.float64 for v in state["net"].values())


@pytest.mark.gpu
def test_cuda_run(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    summary = train(config("train.batch_size=64", "train.max_steps=3", "device=cuda", "solver=eacg"), tmp_path)
    assert summary["status"] == "completed" and summary["device"].startswith("cuda")


EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> dict[str, list[str]]:
    """Overrides that point each dataset at a tiny synthetic copy (32×32 images for cifar/imagenet, the
    size net=cifar10_3c3d is made for)."""
    from fixtures import write_idx_mnist, write_npz

    root = tmp_path_factory.mktemp("data")
    write_idx_mnist(root, n_train=64, n_test=32)
    write_npz(root / "images.npz", n_train=64, n_test=32, size=32)
    images = ["dataset.source=npz", f"dataset.path={root / 'images.npz'}", "dataset.image_size=32"]
    return {"digits": [], "mnist": [f"dataset.root={root}"], "cifar10": images, "imagenet10": images}


SHRINK = ["train.max_steps=1", "train.epochs=1", "dataset.train_subset=64", "dataset.test_subset=32",
          "train.batch_size=32", "device=cpu", "log.progress=false"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_runs_one_step(tmp_path, experiment, synthetic_data):
    """Each preset's dataset, loss, curvature, solver and schedule on a small net, one update."""
    name = config(f"experiment={experiment}").dataset.name.value
    small_net = "net.widths=[${dataset.input_dim},16,8,${dataset.num_classes}]"
    cfg = config(f"experiment={experiment}", *synthetic_data[name], *SHRINK, small_net,
                 "log.hessian_every=0", "log.hessian_first=1")
    summary = train(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_one_step_with_its_net(tmp_path, experiment, synthetic_data):
    """The same with the preset's own net and one Hessian-error log (minutes for the big nets)."""
    name = config(f"experiment={experiment}").dataset.name.value
    cfg = config(f"experiment={experiment}", *synthetic_data[name], *SHRINK, "log.hessian_first=1")
    summary = train(cfg, tmp_path)
    assert summary["steps"] == 1


def test_hessian_logging_does_not_change_training(tmp_path):
    """The Fisher's sampled labels come from a forked RNG: the MC-Fisher KFI run trains the same."""
    args = [*TINY, "solver=kfi", "curvature=fisher", "train.max_steps=2"]
    train(config(*args, *NO_HESSIAN), tmp_path / "off")
    train(config(*args, "log.hessian_first=2"), tmp_path / "on")
    pd.testing.assert_frame_equal(
        metrics(tmp_path / "off").drop(columns=TIMES), metrics(tmp_path / "on").drop(columns=TIMES)
    )
