"""Configs read from disk are data: they may name only the classes this project's own configs name.

`eval.py` rebuilds a checkpoint's model and data from the `.hydra/config.yaml` it finds above the checkpoint, and
`resume=` replays a run folder's saved overrides. Hydra instantiates whatever `_target_` such a file names (and the
config check imports it), so a crafted run folder could run any code — `weights_only=True` on the checkpoint
would protect nothing. Every `_target_` that comes from a file is therefore checked, before anything is imported,
against the `_target_`s of the configs in this checkout's `configs/` folder: the project's classes, the library
classes its configs use, and any class a user adds a config for. Anything else is refused by name.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig

from wrncifar.run.config_validation import ConfigError


def config_dir() -> Path:
    """This checkout's `configs/` folder: Hydra's primary config source, else `$PROJECT_ROOT/configs`."""
    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return Path(source.path)
    return Path(os.environ.get("PROJECT_ROOT", ".")) / "configs"


@functools.cache
def project_targets(configs: Path) -> frozenset[str]:
    """Every `_target_` named in the YAML files under `configs`."""
    targets: set[str] = set()
    for path in sorted(configs.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            targets |= {value for _, value in _targets(document, "")}
    return frozenset(targets)


def check_targets(node: Any, where: str, source: Path) -> None:
    """ConfigError unless every `_target_` in `node` (read from the file `source`, at config key `where`) is one
    of `project_targets`."""
    _refuse_unknown(list(_targets(node, where)), source)


def check_override_targets(overrides: list[str], source: Path) -> None:
    """The same for saved command-line overrides (`model.net._target_=…`)."""
    pairs = [tuple(o.lstrip("+~").split("=", 1)) for o in overrides if "=" in o]
    _refuse_unknown([(key, value.strip("'\"")) for key, value in pairs if key.split(".")[-1] == "_target_"], source)


def _refuse_unknown(found: list[tuple[str, str]], source: Path) -> None:
    allowed = project_targets(config_dir())
    refused = [(key, target) for key, target in found if target not in allowed]
    if refused:
        named = ", ".join(f"{key}={target!r}" for key, target in refused)
        raise ConfigError(
            f"{source} names code this project's configs do not use ({named}): a run folder is data and does not "
            "choose what runs. If you trust it, add a config under configs/ that uses that class, then run again"
        )


def _targets(node: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                yield path, str(value)
            else:
                yield from _targets(value, path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")
