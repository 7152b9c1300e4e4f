"""The `extras` config group, applied by every entry point first: warning filter and config printout."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from wrncifar.run.tracking import without_secrets

log = logging.getLogger(__name__)

# Printed first, in this order; any other top-level key follows.
PRINT_ORDER = ("data", "model", "callbacks", "logger", "trainer", "paths", "extras")


def apply_extras(cfg: DictConfig) -> None:
    """Apply `cfg.extras`: `ignore_warnings` silences Python warnings, `print_config` prints the config tree."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        print_config_tree(cfg, save_dir=cfg.paths.output_dir)


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_dir: str | None = None) -> None:
    """Print the resolved config as a rich tree and keep a copy in `save_dir/config_tree.log`."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in PRINT_ORDER if k in cfg] + [k for k in cfg if k not in PRINT_ORDER]
    for key in keys:
        node = cfg[key]
        # Resolved for reading, with the W&B API key redacted from any value that interpolates it.
        value = without_secrets(OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node)
        text = OmegaConf.to_yaml(value) if isinstance(value, dict) else str(value)
        tree.add(key, style="dim", guide_style="dim").add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if save_dir:
        with (Path(save_dir) / "config_tree.log").open("w") as f:
            rich.print(tree, file=f)
