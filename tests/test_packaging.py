"""A real wheel (not editable) ships the Hydra configs, and its ``curvlab`` works from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from curvlab import cli
from curvlab import runfiles as rf

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "curvlab" / "configs"
QUIET = ["log.progress=false", "log.hessian_every=0", "log.hessian_first=0"]


def build_wheel(dest: Path) -> Path:
    """``pip wheel`` of a copy of the source tree (the checkout gets no build/ folder), offline."""
    src = dest / "src"
    for package in ("curvlab", "hydra_plugins"):  # hydra_plugins: the sweeper plugin reproduce.py launches with
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(dest / "dist"), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = (dest / "dist").glob("curvlab-*.whl")
    return wheel


def test_configs_folder_is_the_package_one():
    """The top-level configs/ the README names is the package's folder (a link), not a second copy."""
    top = REPO / "configs"
    assert top.resolve() == CONFIGS.resolve() and (CONFIGS / "__init__.py").is_file()
    assert Path(cli.CONFIG_DIR) == CONFIGS.resolve() or os.environ.get(cli.CONFIG_ENV)


def test_wheel_ships_every_config(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"curvlab/configs/{p.relative_to(CONFIGS).as_posix()}" for p in CONFIGS.rglob("*.yaml")}
    assert len(expected) > 50 and "curvlab/configs/config.yaml" in expected
    assert not expected - names, sorted(expected - names)[:5]
    assert "curvlab/configs/__init__.py" in names  # Hydra's pkg:// source needs it
    # Hydra finds plugins only in the hydra_plugins namespace package (no __init__.py of its own)
    assert "hydra_plugins/curvlab_sweeper/list_sweeper.py" in names and "hydra_plugins/__init__.py" not in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "curvlab = curvlab.cli:main" in entry_points


def run_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args), cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_installed_wheel_trains_and_reports_from_an_unrelated_directory(tmp_path):
    """Build the wheel, install it into a fresh venv, then ``curvlab train`` and ``report`` elsewhere."""
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The dependencies (torch, hydra, ...) come from this environment's site-packages, as a plain
    # path: a .pth line does not run this environment's editable-install hook, so curvlab itself
    # can only come from the wheel.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "curvlab_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run_in(work, str(python), "-c", "import curvlab.cli as c; print(c.__file__); print(c.CONFIG_DIR)")
    assert where.returncode == 0 and str(REPO) not in where.stdout and str(venv) in where.stdout, where.stdout

    exe = str(venv / "bin" / "curvlab")
    out = run_in(work, exe, "train", "train.max_steps=2", *QUIET)
    assert out.returncode == 0, out.stderr
    (summary,) = work.glob(f"runs/demo/*/*/{rf.SUMMARY}")
    assert rf.read_json(summary)["status"] == "completed" and rf.read_json(summary)["steps"] == 2
    report = run_in(work, exe, "report", "runs", "--out", "report")
    assert report.returncode == 0, report.stderr
    written = {p.name for p in (work / "report").iterdir()}
    assert "demo_runs.md" in written and any(name.endswith(".png") for name in written), written


def test_user_config_dir_adds_presets(tmp_path):
    """``--config-dir DIR`` adds a folder of extra group options in front of the package's."""
    (tmp_path / "cfg" / "experiment").mkdir(parents=True)
    (tmp_path / "cfg" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nexperiment_name: mine\ntrain:\n  max_steps: 1\n"
    )
    run_dir = tmp_path / "run"
    code = cli.main(["train", "--config-dir", str(tmp_path / "cfg"), "experiment=mine", f"run_dir={run_dir}", *QUIET])
    assert code == 0
    summary = rf.read_json(run_dir / rf.SUMMARY)
    assert summary["experiment"] == "mine" and summary["steps"] == 1


def test_curvlab_configs_without_config_yaml_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(cli.CONFIG_ENV, str(tmp_path))
    monkeypatch.setattr(cli, "CONFIG_DIR", str(tmp_path))
    assert cli.main(["train", f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert f"CURVLAB_CONFIGS={tmp_path}: no config.yaml there" in err and "Traceback" not in err
