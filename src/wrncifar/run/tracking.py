"""What every run records about itself (resolved config, git state, command-line overrides, parameter counts, with
the W&B API key redacted), and the logger settings a run derives from its config: the same W&B run and the
TensorBoard history continued on resume, one W&B group per sweep. The logger classes are in `loggers`.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from wrncifar.sweeps.api_key import API_KEY_ENV, REDACTED, api_key, redacted
from wrncifar.sweeps.summary import in_multirun

log = logging.getLogger(__name__)

# Where the W&B logger records its run's id in the run folder, which `resume=` reads (`wandb_run_id`); what an id is.
WANDB_ID_FILE = "wandb_run_id"
WANDB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
GIT_TIMEOUT_S = 30  # a git command that takes longer (a slow network file system) leaves the git state unknown


def without_secrets(value: Any, secret: str | None = None) -> Any:
    """`value` (dicts and lists, and OmegaConf's DictConfig and ListConfig as Hydra hands config values over, nested
    in one another) with every string that contains `secret` (default: the W&B API key of the environment) replaced
    by "<redacted>": a config that interpolates the key never carries it to a logger or a file. OmegaConf's
    containers are resolved into plain ones first (a ListConfig is no `list`, and its items are the resolved key);
    the result is plain with or without a key, so a value looks the same either way."""
    return _without(value, secret if secret is not None else api_key())


def _without(value: Any, secret: str) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _without(v, secret) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without(v, secret) for v in value]
    if secret and isinstance(value, str) and secret in value:
        return REDACTED
    return value


class SecretFilter(logging.Filter):
    """Redacts the W&B API key of the environment from every log record that passes (console and `train.log`): its
    message and the traceback it carries (`log.exception` of an error that quotes the key)."""

    def filter(self, record: logging.LogRecord) -> bool:
        key = api_key()
        if not key:
            return True
        message = record.getMessage()
        if key in message:
            record.msg, record.args = redacted(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and key in record.exc_text:
            record.exc_text = redacted(record.exc_text)  # the handlers' formatters print exc_text as it is
        if record.stack_info and key in record.stack_info:
            record.stack_info = redacted(record.stack_info)
        return True


def redact_secrets_in_logs() -> None:
    """Put a `SecretFilter` on every handler of the root logger (where Hydra's console and file handlers are), and
    warn (on rank 0) of an API key typed on the command line, which Hydra saves as typed."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter())
    typed = [o.split("=", 1)[0] for o in command_line_overrides() if api_key() and api_key() in o]
    if typed and rank_zero_only.rank == 0:  # once, not once per DDP process
        log.warning(
            "The W&B API key is typed in %s on the command line: Hydra saves the command line in the run folder's "
            ".hydra/ files as typed (which resume= runs again). Interpolate it instead: %s='${oc.env:%s}'",
            ", ".join(typed),
            typed[0],
            API_KEY_ENV,
        )


def git_state(repo_dir: str | Path) -> dict[str, Any]:
    """The commit checked out in `repo_dir` and whether the work tree differs from it (untracked files count);
    commit None outside a git checkout or without git."""
    try:
        commit = _git(repo_dir, "rev-parse", "HEAD")
        dirty = bool(_git(repo_dir, "status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, or a file system too slow to answer
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _git(repo_dir: str | Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo_dir, capture_output=True, text=True, check=True, timeout=GIT_TIMEOUT_S
    )
    return done.stdout.strip()


def command_line_overrides() -> list[str]:
    """This run's command-line overrides (Hydra's `overrides.task`); empty outside a Hydra run."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def sweep_group_and_name() -> tuple[str, str] | None:
    """In a Hydra multirun: the sweep's id (its folder's name), shared by its jobs, and this job's name, the
    overrides the sweep varies (`model.optimizer.lr=0.05`). None in a single run."""
    if not in_multirun():
        return None
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    swept = _swept_keys(hydra_cfg)
    varied = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept]
    name = ",".join(sorted(varied or overrides)) or f"job{hydra_cfg.job.num}"
    return Path(hydra_cfg.sweep.dir).name, name


def _swept_keys(hydra_cfg: Any) -> set[str]:
    """Keys a sweep varies: the sweeper's `params` (Optuna's search space, the basic sweeper's params) and the
    command line's sweeps (`a=1,2`, `b=range(3)`), which the basic sweeper saves in `<sweep dir>/multirun.yaml`."""
    keys = {str(k) for k in (hydra_cfg.sweeper.get("params") or {})}
    saved = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    if saved.is_file():
        task = OmegaConf.load(saved).hydra.overrides.task
        parsed = OverridesParser.create().parse_overrides([str(o) for o in task])
        keys |= {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()}
    return keys


def log_run_config(trainer: Trainer, cfg: DictConfig, model: LightningModule) -> None:
    """Send the resolved config, the command-line overrides, the git commit (and whether the work tree differs
    from it) and the parameter counts to every logger. A W&B API key the config interpolates is redacted."""
    if not trainer.loggers:
        return
    hparams: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    hparams["overrides"] = command_line_overrides()
    hparams["git"] = git_state(Path(__file__).parent)
    hparams["model/params/total"] = sum(p.numel() for p in model.parameters())
    hparams["model/params/trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hparams = without_secrets(hparams)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


def continue_tensorboard(cfg: DictConfig, step: int) -> None:
    """A run continuing from a checkpoint at `step`: TensorBoard hides the events an earlier process of this run
    wrote from `step` on (SummaryWriter's `purge_step`), which this run writes again."""
    tensorboard_cfg = (cfg.get("logger") or {}).get("tensorboard")
    if tensorboard_cfg is not None and tensorboard_cfg.get("purge_step") is None:
        with open_dict(tensorboard_cfg):
            tensorboard_cfg.purge_step = step


def keep_wandb_run(cfg: DictConfig) -> None:
    """A resumed run logs to the W&B run it started, unless `logger.wandb.id` names another."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None or wandb_cfg.get("id"):
        return
    run_id = wandb_run_id(Path(cfg.paths.output_dir))
    if run_id:
        with open_dict(wandb_cfg):
            wandb_cfg.id = run_id
            wandb_cfg.resume = "allow"


def group_sweep_jobs(cfg: DictConfig) -> None:
    """In a Hydra multirun, the W&B runs of one sweep share a group (the sweep's id) and each is named by the
    overrides the sweep varies, unless `logger.wandb.group` / `logger.wandb.name` are set."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    names = sweep_group_and_name() if wandb_cfg is not None else None
    if names is None:
        return
    with open_dict(wandb_cfg):
        wandb_cfg.group = wandb_cfg.get("group") or names[0]
        wandb_cfg.name = wandb_cfg.get("name") or names[1]


def wandb_run_id(run_dir: Path) -> str | None:
    """The id of the W&B run that logged from `run_dir`: the one its logger recorded (`WANDB_ID_FILE`); for a run
    that recorded none, that of W&B's `latest-run` folder there (`run-<time>-<id>`). The file is data: anything
    but an id W&B could have made is ignored."""
    try:
        recorded = (run_dir / WANDB_ID_FILE).read_text().strip()
    except (OSError, ValueError):
        recorded = ""
    if WANDB_ID.fullmatch(recorded):
        return recorded
    latest = run_dir / "wandb" / "latest-run"
    if not latest.exists():
        return None
    return latest.resolve().name.rsplit("-", 1)[-1]
