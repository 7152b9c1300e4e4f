"""The shared wrapper of the entry points: set-up, one clear message for user errors, clean-up."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from hydra.errors import InstantiationException
from omegaconf import DictConfig

from wrncifar.config_validation import ConfigError
from wrncifar.data.cifar100_sources import CorruptDatasetError, DatasetNotFoundError
from wrncifar.run_setup import apply_extras

log = logging.getLogger(__name__)

T = TypeVar("T")

# Mistakes in the user's input: their message says what to fix, so a traceback would only hide it.
# Hydra's InstantiationException carries the constructor's own ValueError and the config key.
USER_ERRORS = (ConfigError, DatasetNotFoundError, CorruptDatasetError, InstantiationException)


# Groups with a default option that a user may switch off. Hydra rejects `group=null` once the group has a
# default (`~group` is its spelling), but `logger=null` is what lightning-hydra-template users type.
SWITCHABLE_GROUPS = ("logger", "callbacks")


def null_group_overrides(args: list[str]) -> list[str]:
    """Rewrite `logger=null` / `callbacks=null` into Hydra's deletion syntax `~logger` / `~callbacks`."""
    return [f"~{arg.split('=')[0]}" if arg in {f"{g}=null" for g in SWITCHABLE_GROUPS} else arg for arg in args]


def run(task: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run `task(cfg)`; exit 1 with the message alone for user errors, log and re-raise anything else."""
    try:
        apply_extras(cfg)
        return task(cfg)
    except USER_ERRORS as err:
        log.error("%s", err)
        raise SystemExit(1) from err
    except Exception:
        log.exception("Run failed; its outputs so far are in %s", cfg.paths.output_dir)
        raise
    finally:
        _finish_wandb()


def _finish_wandb() -> None:
    """Close a W&B run so the next job of a multirun starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
