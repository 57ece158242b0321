"""The list sweeper (``hydra/sweeper=list``): an explicit job list through any Hydra launcher (issue 21, item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra_plugins.curvlab_sweeper.list_sweeper import quote, read_jobs

from curvlab import cli

QUIET = ["train.max_steps=2", "dataset.train_subset=64", "dataset.test_subset=32", "log.progress=false",
         "log.hessian_every=0", "log.hessian_first=0"]


@pytest.mark.parametrize("text", ["solver=kfi,curvature=gn", "net.widths=[${dataset.input_dim},16]", "it's a b",
                                  "/tmp/x y/runs", "seed=range(3)"])
def test_quote_reads_back_verbatim(text: str) -> None:
    (override,) = OverridesParser.create().parse_overrides([f"hydra.sweep.subdir={quote(text)}"])
    assert not override.is_sweep_override()
    from omegaconf import OmegaConf

    value = OmegaConf.create({"v": override.value()}).v  # OmegaConf reads `\${` as a literal `${`
    assert value == text


def test_quote_refuses_a_backslash() -> None:
    with pytest.raises(ValueError, match="backslash"):
        quote("a\\b")


def test_read_jobs_checks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"jobs": [{"dir": "exp/solver=sgd", "overrides": ["solver=sgd"]}]}))
    assert read_jobs(path) == [("exp/solver=sgd", ["solver=sgd"])]
    for bad in ({"jobs": [{"dir": "../up", "overrides": []}]}, {"jobs": [{"dir": "/abs", "overrides": []}]}):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="relative path inside the sweep dir"):
            read_jobs(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a job list"):
        read_jobs(path)


def test_list_sweeper_runs_each_job_in_its_named_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = [{"dir": "a/solver=sgd,seed=1", "overrides": ["solver=sgd", "seed=1"]},
            {"dir": "b/solver=kfi,curvature=gn", "overrides": ["solver=kfi", "curvature=gn"]}]
    (tmp_path / "jobs.json").write_text(json.dumps({"jobs": jobs}))
    sweep = tmp_path / "runs"
    base = ["train", "-m", "hydra/sweeper=list", f"hydra.sweeper.jobs_file={tmp_path / 'jobs.json'}",
            f"hydra.sweep.dir={sweep}", *QUIET]
    assert cli.main(base) == 0
    for job in jobs:
        summary = json.loads((sweep / job["dir"] / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 2
    assert json.loads((sweep / "a/solver=sgd,seed=1/summary.json").read_text())["seed"] == 1
    assert json.loads((sweep / "b/solver=kfi,curvature=gn/summary.json").read_text())["solver"] == "kfi"
    assert not (sweep / "multirun.yaml").exists()  # the sweep dir keeps the runs' own files only
    # A failed run of the sweep dir that is not in the job list is not this sweep's failure.
    (sweep / "c" / "old").mkdir(parents=True)
    (sweep / "c" / "old" / "summary.json").write_text('{"status": "failed", "failure": "old"}')
    (tmp_path / "jobs.json").write_text(json.dumps({"jobs": jobs[:1]}))
    capsys.readouterr()
    assert cli.main(base) == 0 and "failed" not in capsys.readouterr().err
    capsys.readouterr()
    assert cli.main(["train", "-m", "hydra/sweeper=list", *QUIET]) == 2
    assert "needs hydra.sweeper.jobs_file" in capsys.readouterr().err
    assert cli.main([*base, "seed=1,2"]) == 2
    assert "'seed=1,2' is a sweep" in capsys.readouterr().err
