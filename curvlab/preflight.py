"""What ``curvlab train`` checks on the composed config before Hydra writes or runs anything.

Hydra creates the run directory, opens ``train.log`` and writes ``.hydra/`` before the task
function runs, and instantiates ``hydra.callbacks`` even earlier. So the CLI first composes
the config itself (reading YAML runs no code) and, from the resolved values:

* refuses group choices that are paths (``experiment=../../x``: a preset is a name),
  ``--experimental-rerun`` (it unpickles a file from a run directory), an ``experiment_name``
  that resolves to a path (``experiment_name=${dataset.root}``);
* validates the resolved run or sweep directory (:func:`curvlab.rundirs.check_run_dir`);
* lists the Hydra callbacks that will run and the file that declares each one that is not
  curvlab's own (config files are trusted like code, README "Security").
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import curvlab.config  # noqa: F401 - registers the resolvers the configs use (if_null, one_dir, prod)
from curvlab.rundirs import check_run_dir
from curvlab.safety import check_experiment_name

__all__ = ["Plan", "preflight", "OWN_CALLBACKS"]

OWN_CALLBACKS = {"curvlab.cli.SweepStatus"}  # shipped in configs/config.yaml
_NOT_A_NAME = re.compile(r"(^/)|(\.\.)|/|\\")


@dataclass
class Plan:
    """What a ``curvlab train`` command will write: one run directory, or a sweep directory."""

    run_dir: Path | None = None  # a single run: lock it before Hydra writes into it
    sweep_dir: Path | None = None
    callbacks: list[str] = field(default_factory=list)  # "name: target (file)" lines


def _hydra(argv_args: Any, config_dir: str) -> Any:
    """Hydra's own app object, with the search path ``curvlab train`` gets (``--config-dir`` first)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    search_path = create_automatic_config_search_path(None, None, argv_args.config_path or config_dir)
    if argv_args.config_dir is not None:
        extra = os.path.abspath(argv_args.config_dir)
        if not os.path.isdir(extra):
            raise ValueError(f"--config-dir {extra}: no such directory")
        search_path.prepend(provider="command-line", path=f"file://{extra}", anchor=SearchPathQuery(provider="schema"))
    return Hydra.create_main_hydra2(task_name="train", config_search_path=search_path)


def _check_choice(group: str, option: Any, app: Any) -> None:
    """A group option is a name: refuse paths, listing the presets of ``group``."""
    if option is None or not _NOT_A_NAME.search(str(option)):
        return
    try:
        options = app.config_loader.get_group_options(group)
    except Exception:  # an unknown group: Hydra says so itself
        options = []
    raise ValueError(
        f"{group}={option}: the options of {group} are preset names, not paths (no '/' or '..'); allowed: "
        f"{', '.join(sorted(options)) or '(none)'}; to use presets from another folder pass --config-dir DIR"
    )


def _check_group_overrides(overrides: list[str], app: Any) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    repo = app.config_loader.repository
    for arg in overrides:
        try:
            (override,) = OverridesParser.create().parse_overrides([arg])
        except Exception:  # Hydra reports its own parse errors
            continue
        group = override.key_or_group.lstrip("/")
        if "." in group or not repo.group_exists(group):
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            _check_choice(group, value, app)


def _callback_lines(cfg: Any, app: Any, config_name: str, overrides: list[str], mode: Any, own_dir: str) -> list[str]:
    """``name: target (file)`` for every Hydra callback that is not curvlab's own shipped one."""
    from omegaconf import OmegaConf

    callbacks = OmegaConf.to_container(cfg.hydra.callbacks, resolve=False) or {}
    declared: dict[str, str] = {}
    try:
        defaults = app.config_loader.compute_defaults_list(config_name, overrides, mode).defaults
    except Exception:
        defaults = []
    for d in defaults:  # which file declares each callback (the last one wins, as in composition)
        result = d.config_path and app.config_loader.repository.load_config(d.config_path)
        if not result:
            continue
        rest = {"": ("hydra", "callbacks"), "hydra": ("callbacks",), "hydra.callbacks": ()}.get(d.package or "")
        node = result.config if rest is not None else None
        for part in rest or ():
            node = node.get(part) if hasattr(node, "get") else None
        for name in node.keys() if hasattr(node, "keys") else ():
            declared[str(name)] = f"{str(result.path).removeprefix('file://')}/{d.config_path}.yaml"
    lines = []
    for name, spec in callbacks.items():
        target = spec.get("_target_") if isinstance(spec, dict) else None
        origin = declared.get(name, "the command line or a config file")
        if target in OWN_CALLBACKS and origin.startswith(own_dir):
            continue
        lines.append(f"{name}: {target} (declared in {origin})")
    return lines


