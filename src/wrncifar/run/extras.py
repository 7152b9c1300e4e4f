"""The `extras` config group, applied by both entry points once the config is checked: warning filter, tags, config
printout."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import rich.prompt
import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from wrncifar.analysis.output_files import write_file
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.tracking import without_secrets
from wrncifar.sweeps.summary import in_multirun

log = logging.getLogger(__name__)

# Printed first, in this order; any other top-level key follows.
PRINT_ORDER = ("data", "model", "callbacks", "logger", "trainer", "paths", "extras")


def apply_extras(cfg: DictConfig) -> None:
    """Apply `cfg.extras`: `ignore_warnings` silences Python warnings, `enforce_tags` makes sure the run has tags
    (see `enforce_tags`), `print_config` prints the config tree."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("enforce_tags"):
        enforce_tags(cfg, save_dir=cfg.paths.output_dir)
    if extras.get("print_config"):
        print_config_tree(cfg, save_dir=cfg.paths.output_dir)


@rank_zero_only
def enforce_tags(cfg: DictConfig, save_dir: str | None = None) -> None:
    """Give the run tags: when `cfg.tags` is empty, ask for them on the terminal (comma-separated) and put them in
    `cfg.tags`; without a terminal, or in a multirun, whose jobs cannot each ask, refuse with ConfigError. The tags
    are kept in `save_dir/tags.log`, written as lightning-hydra-template writes it (`['a', 'b']`), with a tag that
    interpolates the W&B API key redacted."""
    if not cfg.get("tags"):
        if in_multirun() or sys.stdin is None or not sys.stdin.isatty():
            why = "the jobs of a multirun cannot each ask" if in_multirun() else "there is no terminal to ask on"
            raise ConfigError(
                f"extras.enforce_tags=true but the run has no tags, and {why}: give them on the command line, "
                "e.g. tags=[baseline,wide], or set extras.enforce_tags=false"
            )
        log.warning("No tags given and extras.enforce_tags=true: asking for them")
        answer = rich.prompt.Prompt.ask("Tags of this run, comma-separated", default="dev")
        with open_dict(cfg):
            cfg.tags = [tag.strip() for tag in answer.split(",") if tag.strip()] or ["dev"]
        log.info("Tags: %s", ", ".join(cfg.tags))
    if save_dir:
        tags = without_secrets(cfg.tags)
        write_file(Path(save_dir) / "tags.log", lambda tmp: tmp.write_text(f"{tags!r}\n"))


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_dir: str | None = None) -> None:
    """Print the resolved config as a rich tree and keep a copy in `save_dir/config_tree.log`, with a value that
    interpolates the W&B API key redacted."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in PRINT_ORDER if k in cfg] + [k for k in cfg if k not in PRINT_ORDER]
    for key in keys:
        value = without_secrets(cfg[key])
        text = OmegaConf.to_yaml(value) if isinstance(value, dict) else str(value)
        tree.add(key, style="dim", guide_style="dim").add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if save_dir:
        with (Path(save_dir) / "config_tree.log").open("w") as f:
            rich.print(tree, file=f)
