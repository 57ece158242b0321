"""``curvlab`` in a subprocess: the demo, the design-card command, sweeps, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from curvlab import cli
from curvlab import runfiles as rf
from curvlab.threads import cpu_cores

REPO = Path(__file__).resolve().parents[1]
QUIET = ["log.progress=false"]


def curvlab(*args: str, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "curvlab.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def summaries(root: Path) -> dict[str, dict]:
    return {p.parent.name: rf.read_json(p) for p in sorted(root.glob(f"*/{rf.SUMMARY}"))}


def test_default_demo(tmp_path):
    out = curvlab("train", "train.epochs=1", f"run_dir={tmp_path}", *QUIET)
    assert out.returncode == 0, out.stderr
    summary = rf.read_json(tmp_path / rf.SUMMARY)
    assert summary["status"] == "completed" and summary["dataset"] == "digits"
    assert summary["solver"] == "eacg" and summary["curvature"] == "pch1"
    kinds = (tmp_path / rf.HESSIAN_ERRORS).read_text()
    assert all(k in kinds for k in ("fisher", "gn", "pch1", "pch2"))
    assert (tmp_path / rf.CONFIG).is_file() and (tmp_path / ".hydra" / "overrides.yaml").is_file()


def test_design_card_command(tmp_path):
    out = curvlab("train", "curvature=pch", "solver=eacg", "train.max_steps=2", f"run_dir={tmp_path}", *QUIET)
    assert out.returncode == 0, out.stderr
    summary = rf.read_json(tmp_path / rf.SUMMARY)
    assert (summary["status"], summary["curvature"], summary["solver"], summary["steps"]) == ("completed", "pch", "eacg", 2)


def test_bad_value_fails_before_training_with_its_message(tmp_path):
    out = curvlab("train", "solver.lr=-1", f"run_dir={tmp_path}")
    assert out.returncode == 2
    assert "solver.lr must be > 0" in out.stdout + out.stderr
    assert not (tmp_path / rf.METRICS).exists()


def test_multirun_joblib_2x2(tmp_path):
    out = curvlab(
        "train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "solver=eacg,kfi", "curvature=pch1,gn",
        "train.max_steps=2", "log.hessian_every=0", "log.hessian_first=0", f"run_dir={tmp_path}", *QUIET,
    )
    assert out.returncode == 0, out.stderr
    runs = summaries(tmp_path)
    assert sorted(runs) == ["0", "1", "2", "3"]
    assert {(s["solver"], s["curvature"]) for s in runs.values()} == {
        ("eacg", "pch1"), ("eacg", "gn"), ("kfi", "pch1"), ("kfi", "gn")
    }
    assert all(s["status"] == "completed" and s["steps"] == 2 for s in runs.values())
    # train.threads=auto: the two jobs side by side share the cores
    assert all(s["threads"] == max(1, cpu_cores() // 2) for s in runs.values()), runs


def test_failed_job_does_not_stop_the_sweep(tmp_path):
    out = curvlab(
        "train", "-m", "solver=sgd", "solver.momentum=0", "solver.lr=1e6,0.1", "train.divergence_factor=2",
        "train.max_steps=3", "log.hessian_every=0", "log.hessian_first=0", f"run_dir={tmp_path}", *QUIET,
    )
    assert out.returncode == 1
    runs = summaries(tmp_path)
    assert runs["0"]["status"] == "failed" and runs["0"]["failure"]
    assert runs["1"]["status"] == "completed" and runs["1"]["steps"] == 3
    assert "1 job(s) of the sweep failed" in out.stderr


@pytest.mark.slow
def test_multirun_submitit_local_2x2(tmp_path):
    out = curvlab(
        "train", "-m", "hydra/launcher=submitit_local", "solver=eacg,kfi", "curvature=pch1,gn",
        "train.max_steps=2", "log.hessian_every=0", "log.hessian_first=0", f"run_dir={tmp_path}", *QUIET,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    runs = summaries(tmp_path)
    assert len(runs) == 4 and all(s["status"] == "completed" for s in runs.values())
    assert not [p for p in tmp_path.rglob("*") if "%" in p.name]  # no folder literally named %j
    assert list((tmp_path / ".submitit").glob("*_log.out"))  # the jobs' logs, in one folder


def test_dispatch(monkeypatch, capsys):
    assert cli.main([]) == 0 and "curvlab train" in capsys.readouterr().out
    assert cli.main(["bogus"]) == 2 and "allowed: train, report" in capsys.readouterr().err
    seen = []
    fake = types.ModuleType("curvlab.report")
    fake.main = lambda argv: seen.append(argv) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "curvlab.report", fake)
    assert cli.main(["report", "runs/x", "--steps", "10"]) == 3
    assert seen == [["runs/x", "--steps", "10"]]


def test_single_run_failure_exits_1_in_process(tmp_path):
    code = cli.main([
        "train", "solver=sgd", "solver.momentum=0", "solver.lr=1e6", "train.divergence_factor=2",
        "train.max_steps=3", "dataset.train_subset=128", "log.hessian_every=0", "log.hessian_first=0",
        f"run_dir={tmp_path}", *QUIET,
    ])
    assert code == 1
    assert rf.read_json(tmp_path / rf.SUMMARY)["status"] == "failed"


# Item 10 of issue 11: every config error exits 2 with one line, Hydra's own errors included.
CONFIG_ERRORS = [
    (["solver=foo"], "solver=foo: no such option; allowed: adadelta, adadelta_tf, adagrad"),
    (["experiment=nonexistent"], "experiment=nonexistent: no such option; allowed: conv_cifar10_3c3d"),
    (["hydra/launcher=foo"], "hydra/launcher=foo: no such option; allowed: basic, joblib, ray"),  # ray_aws too with curvlab[ray]
    (["foo=1"], "foo: unknown key; allowed: curvature, dataset, device, dtype, experiment_name, hydra, log"),
    (["train.foo=1"], "train.foo: unknown key; allowed: batch_size, checkpoint_every"),
    (["solver.foo=1"], "solver.foo: no such key in the chosen solver config; to add an option, write +solver.foo=VALUE"),
    (["solver.lr=[1,"], "cannot parse the override 'solver.lr=[1,': no viable alternative at input '[1,'"),
    (["solver.lr"], "cannot parse the override 'solver.lr': missing EQUAL"),
    (["seed=abc"], "seed must be an integer, got 'abc'"),
    (["net.widths=[64,2.5,10]"], "net.widths[1] must be an integer, got 2.5"),
    (["solver=cr", "solver.base_options=5"], "solver.base_options must be a mapping (key: value) or null, got 5"),
    (["+solver.foo=1"], "solver.foo: unknown option for solver eacg; allowed: alpha, eps_cg, max_cg, split"),
    (["dataset=mnist", "dataset.root=/nonexistent"], "`curvlab data prepare mnist --root /nonexistent` downloads"),
]


@pytest.mark.parametrize(("overrides", "message"), CONFIG_ERRORS, ids=[" ".join(o) for o, _ in CONFIG_ERRORS])
def test_config_errors_exit_2_with_one_line_in_process(tmp_path, capsys, overrides, message):
    code = cli.main(["train", *overrides, f"run_dir={tmp_path}", *QUIET])
    out = capsys.readouterr()
    text = out.out + out.err
    if (tmp_path / rf.SUMMARY).exists():  # errors found by curvlab (not Hydra) are also recorded
        text += rf.read_json(tmp_path / rf.SUMMARY)["failure"]
    assert code == 2 and message in text and "Traceback" not in text, text
    assert not (tmp_path / rf.METRICS).exists()


def test_hydra_error_exits_2_in_a_real_process(tmp_path):
    """Hydra's own errors (here an unknown group option) too; curvlab's own: test_bad_value_fails_before_…"""
    out = curvlab("train", "solver=foo", f"run_dir={tmp_path}", *QUIET)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "curvlab train: config error: solver=foo: no such option; allowed: adadelta" in out.stderr


def test_a_hydra_error_leaves_later_runs_in_the_same_process_intact(tmp_path):
    assert cli.main(["train", "solver=foo", f"run_dir={tmp_path}"]) == 2
    code = cli.main(["train", "train.max_steps=1", "dataset.train_subset=64", "log.hessian_every=0",
                     "log.hessian_first=0", f"run_dir={tmp_path / 'ok'}", *QUIET])
    assert code == 0 and rf.read_json(tmp_path / "ok" / rf.SUMMARY)["status"] == "completed"


# Item 19: `curvlab train --help` and the README list the solver variants and the launchers.
def test_help_and_readme_list_solver_variants_and_launchers(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["train", "--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    readme = (REPO / "README.md").read_text()
    launchers = ["basic"] + sorted(p.stem for p in (REPO / "configs" / "hydra" / "launcher").glob("*.yaml"))
    for solver in sorted(p.stem for p in (REPO / "configs" / "solver").glob("*.yaml")):
        assert solver in help_text and f"`{solver}`" in readme, solver
    for launcher in launchers:
        assert f"{launcher} " in help_text and f"`{launcher}`" in readme, launcher
    assert "curvlab data prepare NAME --root DIR" in help_text and "shared/data" not in help_text


def test_readme_mnist_examples_work_offline():
    readme = (REPO / "README.md").read_text()
    mnist_commands = [c for c in readme.split("curvlab train")[1:] if "dataset=mnist" in c.split("\n\n")[0]]
    assert mnist_commands, "the README shows no MNIST command"
    for command in mnist_commands:  # read files that `curvlab data prepare mnist` wrote: no download at run time
        block = command.split("```")[0]
        assert "dataset.root=data" in block and "dataset.download=true" not in block, block
    assert "curvlab data prepare mnist --root data" in readme and "shared/data" not in "".join(mnist_commands)