def preflight(argv: list[str], config_dir: str) -> Plan | None:
    """Compose ``curvlab train ARGV`` as Hydra will and check it; None for ``--help``/``--cfg``/``--info``.

    Raises:
        ValueError: naming the override or field, the reason and the fix (the CLI exits 2).
        hydra.errors.HydraException, omegaconf.errors.OmegaConfBaseException: composing failed.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    args = get_args_parser().parse_args(argv)
    if args.experimental_rerun is not None:
        raise ValueError(
            "--experimental-rerun: it unpickles a file from a run directory, which can run code, and is refused; "
            "rerun with the overrides listed in RUN/.hydra/overrides.yaml instead"
        )
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion:
        return None
    config_name = args.config_name or "config"
    GlobalHydra.instance().clear()
    try:
        app = _hydra(args, config_dir)
        _check_group_overrides(args.overrides, app)
        mode = app.get_mode(config_name=config_name, overrides=list(args.overrides))
        mode = mode or (RunMode.MULTIRUN if args.multirun else RunMode.RUN)
        cfg = app.compose_config(config_name, list(args.overrides), run_mode=mode, with_log_configuration=False)
        for group, option in (cfg.hydra.runtime.choices or {}).items():
            _check_choice(group, option, app)  # set by a preset's defaults list
        HydraConfig.instance().set_config(cfg)
        plan = Plan(callbacks=_callback_lines(cfg, app, config_name, list(args.overrides), mode, config_dir))
        check_experiment_name(_resolved(cfg, "experiment_name"))  # multirun: swept values are not applied here
        if mode == RunMode.MULTIRUN:
            plan.sweep_dir = check_run_dir(_resolved(cfg, "hydra.sweep.dir"), "hydra.sweep.dir", depth=3)
            _check_launcher(cfg)
            return plan
        run_dir = _resolved(cfg, "run_dir")
        if run_dir is not None:
            check_run_dir(run_dir, "run_dir")
        plan.run_dir = check_run_dir(_resolved(cfg, "hydra.run.dir"), "hydra.run.dir")
        return plan
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # type: ignore[assignment]


def _check_launcher(cfg: Any) -> None:
    """A launcher that cannot start on this machine: say so and how, before the sweep starts."""
    import importlib.util
    import shutil

    choice = (cfg.hydra.runtime.choices or {}).get("hydra/launcher")
    target = str(cfg.hydra.launcher.get("_target_", ""))
    if target.endswith(".SlurmLauncher") and shutil.which("srun") is None:
        raise ValueError(
            f"hydra/launcher={choice}: no SLURM on this machine (no srun on PATH); run the command on the "
            "cluster's login node, or try the same code path here with hydra/launcher=submitit_local"
        )
    if "hydra_ray_launcher" in target and importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        raise ValueError(f"hydra/launcher={choice}: Hydra's Ray launcher is not installed; pip install 'curvlab[ray]'")


def _resolved(cfg: Any, key: str) -> Any:
    """The value at ``key`` with interpolations resolved; a failing one names ``key``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
    except OmegaConfBaseException as err:
        reason = re.sub(r"^\w+ raised while resolving interpolation: ", "", str(err).splitlines()[0])
        raise ValueError(f"{key}: cannot resolve it: {reason}") from None
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def print_callbacks(plan: Plan | None) -> None:
    """Say on stderr which callbacks Hydra will instantiate, before it does."""
    for line in plan.callbacks if plan else ():
        print(f"curvlab train: Hydra callback {line}", file=sys.stderr)
